// NATS identities against a real nats-server with the authorization `shoal up` writes
// (cli/nats-auth.ts): a real coordinator and two real workers (w1 simulated, w2 running
// imagegen-tiny), each with its own user, and "mallory", a worker identity that attacks. Each
// attack is answered by the server (a permissions violation) or by the coordinator (the message
// is fenced off), and the batches it aimed at complete with the results the real workers made.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { jetstream } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { natsAuthorizationConfig, type FleetIdentities } from "../../cli/nats-auth.js";
import { ItemStatus, BatchState } from "../../proto/gen/shoal/v1/shoal.js";
import { Heartbeat, ResultLogEntry } from "../../proto/gen/shoal/v1/wire.js";
import { WorkerState } from "../../proto/gen/shoal/v1/shoal.js";
import { encodeMessage } from "../../shared/codec.js";
import { Names } from "../../shared/subjects.js";
import { writeArtifact } from "../../worker/artifact-writer.js";
import { freePort, Stack } from "../harness/processes.js";
import { TestClient } from "../harness/client.js";

const names = new Names("shoal");
const ids: FleetIdentities = {
  coordinator: { user: "shoal-coordinator", password: "coordinator-secret-0123456789" },
  workers: {
    w1: { user: "w1", password: "w1-secret-0123456789" },
    w2: { user: "w2", password: "w2-secret-0123456789" },
    mallory: { user: "mallory", password: "mallory-secret-0123456789" },
  },
};
const GiB = 2 ** 30;

/** Waits for the server's "Permissions Violation" about `subject` on this connection. */
function violation(nc: NatsConnection, subject: string, timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no permissions violation for ${subject} within ${timeoutMs} ms`)), timeoutMs);
    void (async () => {
      for await (const s of nc.status()) {
        const text = s.type === "error" ? String((s as { error?: unknown }).error) : "";
        if (text.includes("Permissions Violation") && text.includes(`"${subject}"`)) {
          clearTimeout(timer);
          resolve(text);
          return;
        }
      }
    })();
  });
}

async function metric(port: number, name: string, labels: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : 0;
}

describe("security - NATS identities, per-role permissions and fenced outcomes", () => {
  const stack = new Stack();
  let client: TestClient;
  let mallory: NatsConnection;
  let metricsPort = 0;

  before(async () => {
    await stack.startNats(natsAuthorizationConfig("shoal", ids));
    metricsPort = await freePort();
    const as = (u: { user: string; password: string }) => ({ SHOAL_NATS_USER: u.user, SHOAL_NATS_PASSWORD: u.password });
    // The coordinator takes its identity from the environment like the workers (flags work too).
    await stack.startCoordinator(["--metrics-port", String(metricsPort), "--unplaceable-grace", "3s", "--nats-user", ids.coordinator.user, "--nats-password", ids.coordinator.password]);
    await stack.startWorker("w1", ["--simulate", "--vram", "8GiB", "--threads", "1", "--max-in-flight", "1"], as(ids.workers.w1!));
    await stack.startWorker("w2", ["--vram", "4GiB"], as(ids.workers.w2!));
    client = new TestClient(stack.grpcAddr);
    await client.waitForWorkers(2);
    mallory = await connect({ servers: stack.natsUrl, user: "mallory", pass: ids.workers.mallory!.password, inboxPrefix: "_INBOX_mallory", timeout: 10_000 });
  });

  after(async () => {
    await mallory?.close().catch(() => undefined);
    client?.close();
    await stack.stop();
  });

  test("security - an anonymous connection and a wrong password are refused by nats-server", async () => {
    await assert.rejects(connect({ servers: stack.natsUrl, timeout: 10_000 }), /Authorization Violation/);
    await assert.rejects(connect({ servers: stack.natsUrl, user: "w1", pass: "not-the-password", timeout: 10_000 }), /Authorization Violation/);
  });

  test("security - a coordinator or worker with a refused identity exits 2 naming the flag", async () => {
    const w = await stack.startWorker("w9", ["--vram", "1GiB"], { SHOAL_NATS_USER: "w9", SHOAL_NATS_PASSWORD: "wrong-password-123" });
    const code = await Promise.race([w.exited, new Promise<string>((r) => setTimeout(() => r("still running"), 30_000))]);
    assert.equal(code, 2, w.output.slice(-5).join("\n"));
    assert.ok(w.output.some((l) => /--nats-user: nats-server refused/.test(l)), w.output.slice(-5).join("\n"));
    // Two methods at once, a missing creds file: refused before connecting.
    const both = await stack.startWorker("w8", ["--nats-token", "t0ken-t0ken", "--nats-user", "a", "--nats-password", "b"]);
    assert.equal(await both.exited, 2);
    assert.ok(both.output.some((l) => /--nats-token: conflicts with --nats-user\/--nats-password/.test(l)), both.output.join("\n"));
    const missing = await stack.startWorker("w7", ["--nats-creds", "/nonexistent/w7.creds"]);
    assert.equal(await missing.exited, 2);
    assert.ok(missing.output.some((l) => /--nats-creds: \/nonexistent\/w7\.creds does not exist/.test(l)), missing.output.join("\n"));
  });

  test("security - a worker identity cannot heartbeat, assign, drain or listen as another worker, nor use the JetStream API", async () => {
    const forged = encodeMessage(Heartbeat, {
      workerId: "w1", seq: 1_000_000, incarnation: "forged", state: WorkerState.WORKER_STATE_READY,
      gpus: [{ index: 0, name: "forged", vramTotalBytes: 2 ** 52, vramFreeBytes: 2 ** 52, source: "budget" }],
      residentModels: [], inFlight: [], itemsDone: 0, maxInFlight: 1000, hostname: "x", models: ["sim-6g"], heartbeatIntervalMs: 1000,
    });
    const hb = violation(mallory, names.heartbeat("w1"));
    mallory.publish(names.heartbeat("w1"), forged);
    await hb;
    await assert.rejects(mallory.request(names.assign("w1"), new Uint8Array(), { timeout: 5000 }), /Permissions Violation for Publish to "shoal\.worker\.w1\.assign"/);
    await assert.rejects(mallory.request(names.drain("w1"), new Uint8Array(), { timeout: 5000 }), /Permissions Violation for Publish to "shoal\.worker\.w1\.drain"/);
    const sub = violation(mallory, names.assign("w1"));
    mallory.subscribe(names.assign("w1"));
    await sub;
    await assert.rejects(mallory.request("$JS.API.STREAM.MSG.GET.OBJ_shoal-artifacts", new Uint8Array(), { timeout: 5000 }), /Permissions Violation/);
    await assert.rejects(mallory.request(`$JS.API.STREAM.PURGE.${names.resultsStream}`, new Uint8Array(), { timeout: 5000 }), /Permissions Violation/);
    // Under its own id it may heartbeat, but a claim of 2^53 bytes of VRAM is refused.
    mallory.publish(names.heartbeat("mallory"), encodeMessage(Heartbeat, { ...Heartbeat.decode(forged), workerId: "mallory" }));
    await mallory.flush();
    await new Promise((r) => setTimeout(r, 500));
    const workers = await client.workers();
    assert.deepEqual(workers.map((w) => w.id).sort(), ["w1", "w2"]);
    const w1 = workers.find((w) => w.id === "w1")!;
    assert.equal(w1.state, WorkerState.WORKER_STATE_READY);
    assert.equal(Number(w1.gpus[0]!.vramTotalBytes), 8 * GiB);
    assert.ok((await metric(metricsPort, "shoal_protocol_errors_total", 'kind="heartbeat"')) >= 1);
  });

  test("security - a forged outcome for an item the sender does not hold is fenced off; its VRAM figure teaches nothing", async () => {
    // Two items of one shape on w1, one at a time: the forgery aims at the first while it runs.
    const { batchId } = await client.submit({ items: [0, 1].map(() => ({ model: "sim-6g", params: { work_ms: 2500 } })) });
    const deadline = Date.now() + 30_000;
    while ((await client.get(batchId)).running < 1) {
      assert.ok(Date.now() < deadline, "the first item never started");
      await new Promise((r) => setTimeout(r, 50));
    }
    const js = jetstream(mallory);
    const forgedOutcome = (workerId: string, token: string) =>
      encodeMessage(ResultLogEntry, {
        entry: {
          $case: "results",
          results: {
            workerId,
            outcomes: [{
              lease: { batchId, index: 0, token },
              status: ItemStatus.ITEM_STATUS_SUCCEEDED,
              error: undefined,
              artifacts: [{ name: "image", contentType: "image/png", sizeBytes: 3, sha256: "a".repeat(64), uri: `shoal://artifacts/${batchId}/0/${token}/image` }],
              runMs: 1,
              // 512 TiB: learned, it would leave no GPU able to take this shape again.
              vramUsedBytes: 2 ** 49,
            }],
          },
        },
      });
    // Tokens of the old form, of the new form with a made-up MAC, in its own name and in w1's.
    for (const [workerId, token] of [["mallory", "1.abcdef0"], ["mallory", "1.mallory.abcdef0abcdefghijklmnop"], ["w1", "1.w1.abcdef0abcdefghijklmnop"]] as const) {
      await js.publish(names.results(batchId), forgedOutcome(workerId, token), { timeout: 10_000 });
    }
    // A forged revocation naming attempt 99 (past --max-attempts) would fail the item at once.
    await js.publish(names.results(batchId), encodeMessage(ResultLogEntry, { entry: { $case: "revoked", revoked: { lease: { batchId, index: 0, token: "99.w1.abcdef0abcdefghijklmnop" }, reason: "forged" } } }), { timeout: 10_000 });
    const done = await client.waitTerminal(batchId, 60_000);
    assert.equal(done.state, BatchState.BATCH_STATE_COMPLETED, JSON.stringify(done.results));
    assert.equal(done.succeeded, 2);
    for (const r of done.results) {
      assert.equal(r.status, ItemStatus.ITEM_STATUS_SUCCEEDED);
      assert.equal(r.workerId, "w1", `item ${r.index} counted from ${r.workerId}`);
      assert.equal(r.artifacts.length, 0, "sim items make no artifacts; the forged one must not appear");
      assert.equal(r.attempts, 1);
    }
    assert.equal(await metric(metricsPort, "shoal_fenced_messages_total", 'kind="outcome",reason="forged_token"'), 3);
    assert.equal(await metric(metricsPort, "shoal_fenced_messages_total", 'kind="revocation",reason="forged_token"'), 1);
    // The same shape still places: the forged 512 TiB was not learned.
    const again = await client.run({ items: [{ model: "sim-6g", params: { work_ms: 10 } }] }, 60_000);
    assert.equal(again.state, BatchState.BATCH_STATE_COMPLETED, JSON.stringify(again.results));
  });

  test("security - an artifact written under another batch changes nothing the batch serves", async () => {
    const batch = await client.run({ items: [0, 1].map((i) => ({ model: "imagegen-tiny", params: { prompt: `lighthouse ${i}`, width: 64, height: 64, steps: 1 } })) }, 120_000);
    assert.equal(batch.state, BatchState.BATCH_STATE_COMPLETED, JSON.stringify(batch.results));
    const js = jetstream(mallory);
    const junk = new TextEncoder().encode("not your image");
    for (const r of batch.results) {
      const uri = r.artifacts[0]!.uri;
      // Every name an attacker can know without the attempt's token: the batch's items by index,
      // under the names the artifacts had before tokens were part of them.
      await writeArtifact(js, names.artifactsBucket, `${batch.id}/${r.index}/image`, "image/png", junk, 1024 * 1024);
      // A worker's own writer never replaces an existing object (the server checks).
      await assert.rejects(writeArtifact(js, names.artifactsBucket, uri.slice("shoal://artifacts/".length), "image/png", junk, 1024 * 1024), /wrong last sequence/);
    }
    for (const r of batch.results) {
      const a = r.artifacts[0]!;
      assert.match(a.uri, new RegExp(`^shoal://artifacts/${batch.id}/${r.index}/${r.attempts}\\.w2\\.`));
      const bytes = await client.artifact(a.uri, 60_000);
      assert.equal(createHash("sha256").update(bytes).digest("hex"), a.sha256, "the artifact served is the one the worker made");
      assert.equal(bytes.subarray(1, 4).toString(), "PNG");
    }
  });
});

/** A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl. */
function makeCertificates(dir: string): Record<"ca" | "serverCert" | "serverKey" | "clientCert" | "clientKey", string> {
  const f = (name: string) => join(dir, name);
  const ssl = (...args: string[]) => execFileSync("openssl", args, { stdio: ["ignore", "pipe", "pipe"], timeout: 30_000 });
  ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=shoal-test-ca", "-keyout", f("ca.key"), "-out", f("ca.pem"));
  writeFileSync(f("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
  writeFileSync(f("client.ext"), "extendedKeyUsage=clientAuth\n");
  for (const [who, ext] of [["server", "server.ext"], ["client", "client.ext"]] as const) {
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", `/CN=shoal-test-${who}`, "-keyout", f(`${who}.key`), "-out", f(`${who}.csr`));
    ssl("x509", "-req", "-in", f(`${who}.csr`), "-CA", f("ca.pem"), "-CAkey", f("ca.key"), "-CAcreateserial", "-days", "2", "-extfile", f(ext), "-out", f(`${who}.pem`));
  }
  return { ca: f("ca.pem"), serverCert: f("server.pem"), serverKey: f("server.key"), clientCert: f("client.pem"), clientKey: f("client.key") };
}

describe("security - NATS over TLS with client certificates", () => {
  const stack = new Stack();
  let client: TestClient;
  let certs: ReturnType<typeof makeCertificates>;

  before(async () => {
    certs = makeCertificates(stack.dir);
    // The server requires TLS and a client certificate signed by the CA (mTLS).
    await stack.startNats(`tls {\n  cert_file: "${certs.serverCert}"\n  key_file: "${certs.serverKey}"\n  ca_file: "${certs.ca}"\n  verify: true\n  timeout: 5\n}\n`);
    const tls = ["--nats-tls-ca", certs.ca, "--nats-tls-cert", certs.clientCert, "--nats-tls-key", certs.clientKey];
    await stack.startCoordinator(tls);
    // The worker takes the same settings from the environment.
    await stack.startWorker("t1", ["--simulate", "--vram", "8GiB"], { SHOAL_NATS_TLS_CA: certs.ca, SHOAL_NATS_TLS_CERT: certs.clientCert, SHOAL_NATS_TLS_KEY: certs.clientKey });
    client = new TestClient(stack.grpcAddr);
    await client.waitForWorkers(1);
  });

  after(async () => {
    client?.close();
    await stack.stop();
  });

  test("security - coordinator and worker run a batch over TLS; a client without a certificate is refused", async () => {
    const batch = await client.run({ items: [0, 1, 2].map(() => ({ model: "sim-zero", params: { work_ms: 5 } })) }, 60_000);
    assert.equal(batch.state, BatchState.BATCH_STATE_COMPLETED, JSON.stringify(batch.results));
    assert.ok(batch.results.every((r) => r.workerId === "t1"));
    assert.ok(stack.coordinator!.logs.some((l) => l.msg === "connected to NATS" && String(l.tls).startsWith("tls with client certificate")));
    await assert.rejects(connect({ servers: stack.natsUrl, timeout: 5000, tls: { caFile: certs.ca } }));
    await assert.rejects(connect({ servers: stack.natsUrl, timeout: 5000 }));
  });

  test("security - a missing or half-given TLS setting is refused at start, naming the flag", async () => {
    const noKey = await stack.startWorker("t8", ["--nats-tls-cert", certs.clientCert]);
    assert.equal(await noKey.exited, 2);
    assert.ok(noKey.output.some((l) => /--nats-tls-key: is required with --nats-tls-cert/.test(l)), noKey.output.join("\n"));
    const noCa = await stack.startWorker("t9", ["--nats-tls-ca", join(stack.dir, "missing-ca.pem")]);
    assert.equal(await noCa.exited, 2);
    assert.ok(noCa.output.some((l) => /--nats-tls-ca: .*missing-ca\.pem does not exist/.test(l)), noCa.output.join("\n"));
  });
});
