import { test } from "node:test";
import assert from "node:assert/strict";
import type { Msg, NatsConnection } from "@nats-io/transport-node";
import { ItemStatus } from "../../proto/gen/shoal/v1/shoal.js";
import { ResultLogEntry, type ItemOutcome } from "../../proto/gen/shoal/v1/wire.js";
import { JetStreamPublisher } from "../../shared/jetstream-publisher.js";
import type { Logger } from "../../shared/logger.js";
import { Names } from "../../shared/subjects.js";
import { ResultPublisher } from "../../worker/result-publisher.js";

// Unit tests with a fake NATS connection under the real JetStreamPublisher: the test plays the
// server, answering (or not) each results message as JetStream would.

interface Sent {
  subject: string;
  reply: string;
  data: Uint8Array;
}

function fakeConnection(opts: { maxPayload?: number } = {}) {
  let deliver: ((err: Error | null, msg: Msg) => void) | undefined;
  const sent: Sent[] = [];
  const nc = {
    subscribe(_s: string, o: { callback: (err: Error | null, msg: Msg) => void }) {
      deliver = o.callback;
      return { unsubscribe: () => (deliver = undefined) };
    },
    publish(subject: string, data: Uint8Array, o: { reply: string }) {
      // nats.js refuses a message over the server's max_payload before sending it.
      if (opts.maxPayload !== undefined && data.length > opts.maxPayload) throw Object.assign(new Error(`message size exceeds max_payload`), { name: "InvalidArgumentError" });
      sent.push({ subject, reply: o.reply, data });
    },
  } as unknown as NatsConnection;
  const answer = (s: Sent, body: object) => deliver!(null, { subject: s.reply, data: new TextEncoder().encode(JSON.stringify(body)), headers: undefined } as unknown as Msg);
  const ack = (s: Sent, seq: number) => answer(s, { stream: "SHOAL_RESULTS", seq });
  return { nc, sent, answer, ack };
}

/** A logger that keeps what was logged (unit test). */
function recordingLogger() {
  const lines: { level: string; obj: Record<string, unknown>; msg: string }[] = [];
  const at = (level: string) => (obj: Record<string, unknown>, msg: string) => void lines.push({ level, obj, msg });
  const log = { warn: at("warn"), error: at("error"), info: at("info"), debug: at("debug") } as unknown as Logger;
  return { log, lines };
}

function outcome(index: number, message = ""): ItemOutcome {
  return {
    lease: { batchId: "b1", index, token: `1.w1.tok${index}` },
    status: message ? ItemStatus.ITEM_STATUS_FAILED : ItemStatus.ITEM_STATUS_SUCCEEDED,
    error: message ? { code: "INFERENCE_FAILED", message, retryable: true } : undefined,
    artifacts: [],
    runMs: 5,
    vramUsedBytes: 0,
  };
}

const indexesOf = (s: Sent) => {
  const e = ResultLogEntry.decode(s.data).entry;
  assert.equal(e?.$case, "results");
  return e.results.outcomes.map((o) => o.lease!.index);
};

async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

function setup(t: { after: (f: () => void) => void }, fake = fakeConnection(), extra: Partial<ConstructorParameters<typeof ResultPublisher>[2]> = {}) {
  // The publisher's sweep timer is unref'd (a real NATS connection keeps a worker alive); the
  // fake connection keeps nothing alive, so the timeouts below need something that does.
  const keepAlive = setInterval(() => {}, 1000);
  const js = new JetStreamPublisher(fake.nc, "_INBOX_w1", 10);
  js.start();
  const { log, lines } = recordingLogger();
  // Acks wait 2 s unless a test is about their timeout: a loaded machine must not turn a slow
  // answer of the test into a retry the test did not expect.
  const pub = new ResultPublisher(js, new Names("shoal"), { workerId: "w1", maxOutcomesPerMessage: 256, ackTimeoutMs: 2000, retryStepMs: 5, ...extra }, log);
  t.after(async () => {
    // Whatever a failed test left unstored is given up (stopped publisher, closed result
    // publisher), so no retry loop outlives the test.
    js.stop();
    await pub.close();
    clearInterval(keepAlive);
  });
  return { ...fake, pub, lines };
}

test("result publisher - outcomes share one message and resolve only with the stream's acknowledgement", async (t) => {
  const f = setup(t);
  let stored = 0;
  const all = [0, 1, 2].map((i) => f.pub.publish("b1", outcome(i)).then(() => stored++));
  await until(() => f.sent.length === 1, "the results message");
  assert.equal(f.sent[0]!.subject, "shoal.results.b1");
  assert.deepEqual(indexesOf(f.sent[0]!), [0, 1, 2]);
  const entry = ResultLogEntry.decode(f.sent[0]!.data).entry;
  assert.equal(entry?.$case === "results" ? entry.results.workerId : undefined, "w1");
  await new Promise((r) => setTimeout(r, 15));
  assert.equal(stored, 0, "nothing resolves before the PubAck");
  f.ack(f.sent[0]!, 1);
  await Promise.all(all);
  assert.equal(stored, 3);
});

test("result publisher - group commit: a lone outcome is written at once; those that come while a write is in flight share the next, sent once it is stored", async (t) => {
  const f = setup(t);
  const first = f.pub.publish("b1", outcome(0));
  // No window: the write goes out after this turn of the event loop.
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  assert.equal(f.sent.length, 1, "written without waiting for company");
  const later = [1, 2, 3].map((i) => f.pub.publish("b1", outcome(i)));
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(f.sent.length, 1, "nothing else is written while the first write is in flight");
  f.ack(f.sent[0]!, 1);
  await first;
  await until(() => f.sent.length === 2, "the second message");
  assert.deepEqual(indexesOf(f.sent[1]!), [1, 2, 3], "everything that waited goes in one message");
  f.ack(f.sent[1]!, 2);
  await Promise.all(later);
});

test("result publisher - a write whose acknowledgement never comes times out and is sent again until stored", async (t) => {
  const f = setup(t, fakeConnection(), { ackTimeoutMs: 40 });
  let done = false;
  const p = f.pub.publish("b1", outcome(7)).then(() => (done = true));
  await until(() => f.sent.length >= 2, "the write sent again after its timeout");
  assert.equal(done, false, "a timed-out write is not stored");
  assert.deepEqual(f.sent[1]!.data, f.sent[0]!.data, "the same outcomes are sent again");
  assert.notEqual(f.sent[1]!.reply, f.sent[0]!.reply, "each write waits on its own reply subject");
  // A late answer to the first write counts for nothing: only the retry's ack stores it.
  f.ack(f.sent[0]!, 1);
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(done, false);
  // Every later send is acknowledged (on a loaded machine a retry may itself time out first).
  let next = 1;
  await until(() => {
    for (; next < f.sent.length; next++) f.ack(f.sent[next]!, next + 1);
    return done;
  }, "the retried write stored");
  await p;
  const retry = f.lines.find((l) => l.msg === "results not stored yet, retrying");
  assert.ok(retry, "the timeout is reported");
  assert.equal(retry.obj.code, "STORAGE_UNAVAILABLE");
  assert.match(String(retry.obj.err), /no JetStream acknowledgement/);
});

test("result publisher - a full stream is reported as STORAGE_FULL and retried; the write is stored when room comes", async (t) => {
  const f = setup(t);
  const p = f.pub.publish("b1", outcome(1));
  await until(() => f.sent.length === 1, "the first write");
  f.answer(f.sent[0]!, { error: { code: 400, err_code: 10077, description: "maximum bytes exceeded" } });
  await until(() => f.sent.length === 2, "the retry");
  f.ack(f.sent[1]!, 3);
  await p;
  const retry = f.lines.find((l) => l.msg === "results not stored yet, retrying");
  assert.equal(retry?.obj.code, "STORAGE_FULL");
  assert.match(String(retry?.obj.err), /the results stream \(SHOAL_RESULTS\) is full/);
});

test("result publisher - a message over max_payload is split until its parts fit, each outcome stored once", async (t) => {
  const long = "x".repeat(300);
  const f = setup(t, fakeConnection({ maxPayload: 1000 }));
  const all = Array.from({ length: 8 }, (_, i) => f.pub.publish("b1", outcome(i, long)));
  // Every message that got through the size check is acknowledged as it comes.
  let acked = 0;
  await until(() => {
    for (; acked < f.sent.length; acked++) f.ack(f.sent[acked]!, acked + 1);
    return new Set(f.sent.flatMap(indexesOf)).size === 8;
  }, "all outcomes written");
  await Promise.all(all);
  const written = f.sent.flatMap(indexesOf).sort((a, b) => a - b);
  assert.deepEqual(written, [0, 1, 2, 3, 4, 5, 6, 7], "each outcome in exactly one stored message");
  assert.ok(f.sent.length > 1 && f.sent.every((s) => s.data.length <= 1000));
  assert.ok(f.lines.some((l) => l.msg === "results message too large; splitting it"));
});

test("result publisher - at shutdown unstored outcomes are given up after a few tries, and logged", async (t) => {
  const f = setup(t, fakeConnection(), { ackTimeoutMs: 40 });
  let resolved = false;
  const p = f.pub.publish("b1", outcome(4)).then(() => (resolved = true));
  await f.pub.close();
  await p;
  assert.equal(resolved, true);
  assert.ok(f.sent.length >= 4, `tried ${f.sent.length} times`);
  assert.ok(f.lines.some((l) => l.level === "error" && l.msg === "results not stored at shutdown"));
});
