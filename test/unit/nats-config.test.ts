import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  goDuration,
  natsServerConfig,
  natsServerVersion,
  parseFsyncInterval,
  parseFsyncMode,
  parseNatsServerVersion,
  versionAtLeast,
  SYNC_INTERVAL_SINCE,
} from "../../cli/nats-config.js";
import { upOptionsFrom } from "../../cli/up.js";
import { ConfigError } from "../../shared/errors.js";

const V2_9_10 = { major: 2, minor: 9, patch: 10 };
const V2_10_27 = { major: 2, minor: 10, patch: 27 };
const BIN = "/usr/sbin/nats-server";

test("nats-config - reads the version nats-server --version prints", () => {
  assert.deepEqual(parseNatsServerVersion("nats-server: v2.10.27\n"), V2_10_27);
  assert.deepEqual(parseNatsServerVersion("nats-server: v2.9.10"), V2_9_10);
  assert.deepEqual(parseNatsServerVersion("nats-server: v2.11.0-RC.1"), { major: 2, minor: 11, patch: 0 });
  assert.deepEqual(parseNatsServerVersion("2.12.3"), { major: 2, minor: 12, patch: 3 });
  assert.equal(parseNatsServerVersion("nats-server: version unknown"), undefined);
  assert.equal(parseNatsServerVersion(""), undefined);
});

test("nats-config - 2.10.0 is the first version with sync_interval; 2.9.x are older whatever their patch", () => {
  assert.equal(versionAtLeast({ major: 2, minor: 10, patch: 0 }, SYNC_INTERVAL_SINCE), true);
  assert.equal(versionAtLeast(V2_10_27, SYNC_INTERVAL_SINCE), true);
  assert.equal(versionAtLeast({ major: 2, minor: 11, patch: 0 }, SYNC_INTERVAL_SINCE), true);
  assert.equal(versionAtLeast({ major: 3, minor: 0, patch: 0 }, SYNC_INTERVAL_SINCE), true);
  assert.equal(versionAtLeast(V2_9_10, SYNC_INTERVAL_SINCE), false);
  assert.equal(versionAtLeast({ major: 2, minor: 9, patch: 99 }, SYNC_INTERVAL_SINCE), false);
  assert.equal(versionAtLeast({ major: 1, minor: 99, patch: 0 }, SYNC_INTERVAL_SINCE), false);
});

test("nats-config - --fsync always on 2.10 writes sync_interval: always in the jetstream block", () => {
  const c = natsServerConfig({ fsync: "always", fsyncIntervalMs: 120_000 }, V2_10_27, BIN);
  assert.equal(c.text, 'max_payload: 8MB\njetstream {\n  sync_interval: always\n}\n');
  assert.match(c.notes.join("\n"), /every write before acknowledging/);
  assert.equal(c.summary, "fsync on every write");
});

test("nats-config - --fsync interval on 2.10 writes the interval, in units Go's ParseDuration reads", () => {
  const c = natsServerConfig({ fsync: "interval", fsyncIntervalMs: 120_000 }, V2_10_27, BIN);
  assert.equal(c.text, 'max_payload: 8MB\njetstream {\n  sync_interval: "2m"\n}\n');
  assert.equal(c.summary, "fsync every 2m");
  assert.match(natsServerConfig({ fsync: "interval", fsyncIntervalMs: 1500 }, V2_10_27, BIN).text, /sync_interval: "1500ms"/);
  assert.deepEqual([3_600_000, 7_200_000, 90_000, 30_000, 250].map(goDuration), ["1h", "2h", "90s", "30s", "250ms"]);
});

test("nats-config - --fsync always on 2.9 is refused before anything starts, naming the version and the way out", () => {
  assert.throws(
    () => natsServerConfig({ fsync: "always", fsyncIntervalMs: 120_000 }, V2_9_10, BIN),
    (err: unknown) =>
      err instanceof ConfigError &&
      err.code === "CONFIG_INVALID" &&
      err.option === "--fsync" &&
      err.message.includes("v2.9.10") &&
      err.message.includes(BIN) &&
      err.message.includes("2.10.0") &&
      err.message.includes("scripts/setup.sh") &&
      err.message.includes("SHOAL_NATS_SERVER"),
  );
});

test("nats-config - --fsync interval on 2.9 leaves sync_interval out (2.9 rejects it) and says so", () => {
  const c = natsServerConfig({ fsync: "interval", fsyncIntervalMs: 30_000 }, V2_9_10, BIN);
  assert.equal(c.text, "max_payload: 8MB\n");
  assert.match(c.notes.join("\n"), /v2\.9\.10 predates sync_interval.*--fsync-interval is not applied/);
  assert.match(c.summary, /2\.9\.10's own schedule/);
});

test("nats-config - bad --fsync and --fsync-interval values name the flag and say what is accepted", () => {
  assert.equal(parseFsyncMode("always"), "always");
  assert.equal(parseFsyncMode(" Interval "), "interval");
  assert.throws(() => parseFsyncMode("sometimes"), /^ConfigError: --fsync: "sometimes" is not a mode; use always .* or interval/);
  assert.throws(() => parseFsyncMode(""), /--fsync: "" is not a mode/);
  assert.equal(parseFsyncInterval("2m"), 120_000);
  assert.equal(parseFsyncInterval("10ms"), 10);
  assert.equal(parseFsyncInterval("24h"), 86_400_000);
  assert.throws(() => parseFsyncInterval("0"), /--fsync-interval: "0" must be between 10ms and 24h/);
  assert.throws(() => parseFsyncInterval("9ms"), /--fsync-interval: "9ms" must be between/);
  assert.throws(() => parseFsyncInterval("25h"), /--fsync-interval: "25h" must be between/);
  assert.throws(() => parseFsyncInterval("soon"), /--fsync-interval: "soon" is not a duration/);
});

const RAW = { workers: "2", grpcPort: "50051", metricsPort: "9464", dataDir: ".shoal", natsPort: "4222", natsMonitorPort: "0", fsync: "interval", fsyncInterval: "2m" };
const PASS = { worker: [], coordinator: [], common: [] };

test("nats-config - shoal up's options: defaults, --fsync always, and always refused with someone else's server (--nats)", () => {
  const d = upOptionsFrom(RAW, PASS);
  assert.deepEqual(d.storage, { fsync: "interval", fsyncIntervalMs: 120_000 });
  assert.equal(d.natsUrl, undefined);
  assert.equal(d.natsMonitorPort, 0);
  assert.deepEqual(upOptionsFrom({ ...RAW, fsync: "always" }, PASS).storage.fsync, "always");
  assert.equal(upOptionsFrom({ ...RAW, nats: "nats://10.0.0.5:4222" }, PASS).natsUrl, "nats://10.0.0.5:4222");
  assert.throws(() => upOptionsFrom({ ...RAW, nats: "nats://10.0.0.5:4222", fsync: "always" }, PASS), /--fsync: applies to the nats-server that shoal up starts; with --nats, set `jetstream \{ sync_interval: always \}`/);
  assert.throws(() => upOptionsFrom({ ...RAW, natsMonitorPort: "70000" }, PASS), /--nats-monitor-port/);
});

test("nats-config - runs <bin> --version; a binary that prints no version is a ConfigError", () => {
  const dir = mkdtempSync(join(tmpdir(), "shoal-natsver-"));
  try {
    const good = join(dir, "good");
    writeFileSync(good, '#!/bin/sh\necho "nats-server: v2.10.27"\n');
    const mute = join(dir, "mute");
    writeFileSync(mute, "#!/bin/sh\nexit 0\n");
    const broken = join(dir, "broken");
    writeFileSync(broken, "#!/bin/sh\nexit 3\n");
    for (const f of [good, mute, broken]) chmodSync(f, 0o755);
    assert.deepEqual(natsServerVersion(good), V2_10_27);
    assert.throws(() => natsServerVersion(mute), (e: unknown) => e instanceof ConfigError && /printed no version/.test(e.message));
    assert.throws(() => natsServerVersion(broken), (e: unknown) => e instanceof ConfigError && /--version failed/.test(e.message));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
