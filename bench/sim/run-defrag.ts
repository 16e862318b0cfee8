// SIMULATION. Defragmentation in the simulator: the resident-turns shape (bench/sim/defrag-workload.ts)
// under every policy, with idle weights free (the default worker), kept resident without
// defragmentation, and kept resident with it. One line each:
//   node dist/bench/sim/run-defrag.js [--seed N] [--quick]
import { POLICIES, simulate, type SimOptions } from "./simulator.js";
import { defragShape } from "./defrag-workload.js";

const args = process.argv.slice(2);
const seedAt = args.indexOf("--seed");
const seed = seedAt >= 0 ? Number(args[seedAt + 1]) : 42;
const w = defragShape({ seed, quick: args.includes("--quick") });
const worlds: [string, SimOptions][] = [
  ["idle weights free", {}],
  ["resident, no defrag", { residency: true }],
  ["resident + defrag", { residency: true, defrag: true }],
];
for (const p of POLICIES) {
  for (const [label, o] of worlds) {
    // Without defragmentation items may wait for ever: the run stops after 10 virtual hours.
    const r = simulate(w, p, { ...o, maxVirtualMs: 36_000_000 });
    const done = r.items - r.notEnded;
    process.stdout.write(
      `${w.name} ${p.name.padEnd(18)} ${label.padEnd(20)} ended ${String(done).padStart(5)}/${r.items} ${r.notEnded === 0 ? `eff ${r.efficiency.toFixed(3)}` : "eff   -  "} evictions ${r.evictions} refused ${r.evictionsRefused} loads ${r.loads} overbooked ${r.overbooked}\n`,
    );
  }
}
