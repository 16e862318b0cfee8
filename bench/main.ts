// `npm run bench`: measures Shoal against its targets and against what users would do instead.
// Every comparison is a ratio measured in the same run. Cases that simulate GPUs say so.
//
//   node dist/bench/main.js [--quick] [--only case1,case2] [--out bench/results.json]
//                           [--cpu-prof DIR] [--seed N]
//
// Prints a table (case, metric, value, baseline/ideal, ratio, target, pass/fail) and writes the
// results file: machine info, and per case its params, raw numbers, ratios, target and met.

import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { natsServerBinary } from "../test/harness/processes.js";
import type { BenchCase, CaseContext } from "./cases/case.js";
import { batchOf50Case } from "./cases/batch-of-50.js";
import { clusterCase } from "./cases/cluster.js";
import { dispatchCase } from "./cases/dispatch.js";
import { encodeCase } from "./cases/encode.js";
import { fleetCase } from "./cases/fleet.js";
import { fsyncCase } from "./cases/fsync.js";
import { hedgingCase } from "./cases/hedging.js";
import { peerCase } from "./cases/peer-bullmq.js";
import { onnxCase } from "./cases/real-onnx.js";
import { scaleCase } from "./cases/scale.js";
import { simCase } from "./cases/sim.js";
import { formatProfileSummary, type ProfileSummary } from "./lib/cpuprofile.js";
import { stopEverything } from "./lib/procs.js";
import { formatTable, machineInfo, tableRows, type BenchResults, type CaseResult } from "./lib/report.js";

export const CASES: BenchCase[] = [dispatchCase, peerCase, fleetCase, batchOf50Case, onnxCase, scaleCase, fsyncCase, encodeCase, simCase, clusterCase, hedgingCase];

interface MainOptions {
  quick: boolean;
  only: string[] | undefined;
  out: string;
  profileDir: string | undefined;
  seed: number;
}

function parseArgs(argv: string[]): MainOptions {
  const o: MainOptions = { quick: false, only: undefined, out: "bench/results.json", profileDir: undefined, seed: 42 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = () => {
      const v = argv[++i];
      if (v === undefined) fail(`${a} needs a value`);
      return v!;
    };
    if (a === "--quick") o.quick = true;
    else if (a === "--only") o.only = value().split(",").map((s) => s.trim()).filter(Boolean);
    else if (a === "--out") o.out = value();
    else if (a === "--cpu-prof") o.profileDir = resolve(value());
    else if (a === "--seed") o.seed = Number(value());
    else if (a === "--help" || a === "-h") {
      process.stdout.write(
        "usage: node dist/bench/main.js [--quick] [--only " + CASES.map((c) => c.name).join(",") + "] [--out FILE] [--cpu-prof DIR] [--seed N]\n",
      );
      process.exit(0);
    } else fail(`unknown argument ${a}`);
  }
  const unknown = (o.only ?? []).filter((n) => !CASES.some((c) => c.name === n));
  if (unknown.length > 0) fail(`--only: unknown case ${unknown.join(", ")}; cases are ${CASES.map((c) => c.name).join(", ")}`);
  if (!Number.isInteger(o.seed)) fail("--seed must be an integer");
  return o;
}

function fail(message: string): never {
  process.stderr.write(`bench: ${message}\n`);
  process.exit(2);
}

async function main(): Promise<void> {
  const opts = parseArgs(process.argv.slice(2));
  const onSignal = (sig: NodeJS.Signals) => {
    process.stderr.write(`bench: ${sig}: stopping every process it started\n`);
    void stopEverything().finally(() => process.exit(130));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  const machine = machineInfo(natsServerBinary());
  const selected = CASES.filter((c) => !opts.only || opts.only.includes(c.name));
  const started = performance.now();
  process.stderr.write(
    `bench: ${opts.quick ? "quick" : "full"} run of ${selected.map((c) => c.name).join(", ")} on ${machine.cores} cores (${machine.cpuModel}), node ${machine.nodeVersion}\n`,
  );
  const results: CaseResult[] = [];
  for (const c of selected) {
    const t0 = performance.now();
    const ctx: CaseContext = {
      quick: opts.quick,
      seed: opts.seed,
      profileDir: opts.profileDir,
      log: (m) => process.stderr.write(`bench [${c.name}${c.simulated ? ", SIMULATED" : ""}] ${m}\n`),
    };
    ctx.log(`start: ${c.title}`);
    try {
      const outcome = await c.run(ctx);
      const withTargets = outcome.metrics.filter((m) => m.target);
      results.push({
        name: c.name,
        title: c.title,
        simulated: c.simulated,
        target: c.target,
        ...outcome,
        met: withTargets.length > 0 && withTargets.every((m) => m.met === true),
        durationS: (performance.now() - t0) / 1000,
      });
    } catch (err) {
      const message = err instanceof Error ? (err.stack ?? err.message) : String(err);
      ctx.log(`failed: ${message}`);
      results.push({ name: c.name, title: c.title, simulated: c.simulated, target: c.target, params: {}, raw: {}, metrics: [], met: false, durationS: (performance.now() - t0) / 1000, error: message });
    } finally {
      // A failed case must not leave processes behind for the next one.
      await stopEverything();
    }
    ctx.log(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }

  const out: BenchResults = { mode: opts.quick ? "quick" : "full", machine, cases: results, allMet: results.every((r) => r.met) };
  const outPath = resolve(opts.out);
  mkdirSync(dirname(outPath), { recursive: true });
  writeFileSync(outPath, JSON.stringify(out, null, 2) + "\n");

  const profile = results.find((r) => r.raw.coordinatorProfile)?.raw.coordinatorProfile as ProfileSummary | undefined;
  if (profile) process.stdout.write(`\nCoordinator CPU profile under the dispatch case\n${formatProfileSummary({ ...profile, top: profile.top.slice(0, 15) })}\n`);
  process.stdout.write(
    `\nShoal bench (${out.mode}) — ${machine.cores} cores, ${machine.cpuModel}, node ${machine.nodeVersion}, ${machine.natsServerVersion}, ${machine.date}\n` +
      "SIMULATED = GPUs are simulated (declared VRAM, items sleep for work_ms); gRPC, coordinator, NATS, JetStream and worker processes are the real code.\n\n",
  );
  process.stdout.write(formatTable(tableRows(results)) + "\n\n");
  process.stdout.write(`results: ${outPath} (${((performance.now() - started) / 1000).toFixed(1)} s)\n`);
}

process.on("uncaughtException", (err) => {
  process.stderr.write(`bench: ${err.stack ?? err.message}\n`);
  void stopEverything().finally(() => process.exit(1));
});

await main();
process.exit(0);
