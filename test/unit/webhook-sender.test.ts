// WebhookSender against a fake KV (unit: the bucket is a Map) and a real local HTTP receiver:
// the concurrency cap holds, the attempt count is stored before each attempt, and the pending
// delivery (with its secret) is deleted once delivered.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { KV } from "@nats-io/kv";
import { BatchState, type Batch } from "../../proto/gen/shoal/v1/shoal.js";
import { createLogger } from "../../shared/logger.js";
import { WebhookSender } from "../../coordinator/webhooks.js";
import { waitFor } from "../harness/batch-checks.js";

/** The few KV calls WebhookSender makes, over a Map; every put is recorded. */
function fakeKv() {
  const data = new Map<string, string>();
  const puts: { key: string; value: string }[] = [];
  const kv = {
    put: async (key: string, value: string) => {
      data.set(key, value);
      puts.push({ key, value });
      return puts.length;
    },
    get: async (key: string) => (data.has(key) ? { operation: "PUT", string: () => data.get(key)! } : null),
    delete: async (key: string) => void data.delete(key),
    keys: async () => (async function* () {
      yield* [...data.keys()];
    })(),
  };
  return { kv: kv as unknown as KV, data, puts };
}

const batch = (id: string): Batch => ({
  id, state: BatchState.BATCH_STATE_COMPLETED, total: 0, succeeded: 0, failed: 0, cancelled: 0, results: [], createdAt: new Date(), completedAt: new Date(), labels: {},
} as unknown as Batch);

test("webhook sender - at most --webhook-concurrency deliveries at once; counts stored; delivered ones deleted", async () => {
  let open = 0;
  let most = 0;
  let calls = 0;
  const server = createServer((req, res) => {
    req.resume();
    open++;
    calls++;
    most = Math.max(most, open);
    const first = calls === 1;
    setTimeout(() => {
      open--;
      res.writeHead(first ? 500 : 204).end();
    }, 150);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}/hook`;
  const { kv, data, puts } = fakeKv();
  const log = createLogger({ level: "silent", format: "json", component: "test" });
  const sender = new WebhookSender(kv, async (id) => batch(id), { retryDelaysMs: [50], timeoutMs: 5000, allowPrivate: true, concurrency: 2 }, log);
  try {
    for (let i = 0; i < 6; i++) sender.send(await sender.record(`b${i}`, { url, events: [], secret: "" }));
    await waitFor("every delivery", () => data.size === 0, 20_000);
    assert.equal(calls, 7, "six deliveries, one of them retried once");
    assert.ok(most <= 2, `at most 2 at once (saw ${most})`);
    assert.equal(most, 2, "the cap is reached, not undershot");
    // Before each attempt its number is stored: 1 for every delivery, and 2 for the retried one.
    const counts = puts.map((p) => (JSON.parse(p.value) as { attempts: number }).attempts);
    assert.equal(counts.filter((c) => c === 1).length, 6);
    assert.equal(counts.filter((c) => c === 2).length, 1);
  } finally {
    sender.close();
    server.close();
  }
});
