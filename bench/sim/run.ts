// SIMULATION. Runs every shape under every policy and prints one line each:
//   node dist/bench/sim/run.js [--quick] [--seed N] [--only shape1,shape2] [--policy p1,p2]
//     [--oom-need-unknown] (workers' OUT_OF_MEMORY without the need, as a real ONNX backend's)
//     [--known-vram] (estimates start at the real needs: nothing runs out of memory)
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
const simOpts = { oomNeedUnknown: args.includes("--oom-need-unknown"), knownVram: args.includes("--known-vram") };
for (const shape of SHAPES) {
  const w = shape({ seed, quick });
  if (only && !only.includes(w.name)) continue;
  for (const p of POLICIES) {
    if (pols && !pols.includes(p.name)) continue;
    const r = simulate(w, p, simOpts);
    process.stdout.write(
      `${w.name.padEnd(22)} ${p.name.padEnd(20)} eff ${r.efficiency.toFixed(3)} makespan ${(r.makespanMs / 1000).toFixed(1)}s ideal ${(r.idealMs / 1000).toFixed(1)}s ooms ${r.estimateOoms} (repeat ${r.repeatOoms}) over ${r.overbooked} refused ${r.refusedByWorker} loads ${r.loads} notEnded ${r.notEnded} wall ${r.wallMs.toFixed(0)}ms\n`,
    );
  }
}
