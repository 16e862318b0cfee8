// SIMULATION ONLY. One simulated GPU of the VRAM-blind baseline in the fleet-efficiency case:
// what a team without Shoal would run, a NATS queue group of GPU processes that take whatever
// item the queue hands them. It has no say in what it gets: NATS gives each message to one
// member of the group, whatever that member's free VRAM.
//
// VRAM is accounted exactly as Shoal's simulated workers do (worker budget accounting): a
// model's weights once while any item of it runs here, plus each item's activations. An item
// that fits runs for its work_ms (a timer) and is answered {ok:true}; one that does not fit
// fails with OUT_OF_MEMORY after `oom_ms` (the time a real runtime spends loading and
// allocating before it fails) and is answered {ok:false}, and the dispatcher queues it again.
//   node dist/bench/procs/rr-gpu-consumer.js <nats-url> <subject> <queue-group> <gpu-id> <vram-bytes> <oom-ms>

import { connect } from "@nats-io/transport-node";
import { SIMULATED_MODELS } from "../../worker/simulated-backend.js";

const [url, subject, queue, gpuId, vramS, oomS] = process.argv.slice(2);
if (!url || !subject || !queue || !gpuId || !vramS) {
  process.stderr.write("usage: rr-gpu-consumer <nats-url> <subject> <queue-group> <gpu-id> <vram-bytes> <oom-ms>\n");
  process.exit(2);
}
const vram = Number(vramS);
const oomMs = Number(oomS ?? 0);
const models = new Map(SIMULATED_MODELS.map((m) => [m.name, m.vram]));
const running = new Map<string, number>(); // model → items running
let activations = 0;
let peakUsed = 0;
let ran = 0;
let ooms = 0;

function used(): number {
  let weights = 0;
  for (const [m, n] of running) if (n > 0) weights += models.get(m)!.weights_bytes;
  return weights + activations;
}

interface ItemMsg {
  i: number;
  model: string;
  work_ms: number;
}

const nc = await connect({ servers: url, name: `bench-rr-${gpuId}` });
const encoder = new TextEncoder();
nc.subscribe(subject, {
  queue,
  callback: (err, msg) => {
    if (err) return;
    const item = JSON.parse(new TextDecoder().decode(msg.data)) as ItemMsg;
    const need = models.get(item.model);
    if (!need) {
      msg.respond(encoder.encode(JSON.stringify({ ok: false, gpu: gpuId, error: "MODEL_NOT_FOUND" })));
      return;
    }
    const loaded = (running.get(item.model) ?? 0) > 0;
    const bytes = need.activation_bytes + (loaded ? 0 : need.weights_bytes);
    if (used() + bytes > vram) {
      ooms++;
      setTimeout(() => msg.respond(encoder.encode(JSON.stringify({ ok: false, gpu: gpuId, error: "OUT_OF_MEMORY" }))), oomMs);
      return;
    }
    running.set(item.model, (running.get(item.model) ?? 0) + 1);
    activations += need.activation_bytes;
    peakUsed = Math.max(peakUsed, used());
    setTimeout(() => {
      running.set(item.model, running.get(item.model)! - 1);
      activations -= need.activation_bytes;
      ran++;
      msg.respond(encoder.encode(JSON.stringify({ ok: true, gpu: gpuId })));
    }, item.work_ms);
  },
});
nc.subscribe(`${subject}.stats.${gpuId}`, {
  callback: (err, msg) => void (err || msg.respond(encoder.encode(JSON.stringify({ gpu: gpuId, ran, ooms, peakUsed, vram })))),
});
await nc.flush();
process.stdout.write("READY\n");
process.on("SIGTERM", () => void nc.close().then(() => process.exit(0)));
