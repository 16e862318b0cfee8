// The raw-NATS reference, requester side: what plain request/reply between two processes on this
// machine does, so Shoal's dispatch numbers have a yardstick measured in the same run.
//   1. latency: `count` requests one after another → round-trip p50/p99 (ms)
//   2. throughput: `window` requests kept outstanding for `seconds` → replies per second
// Prints one line `RESULT {json}` and exits.
//   node dist/bench/procs/nats-echo-requester.js <nats-url> <subject> <count> <window> <seconds> <payload-bytes>

import { connect } from "@nats-io/transport-node";
import { percentile } from "../lib/stats.js";

const [url, subject, countS, windowS, secondsS, payloadS] = process.argv.slice(2);
if (!url || !subject) {
  process.stderr.write("usage: nats-echo-requester <nats-url> <subject> <count> <window> <seconds> <payload-bytes>\n");
  process.exit(2);
}
const count = Number(countS ?? 1000);
const window = Number(windowS ?? 128);
const seconds = Number(secondsS ?? 2);
const payload = new Uint8Array(Number(payloadS ?? 128)).fill(7);

const nc = await connect({ servers: url, name: "bench-echo-requester" });

// Warm up the connection and the responder.
for (let i = 0; i < 200; i++) await nc.request(subject, payload, { timeout: 5000 });

const rtts: number[] = [];
for (let i = 0; i < count; i++) {
  const t0 = performance.now();
  await nc.request(subject, payload, { timeout: 5000 });
  rtts.push(performance.now() - t0);
}

let replies = 0;
const t0 = performance.now();
const end = t0 + seconds * 1000;
async function lane(): Promise<void> {
  while (performance.now() < end) {
    await nc.request(subject, payload, { timeout: 5000 });
    replies++;
  }
}
await Promise.all(Array.from({ length: window }, lane));
const elapsedS = (performance.now() - t0) / 1000;

const result = {
  sequential: { count, p50Ms: percentile(rtts, 50), p99Ms: percentile(rtts, 99), meanMs: rtts.reduce((s, v) => s + v, 0) / rtts.length },
  pipelined: { window, seconds: elapsedS, replies, perSecond: replies / elapsedS },
  payloadBytes: payload.length,
};
process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
await nc.close();
process.exit(0);
