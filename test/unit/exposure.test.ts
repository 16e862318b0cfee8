import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { isLoopbackHost, warnIfExposed } from "../../shared/exposure.js";
import { listenAddress } from "../../cli/up.js";
import { createLogger } from "../../shared/logger.js";

describe("exposure", () => {
  test("exposure - loopback hosts are told apart from everything else", () => {
    for (const h of ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST", "api.localhost", "::ffff:127.0.0.1"]) assert.equal(isLoopbackHost(h), true, h);
    for (const h of ["0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "example.com", "", "128.0.0.1"]) assert.equal(isLoopbackHost(h), false, h);
  });

  test("exposure - the INSECURE warning names each missing protection, and only beyond loopback", () => {
    const log = createLogger({ level: "silent", format: "json", component: "test" });
    const missing = [{ condition: true, why: "with no API keys" }, { condition: false, why: "without TLS" }];
    assert.deepEqual(warnIfExposed(log, "the gRPC API", "0.0.0.0", missing), ["with no API keys"]);
    assert.deepEqual(warnIfExposed(log, "the gRPC API", "127.0.0.1", missing), []);
  });

  test("exposure - shoal up shows the address listened on and connects through loopback for a wildcard", () => {
    assert.deepEqual(listenAddress("127.0.0.1", 50051), { shown: "127.0.0.1:50051", connect: "127.0.0.1:50051", connectHost: "127.0.0.1" });
    assert.deepEqual(listenAddress("0.0.0.0", 50051), { shown: "0.0.0.0:50051 (every interface)", connect: "127.0.0.1:50051", connectHost: "127.0.0.1" });
    assert.deepEqual(listenAddress("::", 7), { shown: "[::]:7 (every interface)", connect: "127.0.0.1:7", connectHost: "127.0.0.1" });
    assert.deepEqual(listenAddress("10.0.0.5", 7), { shown: "10.0.0.5:7", connect: "10.0.0.5:7", connectHost: "10.0.0.5" });
  });
});
