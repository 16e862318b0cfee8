// SIMULATION. The default policy's efficiency per shape across seeds, as a table (docs/performance.md
// "sim across seeds"): what a change to placement does at every seed, not only the bench's three.
//   node dist/bench/sim/seeds.js [--seeds 1-12,42,143,244] [--only shape1,shape2] [--no-packing]
import { POLICIES, simulate } from "./simulator.js";
import { SHAPES } from "./workloads.js";
import { DEFAULT_POLICY } from "../cases/sim.js";

function parseSeeds(text: string): number[] {
  return text.split(",").flatMap((part) => {
    const [a, b] = part.split("-").map(Number);
    if (b === undefined) return [a!];
    return Array.from({ length: b - a! + 1 }, (_, i) => a! + i);
  });
}

const args = process.argv.slice(2);
const arg = (name: string) => {
  const at = args.indexOf(name);
  return at >= 0 ? args[at + 1] : undefined;
};
const seeds = parseSeeds(arg("--seeds") ?? "1-12,42,143,244");
const only = arg("--only")?.split(",");
const policy = POLICIES.find((p) => p.name === DEFAULT_POLICY)!;
const opts = { trackEta: true, packing: args.includes("--no-packing") ? false : undefined };
process.stdout.write(`${"shape".padEnd(22)} ${seeds.map((s) => String(s).padStart(6)).join("")}   min  <0.90\n`);
for (const shape of SHAPES) {
  const name = shape({ seed: 1, quick: true }).name;
  if (only && !only.includes(name)) continue;
  const effs = seeds.map((seed) => {
    const r = simulate(shape({ seed }), policy, opts);
    if (r.notEnded > 0 || r.overbooked > 0) throw new Error(`${name} seed ${seed}: ${r.notEnded} items never ended, ${r.overbooked} overbooked`);
    return r.efficiency;
  });
  const misses = effs.filter((e) => e < 0.9).length;
  process.stdout.write(`${name.padEnd(22)} ${effs.map((e) => e.toFixed(3).padStart(6)).join("")} ${Math.min(...effs).toFixed(3)} ${String(misses).padStart(5)}\n`);
}
