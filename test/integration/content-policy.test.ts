// The content policy with real processes: a coordinator with --content-policy rules, a worker
// whose model directory holds the prompt-guard-tiny classifier, a gateway, a webhook receiver.
// Blocked items end FAILED with CONTENT_POLICY without reaching a GPU (rules) or without their
// model running (classifier); RetryBatch leaves them out; a bad policy file is refused at start;
// SIGHUP reloads the file.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { BatchState, ItemStatus, type Batch } from "../../proto/gen/shoal/v1/shoal.js";
import { writePromptGuardModel } from "../../worker/inference/prompt-guard.js";
import { assertWholeBatch, pollUntilTerminal, waitFor } from "../harness/batch-checks.js";
import { TestClient, grpcCode } from "../harness/client.js";
import { metric } from "../harness/metrics.js";
import { freePort, Stack, type Proc } from "../harness/processes.js";

const ALICE_KEY = "alice-key-123";
const BOB_KEY = "bob-key-4567";
const POLICY = {
  rules: [
    { name: "weapons", reason: "instructions for weapons", terms: ["pipe bomb"] },
    { name: "trafficking", reason: "trafficking goods", patterns: ["\\bsmuggl(e|ing)\\b"] },
    { name: "acme-rivals", reason: "a competitor's brand", terms: ["globex"], tenants: ["alice"] },
  ],
};
/** The texts that must never show up in any process's output. */
const BLOCKED_TEXTS = ["Pipe  Bomb", "pipe bomb", "SMUGGLING", "smuggle", "contraband", "forbidden"];
const small = (prompt: string, extra: Record<string, unknown> = {}) => ({ model: "imagegen-tiny", params: { prompt, width: 64, height: 64, steps: 1, ...extra } });
const get = (url: string, init: RequestInit = {}) => fetch(url, { ...init, signal: AbortSignal.timeout(10_000) });


/** Polls through the restart (UNAVAILABLE while the coordinator comes back). */
async function waitForTerminal(client: TestClient, batchId: string): Promise<Batch> {
  return (await pollUntilTerminal(client, batchId, { timeoutMs: 120_000 })).batch;
}

/** Worker log lines about one item of a batch. */
const linesAbout = (p: Proc, batchId: string, item: number) => p.logs.filter((l) => l.batchId === batchId && Number(l.item) === item);

describe("content policy - rules at submit and a prompt classifier on the worker", () => {
  const stack = new Stack();
  let alice: TestClient;
  let bob: TestClient;
  let worker: Proc;
  let coordinator: Proc;
  let policyFile = "";
  let coordinatorPort = 0;
  let workerPort = 0;
  let gateway = "";
  let receiver: Server;
  let receiverUrl = "";
  const received: string[] = [];

  before(async () => {
    policyFile = join(stack.dir, "policy.json");
    writeFileSync(policyFile, JSON.stringify(POLICY));
    const modelDir = join(stack.dir, "models");
    await writePromptGuardModel(modelDir); // blocks "contraband" and "forbidden"
    receiver = createServer((req, res) => {
      let body = "";
      req.on("data", (d) => (body += d));
      req.on("end", () => {
        received.push(body);
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", () => r()));
    receiverUrl = `http://127.0.0.1:${(receiver.address() as { port: number }).port}/hook`;
    [coordinatorPort, workerPort] = [await freePort(), await freePort()];
    await stack.startNats();
    coordinator = await stack.startCoordinator([
      "--content-policy", policyFile,
      "--metrics-port", String(coordinatorPort),
      "--webhook-allow-private", // the webhook receiver is on 127.0.0.1
      "--api-keys", `alice:${ALICE_KEY},bob:${BOB_KEY}`,
      // An item too large for the worker fails OUT_OF_MEMORY (retryable) after this: the retryable
      // failure beside the blocked ones in the RetryBatch test.
      "--unplaceable-grace", "1s",
    ]);
    // 700 MiB: 64×64 imagegen-tiny items fit (322 MiB), 1024×1024 ones (832 MiB) never do.
    // debug: the worker logs every item it runs ("item succeeded").
    worker = await stack.startWorker("w1", ["--vram", "700MiB", "--model-dir", modelDir, "--metrics-port", String(workerPort)], { SHOAL_LOG_LEVEL: "debug" });
    alice = new TestClient(stack.grpcAddr, ALICE_KEY);
    bob = new TestClient(stack.grpcAddr, BOB_KEY);
    await alice.waitForWorkers(1);
    gateway = (await stack.startGateway()).url;
  });

  after(async () => {
    alice?.close();
    bob?.close();
    receiver?.close();
    await stack.stop();
  });

  test("content policy - 10 items, 2 blocked by rules: 8 images, 2 CONTENT_POLICY that never reached a worker", async () => {
    const itemsBefore = await metric(workerPort, "shoal_worker_items_total", { model: "imagegen-tiny" });
    const prompts = Array.from({ length: 10 }, (_, i) => `a ceramic mug, variant ${i}`);
    prompts[3] = "how to build a Pipe  Bomb at home";
    prompts[7] = "SMUGGLING routes across the border";
    const { batchId } = await alice.submit({ items: prompts.map((p) => small(p)), webhook: { url: receiverUrl, events: [], secret: "" } });
    const batch = await alice.waitTerminal(batchId, 180_000);
    assertWholeBatch(batch, 10);
    assert.equal(batch.state, BatchState.BATCH_STATE_COMPLETED, "a mixed batch completes with the violations in place");
    assert.equal(batch.succeeded, 8);
    assert.equal(batch.failed, 2);
    for (const [i, rule, reason] of [[3, "weapons", "instructions for weapons"], [7, "trafficking", "trafficking goods"]] as const) {
      const r = batch.results[i]!;
      assert.equal(r.status, ItemStatus.ITEM_STATUS_FAILED);
      assert.deepEqual(r.error, { code: "CONTENT_POLICY", message: `blocked by the content policy: ${reason} (rule ${rule}, params.prompt)`, retryable: false });
      // Never placed: no worker, no attempt, no run time, no artifact.
      assert.deepEqual([r.workerId, r.attempts, r.runMs, r.artifacts.length], ["", 0, 0, 0]);
      assert.deepEqual(linesAbout(worker, batchId, i), [], `the worker logged item ${i}`);
    }
    for (const r of batch.results.filter((r) => r.status === ItemStatus.ITEM_STATUS_SUCCEEDED)) {
      assert.equal(r.artifacts[0]!.contentType, "image/png");
      assert.ok(linesAbout(worker, batchId, r.index).some((l) => l.msg === "item succeeded"), `item ${r.index} not in the worker's log`);
    }
    // Only the 8 allowed items ran on the worker; the coordinator counted 2 refusals by its rules.
    assert.equal((await metric(workerPort, "shoal_worker_items_total", { model: "imagegen-tiny" })) - itemsBefore, 8);
    assert.equal(await metric(coordinatorPort, "shoal_content_policy_items_total", { model: "imagegen-tiny", stage: "rules" }), 2);
    assert.equal(await metric(coordinatorPort, "shoal_items_total", { model: "imagegen-tiny", code: "CONTENT_POLICY" }), 2);
    // The webhook and the HTTP API carry the code.
    await waitFor("the webhook", () => received.some((b) => b.includes(batchId)), 20_000);
    const hook = JSON.parse(received.find((b) => b.includes(batchId))!) as { data: { results: { status: string; error?: { code: string; retryable: boolean } }[] } };
    assert.deepEqual(hook.data.results[3]!.error && { code: hook.data.results[3]!.error.code, retryable: hook.data.results[3]!.error.retryable }, { code: "CONTENT_POLICY", retryable: false });
    assert.equal(hook.data.results[7]!.status, "failed");
    const http = (await (await get(`${gateway}/v1/batch/${batchId}`, { headers: { authorization: `Bearer ${ALICE_KEY}` } })).json()) as { results: { status: string; error_code: string | null; error: string | null }[] };
    assert.deepEqual([http.results[3]!.status, http.results[3]!.error_code], ["failed", "content_policy"]);
    assert.equal(http.results[7]!.error_code, "content_policy");
    assert.equal(http.results[0]!.error_code, null);
    // RetryBatch resubmits nothing blocked: with nothing else to retry it is refused, naming them.
    await assert.rejects(alice.sdk.retryBatch(batchId), (e: Error) => grpcCode(e) === status.FAILED_PRECONDITION && /not retried: 2 CONTENT_POLICY/.test(e.message));
  });

  test("content policy - RetryBatch leaves blocked items out and resubmits the retryable rest; shoal retry says what it skipped", async () => {
    const { batchId } = await alice.submit({ items: [small("a lighthouse"), small("smuggle a parrot"), small("a huge lighthouse", { width: 1024, height: 1024 })] });
    const batch = await alice.waitTerminal(batchId, 120_000);
    assert.equal(batch.state, BatchState.BATCH_STATE_COMPLETED);
    assert.deepEqual(batch.results.map((r) => r.error?.code ?? "ok"), ["ok", "CONTENT_POLICY", "OUT_OF_MEMORY"]);
    const retry = await alice.sdk.retryBatch(batchId);
    assert.equal(retry.itemCount, 1, "only the OUT_OF_MEMORY item is resubmitted");
    const retried = await alice.waitTerminal(retry.batchId, 60_000);
    assert.deepEqual(retried.results.map((r) => r.error?.code), ["OUT_OF_MEMORY"]);
    const cli = await stack.cli(["retry", batchId], { SHOAL_API_KEY: ALICE_KEY }, 60_000);
    assert.equal(cli.code, 0, cli.stderr);
    assert.match(cli.stdout, /^b_\S+\n$/);
    assert.match(cli.stderr, /retrying 1 failed item of \S+ as batch \S+\n {2}skipped: {5}1 failed item not retryable: 1 CONTENT_POLICY \(blocked by the content policy; never retried\)\n/);
  });

  test("content policy - a batch whose items are all blocked ends FAILED at once; rules per tenant apply to their tenant only", async () => {
    const { batchId } = await alice.submit({ items: [small("a pipe bomb"), small("globex logo on a mug")] });
    const batch = await alice.waitTerminal(batchId, 30_000);
    assertWholeBatch(batch, 2);
    assert.equal(batch.state, BatchState.BATCH_STATE_FAILED);
    assert.deepEqual(batch.results.map((r) => r.error?.code), ["CONTENT_POLICY", "CONTENT_POLICY"]);
    assert.match(batch.results[1]!.error!.message, /a competitor's brand \(rule acme-rivals/);
    // bob is not under alice's rule.
    const bobs = await bob.waitTerminal((await bob.submit({ items: [small("globex logo on a mug")] })).batchId, 120_000);
    assert.equal(bobs.state, BatchState.BATCH_STATE_COMPLETED);
  });

  test("content policy - the classifier path: 10 items, 2 flagged by prompt-guard-tiny on the worker, whose model never ran", async () => {
    const itemsBefore = await metric(workerPort, "shoal_worker_items_total", { model: "imagegen-tiny" });
    const blockedBefore = await metric(workerPort, "shoal_worker_prompt_policy_items_total", { model: "imagegen-tiny", verdict: "blocked" });
    const prompts = Array.from({ length: 10 }, (_, i) => `a paper boat, variant ${i}`);
    prompts[2] = "a crate of contraband on a pier";
    prompts[9] = "the forbidden city at night";
    const batch: Batch = await alice.waitTerminal((await alice.submit({ items: prompts.map((p) => small(p)) })).batchId, 180_000);
    assertWholeBatch(batch, 10);
    assert.equal(batch.state, BatchState.BATCH_STATE_COMPLETED);
    assert.equal(batch.succeeded, 8);
    for (const i of [2, 9]) {
      const r = batch.results[i]!;
      assert.equal(r.error?.code, "CONTENT_POLICY");
      assert.equal(r.error?.retryable, false);
      assert.match(r.error!.message, /^blocked by the content policy: flagged by the prompt classifier prompt-guard-tiny \(score 0\.99\d+ ≥ threshold 0\.5\)$/);
      assert.equal(r.workerId, "w1", "screened on the worker, in the item's attempt");
      const lines = linesAbout(worker, batch.id, i);
      assert.ok(lines.some((l) => l.code === "CONTENT_POLICY"), `no CONTENT_POLICY line for item ${i}`);
      assert.ok(!lines.some((l) => l.msg === "item succeeded"), `item ${i} ran`);
    }
    assert.equal((await metric(workerPort, "shoal_worker_items_total", { model: "imagegen-tiny" })) - itemsBefore, 8, "the blocked items' model never ran");
    assert.equal((await metric(workerPort, "shoal_worker_prompt_policy_items_total", { model: "imagegen-tiny", verdict: "blocked" })) - blockedBefore, 2);
    assert.equal(await metric(coordinatorPort, "shoal_content_policy_items_total", { model: "imagegen-tiny", stage: "classifier" }), 2);
    await assert.rejects(alice.sdk.retryBatch(batch.id), (e: Error) => grpcCode(e) === status.FAILED_PRECONDITION && /2 CONTENT_POLICY/.test(e.message));
    // All flagged: FAILED, as with the rules.
    const all = await alice.waitTerminal((await alice.submit({ items: [small("contraband"), small("forbidden fruit")] })).batchId, 120_000);
    assert.equal(all.state, BatchState.BATCH_STATE_FAILED);
    assert.deepEqual(all.results.map((r) => r.error?.code), ["CONTENT_POLICY", "CONTENT_POLICY"]);
  });

  test("content policy - a restarted coordinator ends blocked items as they were accepted, even under a changed policy", async () => {
    const coordinatorArgs = (file: string) => ["--content-policy", file, "--metrics-port", String(coordinatorPort), "--api-keys", `alice:${ALICE_KEY},bob:${BOB_KEY}`, "--unplaceable-grace", "1s"];
    // The huge item keeps the batch running (it fails only after the grace) while the coordinator is killed.
    const { batchId } = await alice.submit({ items: [small("a pipe bomb"), small("a huge mug", { width: 1024, height: 1024 })] });
    assert.equal((await alice.get(batchId)).state, BatchState.BATCH_STATE_RUNNING, "still running when the coordinator is killed");
    await stack.kill(coordinator);
    const empty = join(stack.dir, "empty-policy.json");
    writeFileSync(empty, JSON.stringify({ rules: [] }));
    coordinator = await stack.startCoordinator(coordinatorArgs(empty));
    const batch = await waitForTerminal(alice, batchId);
    assert.ok(coordinator.logs.some((l) => l.msg === "resumed running batches; waiting for workers to report their items"), "the batch was resumed, not read back finished");
    assertWholeBatch(batch, 2);
    assert.equal(batch.state, BatchState.BATCH_STATE_FAILED);
    assert.deepEqual(batch.results.map((r) => r.error?.code), ["CONTENT_POLICY", "OUT_OF_MEMORY"]);
    assert.match(batch.results[0]!.error!.message, /rule weapons/, "the verdict stored at submit, not today's (empty) policy");
    assert.deepEqual(linesAbout(worker, batchId, 0), []);
    // Back to the test's policy for what follows.
    await stack.kill(coordinator);
    coordinator = await stack.startCoordinator(coordinatorArgs(policyFile));
    await alice.waitForWorkers(1);
  });

  test("content policy - no blocked text appears in any process's output", () => {
    for (const p of stack.procs) {
      for (const text of BLOCKED_TEXTS) {
        const hit = p.output.find((line) => line.toLowerCase().includes(text.toLowerCase()));
        assert.equal(hit, undefined, `${p.name} logged blocked text: ${hit}`);
      }
    }
  });

  test("content policy - a policy file with a bad regular expression is refused at start, naming the rule (flag and env var)", async () => {
    const bad = join(stack.dir, "bad-policy.json");
    writeFileSync(bad, JSON.stringify({ rules: [{ name: "fine", reason: "r", terms: ["x"] }, { name: "card-numbers", reason: "r", patterns: ["(\\d{4}"] }] }));
    const args = ["coordinator", "--nats", stack.natsUrl, "--grpc-host", "127.0.0.1", "--grpc-port", String(await freePort()), "--metrics-port", "0", "--log-format", "json"];
    for (const [extra, env] of [[["--content-policy", bad], {}], [[], { SHOAL_CONTENT_POLICY: bad }]] as const) {
      const run = await stack.cli([...args, ...extra], env, 60_000);
      assert.equal(run.code, 2, `exit code; stderr: ${run.stderr}`);
      assert.match(run.stderr, /--content-policy: \S*bad-policy\.json: rules\[1\] \("card-numbers"\)\.patterns\[0\]: invalid regular expression/);
    }
  });

  test("content policy - SIGHUP reloads a changed file; a bad file on reload keeps the policy in force", async () => {
    const reloads = () => coordinator.logs.filter((l) => l.msg === "content policy reloaded").length;
    writeFileSync(policyFile, JSON.stringify({ rules: [...POLICY.rules, { name: "no-lighthouses", reason: "lighthouses are out this season", terms: ["lighthouse"] }] }));
    process.kill(coordinator.pid, "SIGHUP");
    await waitFor("the reload", () => reloads() === 1, 20_000);
    const after = await alice.waitTerminal((await alice.submit({ items: [small("a lighthouse at dusk"), small("a ceramic mug")] })).batchId, 120_000);
    assert.deepEqual(after.results.map((r) => r.error?.code ?? "ok"), ["CONTENT_POLICY", "ok"]);
    assert.match(after.results[0]!.error!.message, /rule no-lighthouses/);
    writeFileSync(policyFile, JSON.stringify({ rules: [{ name: "broken", reason: "r", patterns: ["[unclosed"] }] }));
    process.kill(coordinator.pid, "SIGHUP");
    await waitFor("the refused reload", () => coordinator.logs.some((l) => l.msg === "content policy not reloaded; the previous one stays in force"), 20_000);
    const refused = coordinator.logs.find((l) => l.msg === "content policy not reloaded; the previous one stays in force")!;
    assert.match(String((refused.problems as string[])[0]), /rules\[0\] \("broken"\)\.patterns\[0\]: invalid regular expression/);
    assert.equal(coordinator.child.exitCode, null, "the coordinator is still running");
    const still = await alice.waitTerminal((await alice.submit({ items: [small("a lighthouse")] })).batchId, 30_000);
    assert.equal(still.results[0]!.error?.code, "CONTENT_POLICY", "the previous policy stays in force");
    assert.equal(await metric(coordinatorPort, "shoal_content_policy_loads_total", { outcome: "refused" }), 1);
    assert.equal(await metric(coordinatorPort, "shoal_content_policy_rules"), 4);
  });
});
