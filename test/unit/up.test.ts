import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { findNatsServer } from "../../cli/up.js";
import { upBanner } from "../../cli/up-banner.js";

test("shoal up - finds nats-server in SHOAL_NATS_SERVER, then PATH", () => {
  const dir = mkdtempSync(join(tmpdir(), "shoal-find-"));
  try {
    const bin = join(dir, "nats-server");
    writeFileSync(bin, "#!/bin/sh\n");
    chmodSync(bin, 0o755);
    assert.equal(findNatsServer({ PATH: dir }, []), bin);
    assert.equal(findNatsServer({ PATH: "/nowhere", SHOAL_NATS_SERVER: bin }, []), bin);
    assert.throws(() => findNatsServer({ SHOAL_NATS_SERVER: join(dir, "missing") }, []), /SHOAL_NATS_SERVER: .* does not exist/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("shoal up - without nats-server anywhere, the message says how to install it", () => {
  assert.throws(() => findNatsServer({ PATH: "/nowhere" }, []), /apt-get install nats-server.*SHOAL_NATS_SERVER.*--nats/s);
});

test("shoal up - the banner lists each /metrics address, or says metrics are off with --metrics-port 0", () => {
  const facts = { grpcListen: "127.0.0.1:50051", grpcAddr: "127.0.0.1:50051", httpUrl: "http://127.0.0.1:8080", natsUrl: "nats://127.0.0.1:4222", dataDir: "/d", durability: "fsync every 2m" };
  const on = upBanner({ ...facts, metricsPort: 9464, workerMetricsPorts: [9465, 9466] });
  assert.match(on, /Shoal is up:/);
  assert.match(on, /http:\/\/127\.0\.0\.1:9464\/metrics \(coordinator\)/);
  assert.match(on, /http:\/\/127\.0\.0\.1:9466\/metrics \(worker w2\)/);
  const off = upBanner({ ...facts, metricsPort: 0, workerMetricsPorts: [0, 0] });
  assert.match(off, /metrics\s+off \(--metrics-port 0\)/);
  assert.doesNotMatch(off, /:0\/metrics/);
});
