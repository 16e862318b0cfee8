// Run inside a client namespace by the network-namespace test (the test process itself cannot
// reach addresses inside namespaces): submits one batch of `n` simulated items through the SDK
// given every coordinator address, polls it to the end through outages, and reports on stdout,
// one JSON line per event: submitted, progress, done (with every result and how many polls saw a
// terminal batch with fewer results than items).

import { status } from "@grpc/grpc-js";
import { createClients } from "../../cli/client.js";
import { BatchState } from "../../proto/gen/shoal/v1/shoal.js";

const [addrs, nText, workMs, tag, timeoutText] = process.argv.slice(2);
const n = Number(nText);
const deadline = Date.now() + Number(timeoutText ?? 240_000);
const TERMINAL = new Set([BatchState.BATCH_STATE_COMPLETED, BatchState.BATCH_STATE_FAILED, BatchState.BATCH_STATE_CANCELLED]);
const say = (o: unknown) => process.stdout.write(JSON.stringify(o) + "\n");
const transient = (err: unknown) => [status.UNAVAILABLE, status.DEADLINE_EXCEEDED, status.INTERNAL].includes((err as { grpcCode?: number }).grpcCode ?? -1);

const clients = createClients(addrs!, undefined, { defaultTimeoutMs: 10_000 });
const items = Array.from({ length: n }, (_, i) => ({ model: "sim-6g", params: { work_ms: Number(workMs), tag: `${tag} ${i}` } }));
let batchId = "";
while (!batchId) {
  try {
    batchId = (await clients.submitBatch({ items, idempotencyKey: `netns-${tag}` })).batchId;
  } catch (err) {
    if (!transient(err) || Date.now() > deadline) throw err;
    await new Promise((r) => setTimeout(r, 200));
  }
}
say({ event: "submitted", batchId });
let partialTerminalPolls = 0;
let last = -1;
for (;;) {
  try {
    const b = await clients.getBatch(batchId);
    const done = b.succeeded + b.failed + b.cancelled;
    if (done !== last) say({ event: "progress", done, succeeded: b.succeeded });
    last = done;
    if (TERMINAL.has(b.state)) {
      if (b.results.length !== b.total) partialTerminalPolls++;
      else {
        say({
          event: "done",
          batchId,
          state: BatchState[b.state],
          total: b.total,
          succeeded: b.succeeded,
          failed: b.failed,
          partialTerminalPolls,
          results: b.results.map((r) => ({ index: r.index, status: r.status, workerId: r.workerId, error: r.error?.code ?? null })),
        });
        break;
      }
    }
  } catch (err) {
    if (!transient(err)) throw err;
  }
  if (Date.now() > deadline) {
    say({ event: "timeout", batchId, last });
    process.exit(1);
  }
  await new Promise((r) => setTimeout(r, 100));
}
clients.close();
