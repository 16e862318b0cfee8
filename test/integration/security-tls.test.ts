// TLS and mTLS on the client API with real processes: a coordinator with --tls-cert, --tls-key
// and --tls-client-ca (certificates made with openssl at test time), and clients (SDK, CLI,
// gateway) with and without the right CA and client certificate.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { status } from "@grpc/grpc-js";
import { BatchState } from "../../proto/gen/shoal/v1/shoal.js";
import type { ClientTls } from "../../cli/client-tls.js";
import { makeTestCerts, type TestCerts } from "../harness/certs.js";
import { Stack } from "../harness/processes.js";
import { TestClient, grpcCode } from "../harness/client.js";

const KEY = "alice-key-123";

describe("security - TLS on the client API", () => {
  const stack = new Stack();
  let certs: TestCerts;
  let good: TestClient;
  const pem = (path: string) => readFileSync(path);

  before(async () => {
    certs = makeTestCerts(stack.dir);
    await stack.startNats();
    await stack.startCoordinator(["--api-keys", `alice:${KEY}`, "--tls-cert", certs.serverCert, "--tls-key", certs.serverKey, "--tls-client-ca", certs.ca]);
    await stack.startWorker("w1", ["--simulate", "--vram", "40GB"]);
    good = new TestClient(stack.grpcAddr, KEY, { tls: { ca: pem(certs.ca), cert: pem(certs.clientCert), key: pem(certs.clientKey) } });
    await good.waitForWorkers(1);
  });

  after(async () => {
    good?.close();
    await stack.stop();
  });

  test("security tls - a client with the CA and a client certificate completes a batch", async () => {
    const batch = await good.run({ items: [{ model: "sim-zero", params: { tag: "a" } }, { model: "sim-zero", params: { tag: "b" } }] });
    assert.equal(batch.state, BatchState.BATCH_STATE_COMPLETED);
    assert.equal(batch.results.length, 2);
  });

  test("security tls - plaintext, a wrong CA, no client certificate and another CA's client certificate are refused", async () => {
    const cases: [string, ClientTls | null][] = [
      ["plaintext", null],
      ["server checked against another CA", { ca: pem(certs.otherCa), cert: pem(certs.clientCert), key: pem(certs.clientKey) }],
      ["mTLS without a client certificate", { ca: pem(certs.ca) }],
      ["client certificate of another CA", { ca: pem(certs.ca), cert: pem(certs.otherClientCert), key: pem(certs.otherClientKey) }],
    ];
    for (const [what, tls] of cases) {
      const c = new TestClient(stack.grpcAddr, KEY, { tls, unaryTimeoutMs: 10_000 });
      try {
        await assert.rejects(c.submit({ items: [{ model: "sim-zero", params: { tag: what } }] }), (e) => grpcCode(e) === status.UNAVAILABLE, what);
      } finally {
        c.close();
      }
    }
    // Nothing any of them sent became a batch.
    const { batches } = await good.list();
    assert.equal(batches.length, 1, "only the good client's batch");
  });

  test("security tls - the CLI takes --ca/--cert/--key and SHOAL_CA/SHOAL_CERT/SHOAL_KEY; without them it is refused", async () => {
    const withEnv = await stack.cli(["list"], { SHOAL_API_KEY: KEY, SHOAL_CA: certs.ca, SHOAL_CERT: certs.clientCert, SHOAL_KEY: certs.clientKey });
    assert.equal(withEnv.code, 0, withEnv.stderr);
    const withFlags = await stack.cli(["--ca", certs.ca, "--cert", certs.clientCert, "--key", certs.clientKey, "workers"], { SHOAL_API_KEY: KEY });
    assert.equal(withFlags.code, 0, withFlags.stderr);
    assert.match(withFlags.stdout, /w1/);
    const plain = await stack.cli(["list"], { SHOAL_API_KEY: KEY }, 60_000);
    assert.notEqual(plain.code, 0);
    assert.match(plain.stderr, /cannot reach the Shoal coordinator/);
    const halfPair = await stack.cli(["--ca", certs.ca, "--cert", certs.clientCert, "list"], { SHOAL_API_KEY: KEY });
    assert.equal(halfPair.code, 2);
    assert.match(halfPair.stderr, /--key: --cert \(SHOAL_CERT\) was given without its private key/);
  });

  test("security tls - the gateway reaches the coordinator over mTLS with SHOAL_CA/SHOAL_CERT/SHOAL_KEY", async () => {
    const { url } = await stack.startGateway([], { SHOAL_CA: certs.ca, SHOAL_CERT: certs.clientCert, SHOAL_KEY: certs.clientKey });
    const res = await fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${KEY}` }, signal: AbortSignal.timeout(30_000) });
    assert.equal(res.status, 200, await res.clone().text());
    assert.ok(((await res.json()) as { models: { name: string }[] }).models.some((m) => m.name === "sim-zero"));
    const { url: plainUrl } = await stack.startGateway(["--rpc-timeout", "5s"], { SHOAL_CA: "", SHOAL_CERT: "", SHOAL_KEY: "" });
    const refused = await fetch(`${plainUrl}/v1/models`, { headers: { authorization: `Bearer ${KEY}` }, signal: AbortSignal.timeout(30_000) });
    assert.equal(refused.status, 503);
  });

  test("security tls - half a server TLS configuration is refused at start, naming the flag", async () => {
    const r = await stack.cli(["coordinator", "--nats", stack.natsUrl, "--grpc-port", "0", "--tls-cert", certs.serverCert], {}, 30_000);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--tls-key: --tls-cert was given without its private key/);
    const ca = await stack.cli(["coordinator", "--nats", stack.natsUrl, "--grpc-port", "0", "--tls-client-ca", certs.ca], {}, 30_000);
    assert.equal(ca.code, 2);
    assert.match(ca.stderr, /--tls-client-ca: needs --tls-cert and --tls-key/);
  });
});
