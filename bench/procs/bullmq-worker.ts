// The BullMQ peer, worker side: one process with a BullMQ Worker on a queue, `concurrency` jobs
// at once, each doing nothing (the zero-work counterpart of sim-zero). Started by the peer case;
// prints READY once connected to redis.
//   node dist/bench/procs/bullmq-worker.js <redis-port> <queue> <concurrency>

import { Worker } from "bullmq";

const [port, queue, concurrency] = process.argv.slice(2);
if (!port || !queue || !concurrency || !Number.isInteger(Number(concurrency))) {
  process.stderr.write("usage: bullmq-worker <redis-port> <queue> <concurrency>\n");
  process.exit(2);
}
// maxRetriesPerRequest: null is what BullMQ requires of a Worker's connection.
const worker = new Worker(queue, async () => null, { connection: { host: "127.0.0.1", port: Number(port), maxRetriesPerRequest: null }, concurrency: Number(concurrency) });
worker.on("error", (err) => process.stderr.write(`bullmq worker error: ${err.message}\n`));
await worker.waitUntilReady();
process.stdout.write("READY\n");
process.on("SIGTERM", () => void worker.close().then(() => process.exit(0)));
