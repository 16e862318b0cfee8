// `npm run fuzz`: the long fuzzing run, for nights. Starts its own nats-server, coordinator and
// worker, sends generated cases (SubmitBatch requests, raw bytes and metadata on every gRPC
// method, garbage on every NATS subject), then checks that both processes live, counted the
// garbage as protocol errors, and still complete an ordinary batch.
//
//   node dist/test/fuzz/main.js [--cases N] [--seed N] [--concurrency N] [--deadline MS]
//                               [--replay kind:seed:index,...] [--keep-going]
//
// Every flag has an env var: SHOAL_FUZZ_CASES (default 1000000), SHOAL_FUZZ_SEED (default: the
// clock, printed), SHOAL_FUZZ_CONCURRENCY (32), SHOAL_FUZZ_DEADLINE_MS (60000). Exits 1 on any
// finding, hang or crash, 2 on bad arguments.

import { CASE_KINDS, countsFor, formatReport, runCampaign, type Report } from "./campaign.js";
import { batchSucceeded, deadProcess, ordinaryBatch, protocolErrors, startFuzzStack, stopFuzzStack, unfinished, type FuzzStack } from "./fuzz-stack.js";

interface Options {
  cases: number;
  seed: number;
  concurrency: number;
  deadlineMs: number;
  replay: string[] | undefined;
  keepGoing: boolean;
}

function fail(message: string): never {
  process.stderr.write(`fuzz: ${message}\n`);
  process.exit(2);
}

function intOption(name: string, raw: string | undefined, fallback: number, min: number): number {
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < min) fail(`${name}: "${raw}" must be an integer ≥ ${min}`);
  return n;
}

export function parseArgs(argv: string[], env: NodeJS.ProcessEnv): Options {
  const raw: Record<string, string | undefined> = {
    cases: env.SHOAL_FUZZ_CASES,
    seed: env.SHOAL_FUZZ_SEED,
    concurrency: env.SHOAL_FUZZ_CONCURRENCY,
    deadline: env.SHOAL_FUZZ_DEADLINE_MS,
    replay: undefined,
  };
  let keepGoing = true;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const flag = /^--(cases|seed|concurrency|deadline|replay)$/.exec(a);
    if (flag) {
      const v = argv[++i];
      if (v === undefined) fail(`${a} needs a value`);
      raw[flag[1]!] = v;
    } else if (a === "--stop-on-finding") keepGoing = false;
    else if (a === "--keep-going") keepGoing = true;
    else if (a === "--help" || a === "-h") {
      process.stdout.write("usage: node dist/test/fuzz/main.js [--cases N] [--seed N] [--concurrency N] [--deadline MS] [--replay kind:seed:index,...] [--stop-on-finding]\n");
      process.exit(0);
    } else fail(`unknown argument ${a}`);
  }
  return {
    cases: intOption("--cases", raw.cases, 1_000_000, 1),
    // A 32-bit seed, as fast-check takes; printed so a run can be repeated.
    seed: raw.seed === undefined ? Date.now() | 0 : intOption("--seed", raw.seed, 0, -(2 ** 31)) | 0,
    concurrency: intOption("--concurrency", raw.concurrency, 32, 1),
    deadlineMs: intOption("--deadline", raw.deadline, 60_000, 100),
    replay: raw.replay?.split(",").map((s) => s.trim()).filter(Boolean),
    keepGoing,
  };
}

function progress(r: Report, total: number): string {
  const done = CASE_KINDS.reduce((s, k) => s + r.cases[k], 0);
  const rate = done / (r.durationMs / 1000);
  const eta = rate > 0 ? Math.round((total - done) / rate) : 0;
  return `fuzz: ${done}/${total} cases (${CASE_KINDS.map((k) => `${k} ${r.cases[k]}`).join(", ")}), ${Math.round(rate)}/s, findings ${r.findings.length}, eta ${Math.floor(eta / 60)}m${eta % 60}s\n`;
}

async function main(): Promise<number> {
  const o = parseArgs(process.argv.slice(2), process.env);
  const counts = countsFor(o.cases);
  let f: FuzzStack | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    process.stderr.write(`fuzz: ${sig}: stopping the processes it started\n`);
    void stopFuzzStack(f).finally(() => process.exit(130));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  process.stderr.write(`fuzz: seed ${o.seed}, ${o.replay ? `${o.replay.length} replayed cases` : `${o.cases} cases`}, concurrency ${o.concurrency}, deadline ${o.deadlineMs} ms\n`);
  try {
    f = await startFuzzStack({ deadlineMs: o.deadlineMs });
    const stack = f;
    const before = { coordinator: await protocolErrors(f.coordinatorMetricsPort), worker: await protocolErrors(f.workerMetricsPort) };
    const report = await runCampaign({
      grpc: f.grpc,
      nats: f.nats,
      deadlineMs: o.deadlineMs,
      seed: o.seed,
      counts,
      concurrency: o.concurrency,
      replay: o.replay,
      deadProcess: () => deadProcess(stack),
      stopOnFinding: !o.keepGoing,
      onProgress: (r) => process.stderr.write(progress(r, o.replay?.length ?? o.cases)),
      progressEveryMs: 10_000,
    });
    const problems: string[] = [];
    let after = { coordinator: NaN, worker: NaN };
    if (!report.crash) {
      const open = await unfinished(f, report.accepted, 300_000);
      if (open.length > 0) problems.push(`${open.length} accepted batches never ended: ${open.slice(0, 5).join(", ")}`);
      const b = await ordinaryBatch(f);
      if (!batchSucceeded(b)) problems.push(`the ordinary batch after the fuzz did not succeed: ${JSON.stringify({ ...b, results: b.results.map((r) => r.error) })}`);
      after = { coordinator: await protocolErrors(f.coordinatorMetricsPort), worker: await protocolErrors(f.workerMetricsPort) };
      const dead = deadProcess(f);
      if (dead) report.crash = dead;
    }
    process.stdout.write(`\nfuzz: seed ${o.seed}\n${formatReport(report)}\n`);
    process.stdout.write(`  ${"protocol errors counted".padEnd(28)} coordinator +${after.coordinator - before.coordinator}, worker +${after.worker - before.worker}\n`);
    for (const p of problems) process.stdout.write(`problem: ${p}\n`);
    if (report.findings.length > 0) process.stdout.write(`replay one: npm run fuzz -- --replay ${report.findings[0]!.replay}\n`);
    return report.crash || report.findings.length > 0 || report.hangs > 0 || problems.length > 0 ? 1 : 0;
  } finally {
    await stopFuzzStack(f);
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`fuzz: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
