import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { ApiKeyTable, sha256 } from "../../coordinator/api-keys.js";
import { ConfigError } from "../../shared/errors.js";

const file = (doc: unknown) => ({ path: "keys.json", text: JSON.stringify(doc) });
const refused = (fn: () => unknown, option: string, pattern: RegExp) =>
  assert.throws(fn, (e) => e instanceof ConfigError && e.option === option && pattern.test(e.message), `expected ${option} ~ ${pattern}`);

describe("api keys", () => {
  test("api keys - --api-keys entries map keys to tenants; unknown keys and near misses find nobody", () => {
    const t = ApiKeyTable.from({ list: "alice:alice-key-123, bob:bob-key-4567" });
    assert.equal(t.size, 2);
    assert.deepEqual(t.lookup("alice-key-123"), { tenant: "alice", role: "tenant", limits: {} });
    assert.equal(t.lookup("bob-key-4567")?.tenant, "bob");
    for (const k of ["", "alice-key-12", "alice-key-1234", "ALICE-KEY-123", "bob-key-4567 "]) assert.equal(t.lookup(k), undefined, k);
    assert.equal(ApiKeyTable.from({ list: "" }).size, 0);
    assert.equal(ApiKeyTable.from({}).lookup("anything"), undefined);
  });

  test("api keys - only digests are kept: the table holds no key text", () => {
    const t = ApiKeyTable.from({ list: "alice:very-secret-key-1" });
    const dump = JSON.stringify(t, (_k, v: unknown) => (Buffer.isBuffer(v) ? v.toString("latin1") : v)) + String(Object.values(t));
    assert.ok(!dump.includes("very-secret-key-1"));
  });

  test("api keys - empty and duplicate keys are refused with the entry named", () => {
    refused(() => ApiKeyTable.from({ list: "alice:" }), "--api-keys", /entry 1 \(tenant "alice"\) has an empty key/);
    refused(() => ApiKeyTable.from({ list: "alice:short" }), "--api-keys", /at least 8 characters/);
    refused(() => ApiKeyTable.from({ list: "alice:key-aaaa-1,,bob:key-bbbb-2" }), "--api-keys", /entry 2 is empty/);
    refused(() => ApiKeyTable.from({ list: "alice:same-key-99,bob:same-key-99" }), "--api-keys", /--api-keys entry 2: duplicate key \(the same key as --api-keys entry 1\)/);
    refused(() => ApiKeyTable.from({ list: "al ice:key-aaaa-1" }), "--api-keys", /tenant name "al ice"/);
    // The same key in the file and in the list, also when the file gives its digest.
    refused(
      () => ApiKeyTable.from({ list: "bob:shared-key-1", file: file({ tenants: [{ name: "alice", key_sha256s: [sha256("shared-key-1").toString("hex")] }] }) }),
      "--api-keys",
      /duplicate key \(the same key as keys.json tenants\[0\].key_sha256s\[0\]\)/,
    );
    refused(() => ApiKeyTable.from({ file: file({ tenants: [{ name: "a", keys: ["k-123456789", "k-123456789"] }] }) }), "--api-keys-file", /tenants\[0\].keys\[1\]: duplicate key/);
  });

  test("api keys - the keys file: roles, digests, limits", () => {
    const t = ApiKeyTable.from({
      file: file({
        tenants: [
          { name: "alice", keys: ["alice-key-1", "alice-key-2"], role: "tenant", limits: { max_items_per_batch: 10, items_per_day: 1000, max_queued_items: 50 } },
          { name: "ops", key_sha256s: [sha256("ops-key-123").toString("hex").toUpperCase()], role: "operator" },
        ],
      }),
      list: "carol:carol-key-1",
    });
    assert.deepEqual(t.lookup("alice-key-2"), { tenant: "alice", role: "tenant", limits: { maxItemsPerBatch: 10, itemsPerDay: 1000, maxQueuedItems: 50 } });
    assert.deepEqual(t.lookup("ops-key-123"), { tenant: "ops", role: "operator", limits: {} });
    assert.equal(t.lookup("carol-key-1")?.role, "tenant");
    assert.deepEqual(t.tenants.sort(), ["alice", "carol", "ops"]);
  });

  test("api keys - a bad keys file is refused with the path into it", () => {
    const f = (doc: unknown) => () => ApiKeyTable.from({ file: file(doc) });
    refused(() => ApiKeyTable.from({ file: { path: "k.json", text: "{nope" } }), "--api-keys-file", /k.json: not valid JSON/);
    refused(f([]), "--api-keys-file", /must be a JSON object/);
    refused(f({ tenant: [] }), "--api-keys-file", /unknown field "tenant"/);
    refused(f({ tenants: [{ name: "a", keys: ["k-123456789"], role: "admin" }] }), "--api-keys-file", /tenants\[0\].role: must be "tenant" or "operator" \(got "admin"\)/);
    refused(f({ tenants: [{ name: "a" }] }), "--api-keys-file", /tenants\[0\]: give exactly one of "keys" or "key_sha256s"/);
    refused(f({ tenants: [{ name: "a", keys: ["k-123456789"], key_sha256s: ["00"] }] }), "--api-keys-file", /exactly one/);
    refused(f({ tenants: [{ name: "a", keys: [] }] }), "--api-keys-file", /tenants\[0\].keys: must be a non-empty array/);
    refused(f({ tenants: [{ name: "a", keys: [""] }] }), "--api-keys-file", /tenants\[0\].keys\[0\]: must be a non-empty string/);
    refused(f({ tenants: [{ name: "a", key_sha256s: ["abc"] }] }), "--api-keys-file", /key_sha256s\[0\]: must be 64 hex digits/);
    refused(f({ tenants: [{ name: "a", keys: ["k-123456789"], limits: { max_items_per_batch: 0 } }] }), "--api-keys-file", /limits.max_items_per_batch: must be a whole number of at least 1 \(got 0\)/);
    refused(f({ tenants: [{ name: "a", keys: ["k-123456789"], limits: { max_item_per_batch: 5 } }] }), "--api-keys-file", /limits: unknown field "max_item_per_batch"/);
    refused(f({ tenants: [{ name: "a", keys: ["k-123456789"], limits: { items_per_day: 1.5 } }] }), "--api-keys-file", /items_per_day: must be a whole number/);
    refused(f({ tenants: [{ name: "a", keys: ["k-123456789"] }, { name: "a", keys: ["k-987654321"] }] }), "--api-keys-file", /tenants\[1\].name: tenant "a" is defined twice/);
    refused(f({ tenants: [{ name: "", keys: ["k-123456789"] }] }), "--api-keys-file", /tenants\[0\].name: must be 1..64/);
    refused(() => ApiKeyTable.from({ file: file({ tenants: [{ name: "a", keys: ["k-123456789"] }] }), list: "a:k-987654321" }), "--api-keys", /tenant "a" is also defined in --api-keys-file/);
  });
});
