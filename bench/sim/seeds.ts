// SIMULATION. The default policy's efficiency and ETA error per shape across seeds, as the
// markdown table of docs/performance.md ("sim across seeds"): what a change to placement does at
// every seed, not only at the bench's three. Deterministic (virtual time).
//   node dist/bench/sim/seeds.js [--seeds 1-12,42,143,244] [--only shape1,shape2] [--no-packing]
// Each cell: efficiency vs the LP ideal / median ETA error at 25 % over the batches; misses of
// the bench's targets (≥ 0.90, ≤ 0.20) in bold.
import { POLICIES, simulate } from "./simulator.js";
import { SHAPES } from "./workloads.js";
import { DEFAULT_POLICY } from "../cases/sim.js";
import { percentile } from "../lib/stats.js";

const TARGET_EFFICIENCY = 0.9;
const TARGET_ETA = 0.2;

function parseSeeds(text: string): number[] {
  return text.split(",").flatMap((part) => {
    const [a, b] = part.split("-").map(Number);
    if (!Number.isInteger(a) || (b !== undefined && !Number.isInteger(b))) throw new Error(`--seeds: bad range ${part}`);
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
const bold = (text: string, miss: boolean) => (miss ? `**${text}**` : text);
const misses: string[] = [];
process.stdout.write(`| shape | ${seeds.join(" | ")} |\n|---|${seeds.map(() => "---").join("|")}|\n`);
for (const shape of SHAPES) {
  const name = shape({ seed: seeds[0]!, quick: true }).name;
  if (only && !only.includes(name)) continue;
  const cells = seeds.map((seed) => {
    const r = simulate(shape({ seed }), policy, opts);
    if (r.notEnded > 0 || r.overbooked > 0) throw new Error(`${name} seed ${seed}: ${r.notEnded} items never ended, ${r.overbooked} overbooked`);
    if (r.efficiency < TARGET_EFFICIENCY) misses.push(`${name} ${seed}`);
    const errors = r.etaErrors ?? [];
    const eta = errors.length > 0 ? percentile(errors, 50) : undefined;
    return `${bold(r.efficiency.toFixed(3), r.efficiency < TARGET_EFFICIENCY)} / ${eta === undefined ? "-" : bold(eta.toFixed(3), eta > TARGET_ETA)}`;
  });
  process.stdout.write(`| ${name} | ${cells.join(" | ")} |\n`);
}
process.stdout.write(`\nEfficiency misses: ${misses.length}${misses.length > 0 ? ` (${misses.join(", ")})` : ""}.\n`);
