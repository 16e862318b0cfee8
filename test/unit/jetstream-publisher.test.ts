import { test } from "node:test";
import assert from "node:assert/strict";
import { JetStreamApiError } from "@nats-io/jetstream";
import type { Msg, NatsConnection } from "@nats-io/transport-node";
import { JetStreamPublisher } from "../../shared/jetstream-publisher.js";

/** A fake connection (unit test): records publishes; the test answers them as the server would. */
function fakeConnection() {
  let deliver: ((err: Error | null, msg: Msg) => void) | undefined;
  let subject = "";
  const sent: { subject: string; reply: string }[] = [];
  const nc = {
    subscribe(s: string, opts: { callback: (err: Error | null, msg: Msg) => void }) {
      subject = s;
      deliver = opts.callback;
      return { unsubscribe: () => (deliver = undefined) };
    },
    publish(s: string, _data: unknown, opts: { reply: string }) {
      if (s === "too.big") throw Object.assign(new Error("message size exceeds max_payload"), { name: "InvalidArgumentError" });
      sent.push({ subject: s, reply: opts.reply });
    },
  } as unknown as NatsConnection;
  const answer = (reply: string, body: string, code?: number) =>
    deliver!(null, { subject: reply, data: new TextEncoder().encode(body), headers: code ? { code } : undefined } as unknown as Msg);
  return { nc, sent, answer, subscribed: () => subject };
}

test("jetstream publisher - resolves with the PubAck, rejects with the server's error code, whatever the order of replies", async () => {
  const f = fakeConnection();
  const p = new JetStreamPublisher(f.nc, "_INBOX_w1");
  p.start();
  assert.match(f.subscribed(), /^_INBOX_w1\.jsack\.[^.]+\.\*$/);
  const a = p.publish("$O.b.C.x", new Uint8Array([1]), { timeoutMs: 5000 });
  const b = p.publish("$O.b.M.y", "{}", { timeoutMs: 5000 });
  f.answer(f.sent[1]!.reply, JSON.stringify({ type: "io.nats.jetstream.api.v1.pub_ack", error: { code: 400, err_code: 10071, description: "wrong last sequence: 3" } }));
  f.answer(f.sent[0]!.reply, JSON.stringify({ stream: "OBJ_b", seq: 7 }));
  assert.deepEqual(await a, { stream: "OBJ_b", seq: 7 });
  await assert.rejects(b, (err) => err instanceof JetStreamApiError && err.code === 10071 && /wrong last sequence/.test(err.message));
  p.stop();
});

test("jetstream publisher - no stream (503), no answer in time, refused sizes and stop all reject", async (t) => {
  const f = fakeConnection();
  const p = new JetStreamPublisher(f.nc, "_INBOX_w1", 20);
  // The publisher's sweep timer is unref'd (a real NATS connection keeps a worker alive); the
  // fake connection keeps nothing alive, so the timeout below needs something that does.
  const keepAlive = setInterval(() => {}, 1000);
  t.after(() => clearInterval(keepAlive));
  p.start();
  const none = p.publish("nowhere", "x", { timeoutMs: 5000 });
  f.answer(f.sent[0]!.reply, "", 503);
  await assert.rejects(none, /no responders/);
  await assert.rejects(p.publish("slow", "x", { timeoutMs: 30 }), /no JetStream acknowledgement for slow in time/);
  await assert.rejects(p.publish("too.big", "x", { timeoutMs: 5000 }), /max_payload/);
  const pending = p.publish("left", "x", { timeoutMs: 5000 });
  p.stop();
  p.stop();
  await assert.rejects(pending, /publisher stopped/);
  await assert.rejects(p.publish("after", "x", { timeoutMs: 5000 }), /not started/);
});

test("jetstream publisher - its timeout sweep runs only while writes wait (no timer in an idle process)", async (t) => {
  const f = fakeConnection();
  const p = new JetStreamPublisher(f.nc, "_INBOX_w1", 10);
  const keepAlive = setInterval(() => {}, 1000);
  t.after(() => clearInterval(keepAlive));
  const sweepArmed = () => (p as unknown as { sweepTimer?: unknown }).sweepTimer !== undefined;
  p.start();
  assert.equal(sweepArmed(), false, "started, nothing sent: no timer");
  const a = p.publish("s", "x", { timeoutMs: 5000 });
  assert.equal(sweepArmed(), true, "a write waits: the sweep runs");
  f.answer(f.sent[0]!.reply, JSON.stringify({ stream: "S", seq: 1 }));
  await a;
  // The next sweep finds nothing waiting and stops itself.
  for (let i = 0; i < 200 && sweepArmed(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(sweepArmed(), false, "nothing waits: the timer is gone");
  // A later write still times out: the sweep comes back with it.
  await assert.rejects(p.publish("late", "x", { timeoutMs: 20 }), /no JetStream acknowledgement for late in time/);
  p.stop();
});
