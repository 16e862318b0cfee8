// Tenants' usage with real processes: a keys file with two tenants (bob with items_per_day), a
// content policy, a simulated worker (its GPU is simulated: work_ms) and a real one that only
// registers imagegen-tiny for the blocked item. Usage per tenant and UTC day is read back from
// the `<prefix>-usage` bucket and /metrics, and through `shoal usage` (with the plan limits) and
// GET /v1/usage; a coordinator killed -9 mid-batch counts that batch
// once and the earlier ones not again; items_per_day refuses with the limit and its reset time.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { Kvm } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { BatchState } from "../../proto/gen/shoal/v1/shoal.js";
import { pollUntilTerminal, waitFor } from "../harness/batch-checks.js";
import { TestClient, grpcCode } from "../harness/client.js";
import { freePort, Stack } from "../harness/processes.js";
import { checkResponse } from "../harness/openapi.js";

const ALICE = "alice-key-0001";
const BOB = "bob-key-0002";
const OPS = "ops-key-0003";
const KEYS = {
  tenants: [
    { name: "alice", keys: [ALICE] },
    { name: "bob", keys: [BOB], limits: { items_per_day: 5, max_items_per_batch: 20 } },
    { name: "ops", keys: [OPS], role: "operator" },
  ],
};
const POLICY = { rules: [{ name: "weapons", reason: "instructions for weapons", terms: ["pipe bomb"] }] };
const sim = (params: Record<string, unknown>) => ({ model: "sim-6g", params });
const get = (url: string) => fetch(url, { signal: AbortSignal.timeout(10_000) });

interface Day {
  accepted: number;
  succeeded: number;
  failed: number;
  contentPolicy: number;
  cancelled: number;
  gpuSeconds: number;
  batches: string[];
}

async function metric(port: number, name: string, want: Record<string, string>): Promise<number> {
  const text = await (await get(`http://127.0.0.1:${port}/metrics`)).text();
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`)) continue;
    const labels = line.slice(line.indexOf("{") + 1, line.indexOf("}"));
    if (Object.entries(want).every(([k, v]) => labels.includes(`${k}="${v}"`))) sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return sum;
}

describe("usage - per tenant and day, from durable records", () => {
  const stack = new Stack();
  let alice: TestClient;
  let bob: TestClient;
  let ops: TestClient;
  let nc: NatsConnection;
  let metricsPort = 0;
  let coordinatorArgs: string[] = [];

  /**
   * The stored day as it is in the bucket now: its two keys summed, `<day>.<tenant>` (items
   * accepted, written by submits) and `<day>._done.<tenant>` (finished batches, written after their
   * terminal records), apart so that submits never wait behind terminal counts.
   */
  const storedUsage = async (tenant: string, day: string): Promise<Day | undefined> => {
    const kv = await new Kvm(nc).open("shoal-usage");
    const read = async (key: string) => {
      const e = await kv.get(key);
      return e && e.operation === "PUT" ? e.json<Day>() : undefined;
    };
    const [accepted, done] = await Promise.all([read(`${day}.${tenant}`), read(`${day}._done.${tenant}`)]);
    if (!accepted && !done) return undefined;
    const zero: Day = { accepted: 0, succeeded: 0, failed: 0, contentPolicy: 0, cancelled: 0, gpuSeconds: 0, batches: [] };
    const a = accepted ?? zero;
    const d = done ?? zero;
    assert.deepEqual([a.succeeded, a.failed, a.gpuSeconds, a.batches], [0, 0, 0, []], "nothing finished is counted in the accepted key");
    assert.equal(d.accepted, 0, "nothing accepted is counted in the finished key");
    return { ...d, accepted: a.accepted };
  };
  /**
   * The stored day once the coordinator's counts asked for so far are stored: a batch's usage is
   * counted just after its terminal record, and GetUsage waits for the counts in flight (what a
   * client reading its usage after a batch's answer relies on). Checked equal to GetUsage's answer.
   */
  const usage = async (tenant: string, day: string): Promise<Day | undefined> => {
    const viaApi = (await ops.sdk.getUsage({ tenant, since: day })).find((d) => d.day === day);
    const stored = await storedUsage(tenant, day);
    assert.deepEqual(viaApi && [viaApi.accepted, viaApi.succeeded, viaApi.failed], stored && [stored.accepted, stored.succeeded, stored.failed], `GetUsage and the bucket agree on ${tenant}'s ${day}`);
    return stored;
  };
  const openMarker = async (batchId: string): Promise<boolean> => {
    const kv = await new Kvm(nc).open("shoal-batches");
    const e = await kv.get(`open.${batchId}`);
    return e !== null && e.operation === "PUT";
  };

  before(async () => {
    const keysPath = join(stack.dir, "keys.json");
    const policyPath = join(stack.dir, "policy.json");
    writeFileSync(keysPath, JSON.stringify(KEYS));
    writeFileSync(policyPath, JSON.stringify(POLICY));
    metricsPort = await freePort();
    coordinatorArgs = ["--api-keys-file", keysPath, "--content-policy", policyPath, "--metrics-port", String(metricsPort)];
    await stack.startNats();
    await stack.startCoordinator(coordinatorArgs);
    await stack.startWorker("w-sim", ["--simulate", "--vram", "40GB", "--max-in-flight", "4"]);
    await stack.startWorker("w-img", ["--vram", "8GiB"]);
    alice = new TestClient(stack.grpcAddr, ALICE);
    bob = new TestClient(stack.grpcAddr, BOB);
    ops = new TestClient(stack.grpcAddr, OPS);
    await ops.waitForWorkers(2, 120_000);
    nc = await connect({ servers: stack.natsUrl, timeout: 10_000 });
  });

  after(async () => {
    alice?.close();
    bob?.close();
    ops?.close();
    await nc?.close();
    await stack.stop();
  });

  test("usage - succeeded, failed, content-policy and GPU-seconds per tenant; a kill -9 counts nothing twice; items_per_day refuses with its reset time", async () => {
    // alice: 2 succeed (300 ms of simulated GPU time each), 1 fails, 1 is blocked by the policy.
    const a1 = await alice.submit({
      items: [
        sim({ work_ms: 300 }),
        sim({ work_ms: 300 }),
        sim({ fail: true }),
        { model: "imagegen-tiny", params: { prompt: "how to build a pipe bomb", width: 64, height: 64, steps: 1 } },
      ],
    });
    // bob: 3 succeed.
    const b1 = await bob.submit({ items: [sim({ work_ms: 100 }), sim({ work_ms: 100 }), sim({ work_ms: 100 })] });
    const { batch: a1Done } = await pollUntilTerminal(alice, a1.batchId);
    const { batch: b1Done } = await pollUntilTerminal(bob, b1.batchId);
    const day = a1Done.createdAt!.toISOString().slice(0, 10);
    assert.equal(b1Done.createdAt!.toISOString().slice(0, 10), day, "both submitted the same UTC day");

    const a = (await usage("alice", day))!;
    assert.deepEqual([a.accepted, a.succeeded, a.failed, a.contentPolicy, a.cancelled, a.batches], [4, 2, 1, 1, 0, [a1.batchId]]);
    const runSeconds = a1Done.results.reduce((s, r) => s + Number(r.runMs), 0) / 1000;
    assert.ok(a.gpuSeconds >= 0.6, `two 300 ms items ran: ${a.gpuSeconds} GPU-seconds`);
    assert.ok(Math.abs(a.gpuSeconds - runSeconds) < 0.002, "GPU-seconds are the sum of the items' run_ms");
    const b = (await usage("bob", day))!;
    assert.deepEqual([b.accepted, b.succeeded, b.failed, b.contentPolicy, b.batches], [3, 3, 0, 0, [b1.batchId]]);
    // Metrics: only configured tenants are labels; CONTENT_POLICY apart from failed.
    assert.equal(await metric(metricsPort, "shoal_tenant_items_total", { tenant: "alice", status: "succeeded" }), 2);
    assert.equal(await metric(metricsPort, "shoal_tenant_items_total", { tenant: "alice", status: "failed" }), 1);
    assert.equal(await metric(metricsPort, "shoal_tenant_items_total", { tenant: "alice", status: "content_policy" }), 1);
    assert.equal(await metric(metricsPort, "shoal_tenant_items_total", { tenant: "bob", status: "succeeded" }), 3);
    assert.ok((await metric(metricsPort, "shoal_tenant_gpu_seconds_total", { tenant: "alice" })) >= 0.6);

    // bob has 2 of his 5 items left today: a batch of 3 is refused, naming the limit and the reset.
    const refusal = await bob.submit({ items: [sim({}), sim({}), sim({})] }).then(
      () => assert.fail("a batch over items_per_day was accepted"),
      (e: unknown) => e as Error,
    );
    assert.equal(grpcCode(refusal), status.RESOURCE_EXHAUSTED);
    const midnight = new Date(Date.UTC(Number(day.slice(0, 4)), Number(day.slice(5, 7)) - 1, Number(day.slice(8, 10)) + 1)).toISOString();
    assert.match(refusal.message, /3 items accepted today \(UTC\) and this batch adds 3, over its limit items_per_day = 5/);
    assert.ok(refusal.message.includes(`resets at ${midnight}`), refusal.message);
    assert.equal((await usage("bob", day))!.accepted, 3, "a refused batch uses none of the day");
    // Two more fit exactly.
    const b2 = await bob.submit({ items: [sim({}), sim({})] });
    await pollUntilTerminal(bob, b2.batchId);

    // alice's long batch: kill -9 the coordinator while it runs, start it again.
    const a2 = await alice.submit({ items: Array.from({ length: 6 }, () => sim({ work_ms: 1500 })) });
    await waitFor("a2 running", async () => (await alice.get(a2.batchId)).running > 0, 30_000);
    await stack.kill(stack.coordinator!, "SIGKILL");
    await stack.startCoordinator(coordinatorArgs);
    const { batch: a2Done } = await pollUntilTerminal(alice, a2.batchId);
    assert.equal(a2Done.state, BatchState.BATCH_STATE_COMPLETED);
    const after = (await usage("alice", a2Done.createdAt!.toISOString().slice(0, 10)))!;
    assert.deepEqual([after.accepted, after.succeeded, after.failed, after.contentPolicy], [10, 8, 1, 1], "a1 once, a2 once");
    // The list keeps the batches a restart may count again: a2 until the key's next write. a1's
    // marker was removed long ago, but its id was to leave with the key's next write by the
    // coordinator that was killed (what it meant to drop is in its memory only): it stays, harmless.
    assert.deepEqual(after.batches, [a1.batchId, a2.batchId]);
    assert.equal((await usage("bob", day))!.succeeded, 5);
    // The restarted coordinator's metrics hold a2 only: a1 was not counted again.
    assert.equal(await metric(metricsPort, "shoal_tenant_items_total", { tenant: "alice", status: "succeeded" }), 6);
    assert.equal(await metric(metricsPort, "shoal_tenant_items_total", { tenant: "alice", status: "content_policy" }), 0);
  });

  test("usage - shoal usage and GET /v1/usage: a tenant sees its own days, an operator any or all", async () => {
    const day = new Date().toISOString().slice(0, 10);
    // bob's usage is the previous test's (he is at his daily limit now).
    const a = await alice.submit({ items: [sim({ work_ms: 50 })] });
    await pollUntilTerminal(alice, a.batchId);
    const aliceDay = (await usage("alice", day))!;

    // CLI: alice's own table; an operator's for all tenants; alice asking for bob is refused.
    const own = await stack.cli(["usage", "--since", day], { SHOAL_API_KEY: ALICE }, 60_000);
    assert.equal(own.code, 0, own.stderr);
    const header = own.stdout.split("\n")[0]!;
    assert.match(header, /DAY \(UTC\)\s+TENANT\s+ACCEPTED\s+SUCCEEDED\s+FAILED\s+CONTENT_POLICY\s+CANCELLED\s+GPU-SECONDS/);
    const row = own.stdout.split("\n").find((l) => l.startsWith(day))!;
    assert.deepEqual(row.trim().split(/\s+/).slice(0, 7), [day, "alice", String(aliceDay.accepted), String(aliceDay.succeeded), String(aliceDay.failed), String(aliceDay.contentPolicy), String(aliceDay.cancelled)]);
    assert.ok(!own.stdout.includes("bob"), "a tenant sees only its own usage");
    // alice has no limits in the keys file: said in words under the table.
    assert.match(own.stdout, /\n\nplan limits: none \(no limits in the keys file for these tenants; only the coordinator's --max-items and --max-queued-items apply\)\n$/);
    const all = await stack.cli(["usage", "--since", day], { SHOAL_API_KEY: OPS }, 60_000);
    assert.equal(all.code, 0, all.stderr);
    assert.ok(all.stdout.includes(" alice ") && all.stdout.includes(" bob "), all.stdout);
    // The operator sees every configured tenant's limits: bob's (alice and ops have none), with
    // the one bob has no limit of (max_queued_items) as unlimited.
    const limitLines = (out: string) => out.slice(out.indexOf("plan limits (--api-keys-file):\n")).split("\n").slice(1).filter((l) => l !== "");
    assert.ok(all.stdout.includes("plan limits (--api-keys-file):\n"), all.stdout);
    const allLimits = limitLines(all.stdout);
    assert.match(allLimits[0]!, /^TENANT +MAX_ITEMS_PER_BATCH +ITEMS_PER_DAY +MAX_QUEUED_ITEMS$/);
    assert.deepEqual(allLimits[1]!.trim().split(/\s+/), ["bob", "20", "5", "unlimited"]);
    assert.match(allLimits[2]!, /^\(unlimited: no limit of the tenant's own; the coordinator's --max-items and --max-queued-items still apply\)$/);
    assert.equal(allLimits.length, 3, all.stdout);
    // bob sees his own limits; --json has the days and the limits as GET /v1/usage has them.
    const bobOwn = await stack.cli(["usage", "--since", day], { SHOAL_API_KEY: BOB }, 60_000);
    assert.equal(bobOwn.code, 0, bobOwn.stderr);
    assert.deepEqual(limitLines(bobOwn.stdout)[1]!.trim().split(/\s+/), ["bob", "20", "5", "unlimited"]);
    const bobJson = await stack.cli(["usage", "--since", day, "--json"], { SHOAL_API_KEY: BOB }, 60_000);
    assert.equal(bobJson.code, 0, bobJson.stderr);
    const bobReport = JSON.parse(bobJson.stdout) as { days: { tenant: string; accepted: number; succeeded: number }[]; limits: unknown[] };
    assert.deepEqual(bobReport.limits, [{ tenant: "bob", max_items_per_batch: 20, items_per_day: 5, max_queued_items: null }]);
    const bobDay = (await usage("bob", day))!;
    assert.deepEqual(bobReport.days.map((d) => [d.tenant, d.accepted, d.succeeded]), [["bob", bobDay.accepted, bobDay.succeeded]]);
    const denied = await stack.cli(["usage", "--tenant", "bob"], { SHOAL_API_KEY: ALICE }, 60_000);
    assert.notEqual(denied.code, 0);
    assert.match(denied.stderr, /PERMISSION_DENIED.*only its own usage/);
    const badDay = await stack.cli(["usage", "--since", "2026-13-45"], { SHOAL_API_KEY: ALICE }, 60_000);
    assert.notEqual(badDay.code, 0);
    assert.match(badDay.stderr, /--since must be a date YYYY-MM-DD/);

    // HTTP, checked against the OpenAPI document.
    const gw = await stack.startGateway([], { SHOAL_URL_SIGNING_KEY: "usage-test-signing-key-0123456789abcdef" });
    const http = async (path: string, key: string) => {
      const res = await fetch(`${gw.url}${path}`, { headers: { authorization: `Bearer ${key}` }, signal: AbortSignal.timeout(10_000) });
      const json = await res.json();
      checkResponse("GET", res.url, res, json);
      return { res, json };
    };
    const mine = await http(`/v1/usage?since=${day}`, ALICE);
    assert.equal(mine.res.status, 200);
    assert.deepEqual(mine.json.days.map((d: { tenant: string }) => d.tenant), ["alice"]);
    assert.equal(mine.json.days[0].succeeded, aliceDay.succeeded);
    assert.equal(mine.json.days[0].content_policy, aliceDay.contentPolicy);
    const bobs = await http(`/v1/usage?tenant=bob&since=${day}`, OPS);
    assert.deepEqual(bobs.json.days.map((d: { tenant: string }) => d.tenant), ["bob"]);
    assert.deepEqual(bobs.json, bobReport, "the CLI's --json is GET /v1/usage's answer");
    assert.deepEqual(mine.json.limits, [], "alice has no limits of her own");
    assert.equal((await http("/v1/usage?tenant=bob", ALICE)).res.status, 403);
    assert.equal((await http("/v1/usage?since=yesterday", ALICE)).res.status, 400);
    // bob used his 5 items today: over HTTP the refusal is a 429 naming the limit and its reset.
    const over = await fetch(`${gw.url}/v1/batch?wait=false`, {
      method: "POST",
      headers: { authorization: `Bearer ${BOB}`, "content-type": "application/json" },
      body: JSON.stringify({ requests: [{ model: "sim-6g" }] }),
      signal: AbortSignal.timeout(10_000),
    });
    const overJson = await over.json();
    checkResponse("POST", over.url, over, overJson);
    assert.equal(over.status, 429);
    assert.match(overJson.error.message, /items_per_day = 5 .*resets at \d{4}-\d{2}-\d{2}T00:00:00\.000Z/);
  });

  test("usage - kill -9 between a batch's terminal record and its usage count: the next start counts it, once; a client reading its usage after an answer sees its batch", async () => {
    const day = new Date().toISOString().slice(0, 10);
    const before = (await usage("alice", day))!;
    // TEST HOOK (coordinator/terminal-usage.ts): this coordinator holds every count for 10
    // minutes after the terminal record is stored, so the kill lands between the two writes.
    await stack.kill(stack.coordinator!, "SIGKILL");
    await stack.startCoordinator(coordinatorArgs, undefined, { env: { SHOAL_TEST_HOLD_USAGE_COUNT_MS: "600000" } });
    const a = await alice.submit({ items: [sim({ work_ms: 200 }), sim({ work_ms: 200 }), sim({ fail: true })] });
    const { batch: done } = await pollUntilTerminal(alice, a.batchId);
    assert.equal(done.state, BatchState.BATCH_STATE_COMPLETED);
    const held = (await storedUsage("alice", day))!;
    assert.deepEqual(
      [held.accepted, held.succeeded, held.failed],
      [before.accepted + 3, before.succeeded, before.failed],
      "accepted at submit; the outcome not counted yet: the terminal record came first",
    );
    assert.ok(await openMarker(a.batchId), "the open marker stays until the count is stored");
    await stack.kill(stack.coordinator!, "SIGKILL");

    await stack.startCoordinator(coordinatorArgs);
    await waitFor("the next start counts the finished batch and removes its marker", async () => !(await openMarker(a.batchId)), 30_000);
    const counted = (await usage("alice", day))!;
    const runSeconds = done.results.reduce((sum, r) => sum + Number(r.runMs), 0) / 1000;
    assert.deepEqual([counted.accepted - before.accepted, counted.succeeded - before.succeeded, counted.failed - before.failed], [3, 2, 1]);
    assert.ok(Math.abs(counted.gpuSeconds - before.gpuSeconds - runSeconds) < 0.002, "its GPU-seconds once");
    assert.equal(await metric(metricsPort, "shoal_tenant_items_total", { tenant: "alice", status: "succeeded" }), 2, "the restarted coordinator counted it");

    // Another kill -9 and start: the marker is gone, nothing counts the batch again.
    await stack.kill(stack.coordinator!, "SIGKILL");
    await stack.startCoordinator(coordinatorArgs);
    // A client's own batch, then its usage at once: GetUsage waits for the count asked for
    // before the answer (the count is stored just after the terminal record).
    const b = await alice.run({ items: [sim({ work_ms: 10 })] }, 60_000);
    assert.equal(b.state, BatchState.BATCH_STATE_COMPLETED);
    const own = (await alice.sdk.getUsage({ since: day })).find((d) => d.day === day)!;
    assert.deepEqual([own.accepted, own.succeeded, own.failed], [counted.accepted + 1, counted.succeeded + 1, counted.failed], "a counted once, b already counted");
    assert.equal(await metric(metricsPort, "shoal_tenant_items_total", { tenant: "alice", status: "succeeded" }), 1, "only b counted by this start");
    // bob's items_per_day is still exact after the restarts: he used his 5, one more is refused.
    const refusal = await bob.submit({ items: [sim({})] }).then(
      () => assert.fail("a batch over items_per_day was accepted after the restarts"),
      (e: unknown) => e as Error,
    );
    assert.equal(grpcCode(refusal), status.RESOURCE_EXHAUSTED);
    assert.match(refusal.message, /5 items accepted today \(UTC\) and this batch adds 1, over its limit items_per_day = 5/);
  });
});
