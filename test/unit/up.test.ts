import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { findNatsServer } from "../../cli/up.js";

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
