// Webhooks without SSRF, with real processes: a coordinator without --webhook-allow-private
// refuses, at submit, webhooks whose host is or resolves to a loopback, private, link-local or
// metadata address (in every IPv6 spelling), and URLs or secrets that are too long. With the
// flag (the receivers here are local), a redirect is not followed, the attempt count survives a
// kill -9 of the coordinator, and the secret is gone from storage once the delivery is done.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { createServer, type RequestListener, type Server } from "node:http";
import { status } from "@grpc/grpc-js";
import { connect } from "@nats-io/transport-node";
import { Kvm } from "@nats-io/kv";
import { BatchRecord } from "../../proto/gen/shoal/v1/wire.js";
import { CLI, Stack, freePort } from "../harness/processes.js";
import { TestClient, grpcCode } from "../harness/client.js";
import { pollUntilTerminal, waitFor } from "../harness/batch-checks.js";

const KEY = "alice-key-123";
const SECRET = "whsec_" + Buffer.from("0123456789abcdef0123456789abcdef").toString("base64");
const COORDINATOR_ARGS = ["--api-keys", `alice:${KEY}`, "--webhook-allow-private", "--webhook-retries", "300ms,300ms"];

function listen(handler: RequestListener): Promise<{ server: Server; url: string }> {
  const server = createServer(handler);
  return new Promise((r) => server.listen(0, "127.0.0.1", () => r({ server, url: `http://127.0.0.1:${(server.address() as { port: number }).port}` })));
}

describe("security - webhooks without SSRF", () => {
  const stack = new Stack();
  let client: TestClient;
  let strict: ChildProcess | undefined;
  let strictClient: TestClient;
  const servers: Server[] = [];

  before(async () => {
    await stack.startNats();
    await stack.startCoordinator(COORDINATOR_ARGS);
    await stack.startWorker("w1", ["--simulate", "--vram", "40GB"]);
    client = new TestClient(stack.grpcAddr, KEY);
    await client.waitForWorkers(1);
    // A second coordinator (its own prefix) with the default: no private targets.
    const port = await freePort();
    strict = spawn(process.execPath, [CLI, "coordinator", "--nats", stack.natsUrl, "--prefix", "strict", "--grpc-host", "127.0.0.1", "--grpc-port", String(port), "--metrics-port", "0", "--api-keys", `alice:${KEY}`, "--log-format", "json"], { stdio: ["ignore", "ignore", "pipe"] });
    strictClient = new TestClient(`127.0.0.1:${port}`, KEY);
    await waitFor("the strict coordinator", () => strictClient.list().then(() => true, () => false), 30_000);
  });

  after(async () => {
    client?.close();
    strictClient?.close();
    strict?.kill("SIGKILL");
    for (const s of servers) s.close();
    await stack.stop();
  });

  test("security webhooks - internal targets are refused at submit with INVALID_ARGUMENT on webhook.url", async () => {
    const targets: [string, RegExp][] = [
      ["http://127.0.0.1:9/hook", /127\.0\.0\.1 is a loopback address/],
      ["http://localhost:9/hook", /is a loopback address \(host "localhost" resolves to it\)/],
      ["http://169.254.169.254/latest/meta-data/", /169\.254\.169\.254 is a cloud metadata service address/],
      ["http://[::ffff:127.0.0.1]:9/", /is a loopback address/],
      ["http://[::1]:9/", /::1 is a loopback address/],
      ["https://10.0.0.8/hook", /10\.0\.0\.8 is a private-network address/],
      ["http://[fe80::1]/", /is a link-local address/],
      ["http://0.0.0.0:9/", /is an unspecified address/],
      ["http://224.0.0.1/", /is a multicast address/],
      ["http://2130706433/", /127\.0\.0\.1 is a loopback address/], // a decimal IPv4 URL, which URL parsing turns into 127.0.0.1
    ];
    for (const [url, why] of targets) {
      await assert.rejects(strictClient.submit({ items: [{ model: "imagegen-tiny", params: { prompt: "p" } }], webhook: { url, events: [], secret: "" } }), (e) => {
        const err = e as { fieldProblems: string[] };
        return grpcCode(e) === status.INVALID_ARGUMENT && err.fieldProblems.some((p) => p.startsWith("webhook.url: ") && why.test(p) && /--webhook-allow-private/.test(p));
      }, url);
    }
    // Sizes are checked before anything else, with the field named.
    await assert.rejects(
      strictClient.submit({ items: [{ model: "imagegen-tiny", params: { prompt: "p" } }], webhook: { url: `https://example.com/${"a".repeat(2100)}`, events: [], secret: "" } }),
      (e) => grpcCode(e) === status.INVALID_ARGUMENT && /webhook\.url: must be at most 2048 bytes/.test(String(e)),
    );
    await assert.rejects(
      strictClient.submit({ items: [{ model: "imagegen-tiny", params: { prompt: "p" } }], webhook: { url: "https://8.8.8.8/hook", events: [], secret: "whsec_" + "A".repeat(300) } }),
      (e) => grpcCode(e) === status.INVALID_ARGUMENT && /webhook\.secret: must be at most 256 characters/.test(String(e)),
    );
    // Other problems of the batch are listed with the webhook's.
    await assert.rejects(
      strictClient.submit({ items: [{ model: "no-such-model", params: {} }], webhook: { url: "http://127.0.0.1:9/", events: [], secret: "" } }),
      (e) => {
        const problems = (e as { fieldProblems: string[] }).fieldProblems;
        return problems.some((p) => p.startsWith("items[0].model")) && problems.some((p) => p.startsWith("webhook.url: 127.0.0.1 is a loopback address"));
      },
    );
    // A public literal address passes the check (nothing is sent until the batch ends).
    const ok = await strictClient.submit({ items: [{ model: "imagegen-tiny", params: { prompt: "p" } }], webhook: { url: "https://8.8.8.8/hook", events: [], secret: SECRET } });
    assert.match(ok.batchId, /^b_/);
    await strictClient.cancel(ok.batchId);
  });

  test("security webhooks - a redirect is not followed", async () => {
    let targetHits = 0;
    let redirects = 0;
    const target = await listen((_req, res) => {
      targetHits++;
      res.writeHead(204).end();
    });
    const redirector = await listen((req, res) => {
      req.resume();
      redirects++;
      res.writeHead(307, { location: `${target.url}/stolen` }).end();
    });
    servers.push(target.server, redirector.server);
    const { batchId } = await client.submit({ items: [{ model: "sim-zero", params: {} }], webhook: { url: `${redirector.url}/hook`, events: [], secret: SECRET } });
    await pollUntilTerminal(client, batchId);
    const giveUp = () => stack.coordinator!.logs.find((l) => l.batchId === batchId && l.msg === "webhook not delivered; giving up");
    await waitFor("the delivery to give up", () => giveUp() !== undefined, 30_000);
    assert.match(String(giveUp()!.err), /HTTP 307; redirects are not followed/);
    assert.equal(redirects, 3, "the first attempt and two retries");
    assert.equal(targetHits, 0, "the redirect target was never called");
  });

  test("security webhooks - the attempt count survives a kill -9; the secret is gone from storage once the delivery is done", async () => {
    let calls = 0;
    const receiver = await listen((req, res) => {
      req.resume();
      calls++;
      res.writeHead(calls === 1 ? 503 : 204).end();
    });
    servers.push(receiver.server);
    // Slow retries so the coordinator can be killed between attempt 1 and attempt 2.
    await stack.kill(stack.coordinator!);
    await stack.startCoordinator(["--api-keys", `alice:${KEY}`, "--webhook-allow-private", "--webhook-retries", "20s,300ms"]);
    await client.waitForWorkers(1);
    // By host name, so the delivery goes through the pinned lookup (an IP literal needs none).
    const byName = receiver.url.replace("127.0.0.1", "localhost");
    const { batchId } = await client.submit({ items: [{ model: "sim-zero", params: {} }], webhook: { url: `${byName}/hook`, events: [], secret: SECRET } });
    await waitFor("the first attempt", () => calls === 1, 30_000);
    await waitFor("the retry to be scheduled", () => stack.coordinator!.logs.some((l) => l.batchId === batchId && l.msg === "webhook not delivered; will retry"), 10_000);
    await stack.kill(stack.coordinator!);
    await stack.startCoordinator(COORDINATOR_ARGS);
    await waitFor("the delivery after the restart", () => stack.coordinator!.logs.some((l) => l.batchId === batchId && l.msg === "webhook delivered; its secret is deleted"), 30_000);
    const delivered = stack.coordinator!.logs.find((l) => l.batchId === batchId && l.msg === "webhook delivered; its secret is deleted")!;
    assert.equal(delivered.attempt, 2, "the restarted coordinator went on counting from the stored attempt");
    assert.equal(calls, 2);

    const nc = await connect({ servers: stack.natsUrl, timeout: 10_000 });
    try {
      const kvm = new Kvm(nc);
      const pending = await (await kvm.open("shoal-webhooks")).get(batchId);
      assert.ok(!pending || pending.operation !== "PUT", "the pending delivery (and its secret) is deleted");
      const stored = await (await kvm.open("shoal-batches")).get(batchId);
      const record = BatchRecord.decode(stored!.value);
      assert.equal(record.webhook?.url, `${byName}/hook`);
      assert.equal(record.webhook?.secret, "(removed)");
      assert.ok(!Buffer.from(stored!.value).toString("latin1").includes(SECRET.slice(6)), "no trace of the secret in the record");
    } finally {
      await nc.close();
    }
  });
});
