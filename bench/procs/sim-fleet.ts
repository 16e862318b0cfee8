// SIMULATION ONLY. Many simulated workers in one process, for the scale case: each speaks the
// real worker protocol over NATS (proto/shoal/v1/wire.proto), as worker/worker.ts does:
//   - a Heartbeat on `<prefix>.hb.<id>` every interval (one GPU with declared VRAM, the items it
//     holds, max_in_flight), and at once when the coordinator says hello;
//   - an AssignReply to every Assignment on `<prefix>.worker.<id>.assign`, accepting every item;
//   - accepted items are never run: they stay held (so the fleet stays full and the rest of the
//     submitted items stay queued) until the bench asks for a "churn": then one held item of
//     one worker is completed (a SUCCEEDED outcome published durably to JetStream
//     `<prefix>.results.<batch>`, exactly what a worker's ResultPublisher writes), which frees
//     that worker's slot, and the time until the coordinator's next Assignment reaches that
//     worker is recorded.
// The workers share one NATS connection (a real worker has its own); the coordinator cannot
// tell the difference. Control: NATS requests on `bench.simfleet.<name>.ctl` with JSON
// {op: "stats"} or {op: "churn", count, ratePerS}. Prints READY when every worker has sent its
// first heartbeat.
//   node dist/bench/procs/sim-fleet.js <nats-url> <prefix> <name> <count> <vram-bytes> <max-in-flight> <interval-ms>

import { hostname } from "node:os";
import { jetstream } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { connect, type Msg } from "@nats-io/transport-node";
import { ItemStatus, WorkerState } from "../../proto/gen/shoal/v1/shoal.js";
import { AssignReply, Assignment, Heartbeat, ModelRegistration, ResultLogEntry, type LeaseRef } from "../../proto/gen/shoal/v1/wire.js";
import { encodeMessage } from "../../shared/codec.js";
import { randomToken } from "../../shared/ids.js";
import { Names } from "../../shared/subjects.js";
import { SIMULATED_MODELS } from "../../worker/simulated-backend.js";

const [url, prefix, name, countS, vramS, maxInFlightS, intervalS] = process.argv.slice(2);
if (!url || !prefix || !name || !countS || !vramS) {
  process.stderr.write("usage: sim-fleet <nats-url> <prefix> <name> <count> <vram-bytes> <max-in-flight> <interval-ms>\n");
  process.exit(2);
}
const count = Number(countS);
const vram = Number(vramS);
const maxInFlight = Number(maxInFlightS ?? 1);
const intervalMs = Number(intervalS ?? 1000);
const names = new Names(prefix);
const manifests = new Map(SIMULATED_MODELS.map((m) => [m.name, m]));
const host = hostname();

interface SimWorker {
  id: string;
  incarnation: string;
  seq: number;
  done: number;
  held: Map<string, { lease: LeaseRef; bytes: number; model: string }>;
  /** Set while a churn waits for this worker's next assignment: when its slot was freed. */
  freedAt?: { publishStart: number; stored: number };
}

const workers: SimWorker[] = Array.from({ length: count }, (_, i) => ({
  id: `sim-${name}-${i}`,
  incarnation: randomToken(8),
  seq: 0,
  done: 0,
  held: new Map(),
}));
let assignsReceived = 0;
let itemsAccepted = 0;
const churnSamples: { fromPublishMs: number; fromStoredMs: number }[] = [];

const nc = await connect({ servers: url, name: `bench-sim-fleet-${name}`, maxReconnectAttempts: -1 });
const js = jetstream(nc);

// Register the simulated models, as a --simulate worker does, so their items validate.
const kv = await new Kvm(nc).open(names.modelsBucket);
for (const m of SIMULATED_MODELS) {
  await kv.put(m.name, encodeMessage(ModelRegistration, { manifestJson: JSON.stringify(m), servedBy: [workers[0]!.id] }));
}

function heartbeat(w: SimWorker): void {
  let weights = 0;
  let activations = 0;
  const models = new Set<string>();
  for (const h of w.held.values()) {
    activations += h.bytes;
    if (!models.has(h.model)) {
      models.add(h.model);
      weights += manifests.get(h.model)?.vram.weights_bytes ?? 0;
    }
  }
  const hb: Partial<Heartbeat> = {
    workerId: w.id,
    seq: ++w.seq,
    incarnation: w.incarnation,
    state: WorkerState.WORKER_STATE_READY,
    gpus: [{ index: 0, name: "SIMULATED-GPU", vramTotalBytes: vram, vramFreeBytes: Math.max(0, vram - weights - activations), source: "budget" }],
    residentModels: [...models],
    inFlight: [...w.held.values()].map((h) => h.lease),
    itemsDone: w.done,
    maxInFlight,
    hostname: host,
    models: [...manifests.keys()],
    heartbeatIntervalMs: intervalMs,
    readsParamsJson: true, // params (unread here) come as JSON bytes, as to real workers
  };
  nc.publish(names.heartbeat(w.id), encodeMessage(Heartbeat, hb));
}

function onAssign(w: SimWorker, msg: Msg): void {
  const now = performance.now();
  assignsReceived++;
  const assignment = Assignment.decode(msg.data);
  const accepted: string[] = [];
  for (const item of assignment.items) {
    if (!item.lease) continue;
    const m = manifests.get(item.model);
    const bytes = item.vramBytes > 0 ? item.vramBytes : (m?.vram.activation_bytes ?? 0);
    w.held.set(item.lease.token, { lease: item.lease, bytes, model: item.model });
    accepted.push(item.lease.token);
    itemsAccepted++;
  }
  msg.respond(encodeMessage(AssignReply, { accepted, error: "" }));
  if (w.freedAt && accepted.length > 0) {
    churnSamples.push({ fromPublishMs: now - w.freedAt.publishStart, fromStoredMs: now - w.freedAt.stored });
    w.freedAt = undefined;
  }
}

for (const w of workers) nc.subscribe(names.assign(w.id), { callback: (err, msg) => void (err || onAssign(w, msg)) });
nc.subscribe(names.coordinatorHello, { callback: () => workers.forEach(heartbeat) });

/** Completes one held item of `w`: its outcome goes to the results stream as a worker's would. */
async function complete(w: SimWorker): Promise<void> {
  const [token, h] = w.held.entries().next().value as [string, { lease: LeaseRef }];
  const publishStart = performance.now();
  w.freedAt = { publishStart, stored: publishStart };
  const data = encodeMessage(ResultLogEntry, {
    entry: {
      $case: "results",
      results: { workerId: w.id, outcomes: [{ lease: h.lease, status: ItemStatus.ITEM_STATUS_SUCCEEDED, error: undefined, artifacts: [], runMs: 0, vramUsedBytes: 0 }] },
    },
  });
  await js.publish(names.results(h.lease.batchId), data, { timeout: 10_000 });
  if (w.freedAt) w.freedAt.stored = performance.now();
  w.held.delete(token);
  w.done++;
}

async function churn(n: number, ratePerS: number): Promise<Record<string, unknown>> {
  churnSamples.length = 0;
  let completed = 0;
  const start = performance.now();
  for (let k = 0; k < n; k++) {
    const candidates = workers.filter((w) => w.held.size > 0 && !w.freedAt);
    if (candidates.length > 0) {
      await complete(candidates[Math.floor(Math.random() * candidates.length)]!);
      completed++;
    }
    const due = start + ((k + 1) * 1000) / ratePerS;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
  // Give the last assignments time to arrive.
  const deadline = performance.now() + 5000;
  while (performance.now() < deadline && workers.some((w) => w.freedAt)) await new Promise((r) => setTimeout(r, 20));
  const missing = workers.filter((w) => w.freedAt).length;
  for (const w of workers) w.freedAt = undefined;
  return { completed, samples: [...churnSamples], missing };
}

nc.subscribe(`bench.simfleet.${name}.ctl`, {
  callback: (err, msg) => {
    if (err) return;
    const cmd = JSON.parse(new TextDecoder().decode(msg.data)) as { op: string; count?: number; ratePerS?: number };
    const reply = (o: unknown) => msg.respond(new TextEncoder().encode(JSON.stringify(o)));
    if (cmd.op === "stats") {
      reply({ workers: workers.length, held: workers.reduce((s, w) => s + w.held.size, 0), assignsReceived, itemsAccepted });
    } else if (cmd.op === "churn") {
      void churn(cmd.count ?? 10, cmd.ratePerS ?? 10).then(reply, (e: unknown) => reply({ error: String(e) }));
    } else {
      reply({ error: `unknown op ${cmd.op}` });
    }
  },
});

// Heartbeats spread evenly over the interval, as independent workers' would be.
for (const [i, w] of workers.entries()) {
  setTimeout(() => {
    heartbeat(w);
    setInterval(() => heartbeat(w), intervalMs);
  }, (i * intervalMs) / count);
}
await nc.flush();
await new Promise((r) => setTimeout(r, intervalMs + 50));
process.stdout.write("READY\n");
process.on("SIGTERM", () => void nc.close().then(() => process.exit(0)));
