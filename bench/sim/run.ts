// SIMULATION. Runs every shape under every policy and prints one line each:
//   node dist/bench/sim/run.js [--quick] [--seed N] [--only shape1,shape2] [--policy p1,p2] [--eta]
//     [--oom-need-unknown] (workers' OUT_OF_MEMORY without the need, as a real ONNX backend's)
//     [--known-vram] (estimates start at the real needs: nothing runs out of memory)
//     [--no-packing] (items that would strand their GPU's VRAM are placed in order: scheduler/packing.ts off)
// --eta scores the coordinator's ETAs as the sim bench case does (median and p90 of the error at
// 25 % over the batches), under every policy run.
import { percentile } from "../lib/stats.js";
import { POLICIES, simulate } from "./simulator.js";
import { SHAPES } from "./workloads.js";

const args = process.argv.slice(2);
const quick = args.includes("--quick");
const seedAt = args.indexOf("--seed");
const seed = seedAt >= 0 ? Number(args[seedAt + 1]) : 42;
const onlyAt = args.indexOf("--only");
const only = onlyAt >= 0 ? args[onlyAt + 1]!.split(",") : undefined;
const polAt = args.indexOf("--policy");
const pols = polAt >= 0 ? args[polAt + 1]!.split(",") : undefined;
const simOpts = { oomNeedUnknown: args.includes("--oom-need-unknown"), knownVram: args.includes("--known-vram"), trackEta: args.includes("--eta"), packing: args.includes("--no-packing") ? false : undefined };
for (const shape of SHAPES) {
  const w = shape({ seed, quick });
  if (only && !only.includes(w.name)) continue;
  for (const p of POLICIES) {
    if (pols && !pols.includes(p.name)) continue;
    const r = simulate(w, p, simOpts);
    const errors = r.etaErrors ?? [];
    const eta = errors.length > 0 ? ` eta ${percentile(errors, 50).toFixed(3)} p90 ${percentile(errors, 90).toFixed(3)} (${errors.length})` : "";
    process.stdout.write(
      `${w.name.padEnd(22)} ${p.name.padEnd(20)} eff ${r.efficiency.toFixed(3)} makespan ${(r.makespanMs / 1000).toFixed(1)}s ideal ${(r.idealMs / 1000).toFixed(1)}s ooms ${r.estimateOoms} (repeat ${r.repeatOoms}) over ${r.overbooked} refused ${r.refusedByWorker} loads ${r.loads} notEnded ${r.notEnded} wall ${r.wallMs.toFixed(0)}ms${eta}\n`,
    );
  }
}
