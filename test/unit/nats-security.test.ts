import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fleetIdentities, natsAuthorizationConfig, workerPermissions } from "../../cli/nats-auth.js";
import { natsConnectSecurity, natsSecurityFrom } from "../../shared/nats-security.js";

function withDir(fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), "shoal-natssec-"));
  try {
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test("nats security - one way to authenticate, files that exist, TLS cert with key", () => {
  withDir((dir) => {
    const file = join(dir, "x");
    writeFileSync(file, "x");
    assert.deepEqual(natsSecurityFrom({}), { credsFile: undefined, nkeyFile: undefined, user: undefined, password: undefined, token: undefined, tlsCaFile: undefined, tlsCertFile: undefined, tlsKeyFile: undefined });
    assert.throws(() => natsSecurityFrom({ natsCreds: file, natsToken: "t" }), /^ConfigError: --nats-token: conflicts with --nats-creds/);
    assert.throws(() => natsSecurityFrom({ natsUser: "u", natsPassword: "p", natsNkey: file }), /--nats-user: conflicts with --nats-nkey/);
    assert.throws(() => natsSecurityFrom({ natsUser: "u" }), /--nats-password: is required with --nats-user/);
    assert.throws(() => natsSecurityFrom({ natsPassword: "p" }), /--nats-user: is required with --nats-password/);
    assert.throws(() => natsSecurityFrom({ natsCreds: join(dir, "none.creds") }), /--nats-creds: .*none\.creds does not exist/);
    assert.throws(() => natsSecurityFrom({ natsNkey: file }), /--nats-nkey: .* does not hold a user nkey seed/);
    assert.throws(() => natsSecurityFrom({ natsTlsCert: file }), /--nats-tls-key: is required/);
    assert.throws(() => natsSecurityFrom({ natsTlsKey: file }), /--nats-tls-cert: is required/);
    assert.throws(() => natsSecurityFrom({ natsTlsCa: join(dir, "ca.pem") }), /--nats-tls-ca: .* does not exist/);
    // Empty values (a child whose parent cleared them) count as not given.
    assert.equal(natsSecurityFrom({ natsToken: "", natsUser: "u", natsPassword: "p" }).user, "u");
    const seed = join(dir, "seed");
    writeFileSync(seed, `SU${"A".repeat(56)}\n`);
    assert.equal(natsSecurityFrom({ natsNkey: seed }).nkeyFile, seed);
  });
});

test("nats security - connect options carry the identity and TLS files", () => {
  assert.deepEqual(natsConnectSecurity({ user: "u", password: "p" }), { user: "u", pass: "p" });
  assert.deepEqual(natsConnectSecurity({ token: "t" }), { token: "t" });
  assert.deepEqual(natsConnectSecurity({ tlsCaFile: "/ca", tlsCertFile: "/c", tlsKeyFile: "/k" }), { tls: { caFile: "/ca", certFile: "/c", keyFile: "/k" } });
  assert.equal(typeof natsConnectSecurity({ credsFile: "/x" }).authenticator, "function");
});

test("nats auth - a worker may publish only its heartbeats, outcomes, artifacts and models, and hear only its own subjects", () => {
  const p = workerPermissions("fleet", "w7");
  assert.deepEqual(p.publish, ["fleet.hb.w7", "fleet.results.*", "$O.fleet-artifacts.C.*", "$O.fleet-artifacts.M.*", "$KV.fleet-models.*"]);
  assert.deepEqual(p.subscribe, ["fleet.worker.w7.assign", "fleet.worker.w7.cancel", "fleet.worker.w7.drain", "fleet.worker.w7.evict", "fleet.coordinator.hello", "_INBOX_w7.>"]);
  assert.ok(!p.publish.some((s) => s.startsWith("$JS.API")), "no JetStream API: a worker reads, lists and purges nothing");
});

test("nats auth - identities are made once, kept 0600, and extended for new workers", () => {
  withDir((dir) => {
    const a = fleetIdentities(dir, ["w1", "w2"]);
    assert.equal(statSync(join(dir, "nats-identities.json")).mode & 0o777, 0o600);
    const b = fleetIdentities(dir, ["w1", "w2", "w3"]);
    assert.equal(b.coordinator.password, a.coordinator.password);
    assert.equal(b.workers.w1!.password, a.workers.w1!.password);
    assert.ok(b.workers.w3!.password.length >= 32);
    const conf = natsAuthorizationConfig("shoal", b);
    assert.match(conf, /^authorization \{\n  users = \[/);
    assert.equal(conf.match(/user: /g)?.length, 4);
    assert.match(conf, /user: "w3", password: "[0-9a-f]{48}"/);
    assert.match(conf, /allow_responses: true/);
  });
});
