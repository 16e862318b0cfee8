// real ONNX: imagegen-tiny items per second through `shoal up --workers 2` (nats-server,
// coordinator, two workers with one inference thread each, all real) against onnxruntime-node
// called directly in one process with the same number of threads (Shoal's OnnxBackend with
// threads = 2, no NATS, no gRPC, no artifact store, every item handed to it at once so its dynamic
// batching can group them), and, for context, the same with batching off (one image per
// session run, what a script calling onnxruntime-node item by item does). The same items on
// every side. Two item sizes: the bench's own (128 × 128, a few ms per item, where the fleet's
// cost per item shows most) and 512 × 512 (an item's cost relative to the path like real
// users' items). One `shoal up` serves both.

import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ItemStatus } from "../../proto/gen/shoal/v1/shoal.js";
import { CLI, freePort } from "../../test/harness/processes.js";
import { TestClient } from "../../test/harness/client.js";
import { OnnxBackend } from "../../worker/inference/onnx-backend.js";
import { summarizeProfile, type ProfileSummary } from "../lib/cpuprofile.js";
import { childPids, cpuSeconds, spawnTracked, stopProc, trackPid, untrackPid, type BenchProc } from "../lib/procs.js";
import { check, type CaseOutcome, type Metric } from "../lib/report.js";
import { runBatch } from "../lib/shoal.js";
import type { BenchCase, CaseContext } from "./case.js";
import { cpuSecondsBetween, threadCpu } from "../lib/thread-cpu.js";

const TARGET_RATIO = 0.9;
const TARGET_RATIO_LARGE = 0.97;
/** Items each worker holds in the context row: 2 × threads × imagegen-tiny's max_batch (8). */
const DEEP_MAX_IN_FLIGHT = 16;

type ItemList = ReturnType<typeof items>;

function items(n: number, size: number, steps: number, tag = "bench image") {
  return Array.from({ length: n }, (_, i) => ({
    model: "imagegen-tiny",
    params: { prompt: `${tag} ${i}: a red ceramic mug on a wooden table`, width: size, height: size, steps, seed: 1000 + i, guidance_scale: 7.5 },
  }));
}

interface DirectRun {
  seconds: number;
  itemsPerS: number;
  cpuMsPerItem: number;
  /** At 512 × 512 (directLarge): whether the faster of the two ways was batched, and both ways. */
  batching?: boolean;
  ways?: { batched: DirectRun; alone: DirectRun };
}

async function direct(threads: number, batching: boolean, list: ItemList, warm: ItemList): Promise<DirectRun> {
  const backend = new OnnxBackend({ threads, batching });
  try {
    await backend.start();
    const runAll = (l: ItemList, tag: string) =>
      Promise.all(l.map((it, i) => backend.run({ id: `${tag}-${i}`, model: it.model, params: it.params, batchId: "bench", index: i }, new AbortController().signal)));
    await runAll(warm, "warm");
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const out = await runAll(list, "item");
    const seconds = (performance.now() - t0) / 1000;
    // The whole process: inference threads, libvips' encoder threads, the main thread.
    const cpu = process.cpuUsage(cpu0);
    if (out.some((o) => o.artifacts.length !== 1)) throw new Error("direct: an item produced no image");
    return { seconds, itemsPerS: list.length / seconds, cpuMsPerItem: (cpu.user + cpu.system) / 1000 / list.length };
  } finally {
    await backend.close();
  }
}

/** CPU seconds (user + system) of one thread of a process; the main thread's id is the pid. */
function threadCpuSeconds(pid: number, tid: number): number {
  const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

function commandOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ");
  } catch {
    return "";
  }
}

/** CPU seconds of every thread of a process by thread id (threads that ended are gone: read before and after). */
function threadsCpuSeconds(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  let tids: string[] = [];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      out[tid] = threadCpuSeconds(pid, Number(tid));
    } catch {
      /* the thread ended between the listing and the read */
    }
  }
  return out;
}

/** The processes of one `shoal up`, by role, for CPU accounting. */
interface UpProcs {
  up: number;
  coordinator: number | undefined;
  nats: number | undefined;
  workers: number[];
}

function rolesOf(upPid: number, children: number[]): UpProcs {
  const out: UpProcs = { up: upPid, coordinator: undefined, nats: undefined, workers: [] };
  for (const pid of children) {
    const cmd = commandOf(pid);
    if (cmd.includes("nats-server")) out.nats = pid;
    else if (/\scoordinator(\s|$)/.test(cmd)) out.coordinator = pid;
    else if (/\sworker(\s|$)/.test(cmd)) out.workers.push(pid);
  }
  return out;
}

/** CPU seconds so far: every process whole, and each worker's main thread (where NATS, artifacts and outcomes run). */
function cpuSnapshot(p: UpProcs): Record<string, number> {
  const s: Record<string, number> = { up: cpuSeconds(p.up) };
  if (p.coordinator) s.coordinator = cpuSeconds(p.coordinator);
  if (p.nats) s.nats = cpuSeconds(p.nats);
  p.workers.forEach((pid, i) => {
    s[`worker${i}`] = cpuSeconds(pid);
    s[`worker${i}Main`] = threadCpuSeconds(pid, pid);
  });
  return s;
}

export interface ShoalRun {
  seconds: number;
  /** Warm-up batches run before the timed one until every worker had run an item. */
  warmUpBatches: number;
  itemsPerS: number;
  runMsTotal: number;
  byWorker: Record<string, number>;
  /** CPU ms per item during the timed batch, by process (workerNMain: the worker's main thread only). */
  cpuMsPerItem: Record<string, number>;
  /**
   * CPU ms per item of each worker's threads during the timed batch, the busiest first (Node does
   * not name its threads: the first is the inference thread, `main` the main thread, the rest
   * onnxruntime's, libuv's and libvips' threads).
   */
  threadCpuMsPerItem: Record<string, { tid: string; ms: number }[]>;
}

/**
 * One timed row through `shoal up`: its items, its warm-up, and the direct run it is compared
 * with. The direct run is measured next to each round's timed batch (before it in odd rounds,
 * after it in even ones), in this process, while `shoal up` is idle: this machine's speed moves
 * by tens of percent within a minute (the same items ran 7 and 9.5 CPU-ms apart in runs minutes
 * apart), so a ratio is only worth something between runs measured side by side.
 */
interface TimedRow {
  list: ItemList;
  warm: ItemList;
  direct?: () => Promise<DirectRun>;
}

/** One round of a row: the timed batch through `shoal up` and the direct run (when the row has one), in the round's order (shoalFirstIn). */
interface Round {
  shoal: ShoalRun;
  direct?: DirectRun;
}

async function throughShoalUp(
  workers: number,
  runs: TimedRow[],
  log: (m: string) => void,
  profileDir: string | undefined,
  extraArgs: string[] = [],
  idleSeconds = 0,
  rounds = 1,
): Promise<{ runs: Round[][]; profiles: Record<string, ProfileSummary>; idle?: IdleCost }> {
  const dataDir = mkdtempSync(join(tmpdir(), "shoal-bench-up-"));
  const grpcPort = await freePort();
  const natsPort = await freePort();
  let up: BenchProc | undefined;
  let children: number[] = [];
  let client: TestClient | undefined;
  const out: Round[][] = [];
  /** The timed batches, for the profiles: start-up and warm-up left out. */
  const windows: { fromUs: number; toUs: number }[] = [];
  let procs: UpProcs | undefined;
  let idle: IdleCost | undefined;
  try {
    // --cpu-prof: every Node process of `shoal up` writes its main thread's profile when it exits
    // (node refuses --cpu-prof in NODE_OPTIONS, so a preloaded module does it; cpu-profile-preload.ts).
    const preload = new URL("../lib/cpu-profile-preload.js", import.meta.url).href;
    const env: Record<string, string> = profileDir
      ? { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ""} --import=${preload}`.trim(), SHOAL_BENCH_CPU_PROFILE_DIR: profileDir }
      : {};
    const maxItems = Math.max(50, ...runs.map((r) => r.list.length));
    up = spawnTracked(
      "shoal up",
      process.execPath,
      [
        CLI, "up", "--workers", String(workers), "--grpc-port", String(grpcPort), "--nats-port", String(natsPort),
        "--metrics-port", "0", "--http-port", "0", "--data-dir", dataDir, "--gpu", "none", "--max-items", String(maxItems), "--log-level", "warn", "--log-format", "json", ...extraArgs,
      ],
      env,
    );
    await up.waitForLine((l) => l.includes("Shoal is up"), 180_000);
    children = childPids(up.pid);
    children.forEach(trackPid);
    procs = rolesOf(up.pid, children);
    log(`shoal up: ${workers} workers ready (pids ${[up.pid, ...children].join(", ")})`);
    client = new TestClient(`127.0.0.1:${grpcPort}`);
    for (const { list, warm, direct: directRun } of runs) {
      // Warm every worker, as direct warms every thread. Placement keeps a short batch on the
      // worker that holds the model already (a second worker would pay the model's load for a
      // few items: scheduler/affinity.ts, the switch rule), leaving the other to meet the model
      // and the items' shape first in the timed batch. So warm-up batches go on, each twice the
      // last (4, 8, ... 64 items), until each worker has run one item: a batch large enough
      // repays the load on a second worker, as the timed batch does.
      const warmed = new Set<string>();
      let warmUpBatches = 0;
      while (warmed.size < workers && warmUpBatches < WARM_UP_BATCHES) {
        const n = warm.length * 2 ** warmUpBatches;
        const w = await runBatch(client, { items: Array.from({ length: n }, (_, i) => warm[i % warm.length]!) }, 300_000);
        if (!w) throw new Error("shoal up: the warm-up batch did not finish");
        warmUpBatches++;
        for (const r of w.results) warmed.add(r.workerId);
      }
      if (warmed.size < workers) log(`shoal up: after ${warmUpBatches} warm-up batches only ${[...warmed].join(", ")} ran an item`);
      const row: Round[] = [];
      out.push(row);
      for (let round = 0; round < rounds; round++) {
        // Which side goes first alternates (direct first in odd rounds, `shoal up` in even ones):
        // the side that runs right after the other's 2 cores of inference runs slower on this
        // machine, and with direct always first the fleet always paid for it.
        const shoalFirst = shoalFirstIn(round);
        let d: DirectRun | undefined;
        let shoal: ShoalRun;
        if (shoalFirst) {
          shoal = await timedBatch(client, procs, list, warmUpBatches, windows);
          d = directRun ? await directRun() : undefined;
        } else {
          d = directRun ? await directRun() : undefined;
          shoal = await timedBatch(client, procs, list, warmUpBatches, windows);
        }
        row.push({ shoal, ...(d ? { direct: d } : {}) });
        if (d) log(`round ${round + 1} of ${rounds} (${shoalFirst ? "shoal up first" : "direct first"}): direct ${d.itemsPerS.toFixed(2)}, shoal up ${shoal.itemsPerS.toFixed(2)} items/s (${(shoal.itemsPerS / d.itemsPerS).toFixed(3)})`);
      }
    }
    if (idleSeconds > 0) idle = await measureIdle(procs, idleSeconds);
  } finally {
    client?.close();
    if (up) {
      // SIGTERM: `shoal up` drains its workers and stops the coordinator and nats-server.
      await stopProc(up, "SIGTERM", 30_000);
      for (const pid of children) {
        try {
          process.kill(pid, 0);
          process.kill(pid, "SIGKILL");
        } catch {
          /* already gone */
        }
        untrackPid(pid);
      }
    }
    rmSync(dataDir, { recursive: true, force: true });
  }
  // Profiles are named <pid>.cpuprofile (the main thread of that process); only the timed batches count.
  const profiles: Record<string, ProfileSummary> = {};
  if (profileDir && procs) {
    const roles: [string, number | undefined][] = [["coordinator", procs.coordinator], ...procs.workers.map((pid, i): [string, number] => [`worker${i}Main`, pid])];
    for (const [role, pid] of roles) {
      const file = join(profileDir, `${pid}.cpuprofile`);
      if (pid !== undefined && existsSync(file)) profiles[role] = summarizeProfile(file, 30, process.cwd(), windows);
    }
  }
  return { runs: out, profiles, ...(idle ? { idle } : {}) };
}

/** One timed batch through `shoal up`, with the CPU every process and worker thread spent on it. */
async function timedBatch(client: TestClient, procs: UpProcs, list: ItemList, warmUpBatches: number, windows: { fromUs: number; toUs: number }[]): Promise<ShoalRun> {
  const before = cpuSnapshot(procs);
  const threadsBefore = procs.workers.map((pid) => threadsCpuSeconds(pid));
  const fromUs = Number(process.hrtime.bigint() / 1000n);
  const t0 = performance.now();
  const batch = await runBatch(client, { items: list }, 600_000);
  const seconds = (performance.now() - t0) / 1000;
  windows.push({ fromUs, toUs: Number(process.hrtime.bigint() / 1000n) });
  const after = cpuSnapshot(procs);
  const threadsAfter = procs.workers.map((pid) => threadsCpuSeconds(pid));
  if (!batch) throw new Error("shoal up: the batch did not finish within 600 s");
  const ok = batch.results.filter((r) => r.status === ItemStatus.ITEM_STATUS_SUCCEEDED).length;
  if (ok !== list.length) throw new Error(`shoal up: ${ok} of ${list.length} items succeeded: ${JSON.stringify(batch.results.find((r) => r.error)?.error)}`);
  return {
    seconds,
    warmUpBatches,
    itemsPerS: list.length / seconds,
    runMsTotal: batch.results.reduce((s, r) => s + Number(r.runMs), 0),
    byWorker: Object.fromEntries([...new Set(batch.results.map((r) => r.workerId))].map((w) => [w, batch.results.filter((r) => r.workerId === w).length])),
    cpuMsPerItem: Object.fromEntries(Object.keys(after).map((k) => [k, ((after[k]! - (before[k] ?? 0)) * 1000) / list.length])),
    threadCpuMsPerItem: Object.fromEntries(
      procs.workers.map((pid, i) => [
        `worker${i}`,
        Object.entries(threadsAfter[i]!)
          .map(([tid, cpu]) => ({ tid: tid === String(pid) ? "main" : tid, ms: ((cpu - (threadsBefore[i]![tid] ?? 0)) * 1000) / list.length }))
          .filter((t) => t.ms >= 0.05)
          .sort((a, b) => b.ms - a.ms),
      ]),
    ),
  };
}

/** CPU ms per second of each process of `shoal up` with no batch, and of them all (`fleet`). */
export type IdleCost = Record<string, number>;

/**
 * The fleet's idle cost (issue 13): after the timed batches, with nothing submitted, the CPU of
 * every process over `seconds` (after IDLE_SETTLE_MS for the last outcomes, acks, timers and
 * collections to settle).
 * What the fleet spends per second whether items flow or not; at 512 × 512 (~10 items/s) every
 * ms/s of it is ~0.1 CPU-ms per item. bench/idle-cost.ts measures the same in more detail.
 */
async function measureIdle(p: UpProcs, seconds: number): Promise<IdleCost> {
  await new Promise((r) => setTimeout(r, IDLE_SETTLE_MS));
  const pids: Record<string, number> = { up: p.up, ...(p.coordinator ? { coordinator: p.coordinator } : {}), ...(p.nats ? { nats: p.nats } : {}) };
  p.workers.forEach((pid, i) => (pids[`worker${i}`] = pid));
  const before = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, threadCpu(pid)]));
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const wallS = (performance.now() - t0) / 1000;
  // Per thread (bench/lib/thread-cpu.ts): pool threads ending in the window made a sum over live threads negative.
  const out: IdleCost = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, (cpuSecondsBetween(before[k]!, threadCpu(pid)) * 1000) / wallS]));
  out.fleet = Object.values(out).reduce((a, b) => a + b, 0);
  return out;
}

/**
 * The idle window. Sampled in 2.5 s steps for 40 s after the batches, every process idles at
 * 2-5 ms/s but now and then spends 100-150 CPU-ms at once (a full collection: 40-56 ms/s in its
 * step), each process once in 15-30 s, at no fixed time. A 10 s window met none of them or two
 * (12.7 and 50.3 ms/s in two runs of the same build); 30 s averages over them.
 */
const IDLE_SECONDS = 30;

/**
 * Rounds of a direct run and a `shoal up` run per row, in alternating order (1 round, direct
 * first, with --quick); the row reports the median round (medianRound). Three rounds add about a
 * minute to the case.
 */
const ROUNDS = 3;

/**
 * The idle window starts this long after the last batch. A Node process that allocated and then
 * went quiet runs V8's memory reducer: up to three full collections, the first about 8 s after
 * the allocation stopped (measured: `shoal up`'s own process, idle since its start, spends about
 * 200 CPU-ms on them 11 s after its workers are ready, in `--trace-gc`). They happen once per
 * burst, not per second, and a window that met them read 31-36 ms/s instead of 13. The idle-cost
 * runs in docs/performance.md use `node dist/bench/idle-cost.js --settle 15` for the same reason.
 */
const IDLE_SETTLE_MS = 15_000;

/** Warm-up batches of 4, 8, 16, 32 and 64 items at most (see throughShoalUp). */
const WARM_UP_BATCHES = 5;

function idleMetric(idle: IdleCost | undefined): Metric[] {
  if (!idle) return [];
  return [
    check({
      name: `fleet idle CPU ms/s, every process (shoal up --workers 2 after its batches, nothing submitted, ${IDLE_SECONDS} s)`,
      value: idle.fleet!,
      unit: "ms/s",
      target: { of: "value", op: "<=", threshold: 10, text: "≤ 10 ms/s" },
    }),
  ];
}

function warmOf(size: number, steps: number): ItemList {
  return items(4, size, steps, "warm-up");
}

/**
 * SHOAL_BENCH_ONNX_ROWS=large runs only the 512 × 512 rows (direct both ways, one `shoal up`):
 * a quarter of the case's time, for alternating before/after runs of the large item path.
 * Unset or "all": every row.
 */
function largeOnly(): boolean {
  const rows = process.env.SHOAL_BENCH_ONNX_ROWS ?? "all";
  if (rows !== "all" && rows !== "large") throw new Error(`SHOAL_BENCH_ONNX_ROWS: "${rows}" must be all or large`);
  return rows === "large";
}

/** The reference at 512 × 512: direct batched and one at a time, the faster of the two. */
async function directLarge(ctx: CaseContext, threads: number, largeList: ItemList, largeWarm: ItemList, size: number) {
  // At this size a batch of 8 images can be slower per image than one at a time (memory traffic
  // of 8 × 512 × 512 activations): the reference is the faster of the two, what a script calling
  // onnxruntime-node directly would pick.
  const batched = await direct(threads, true, largeList, largeWarm);
  const alone = await direct(threads, false, largeList, largeWarm);
  ctx.log(`direct ${size}×${size}: ${batched.itemsPerS.toFixed(2)} items/s batched, ${alone.itemsPerS.toFixed(2)} items/s one at a time`);
  return { ...(batched.itemsPerS >= alone.itemsPerS ? batched : alone), batching: batched.itemsPerS >= alone.itemsPerS, ways: { batched, alone } };
}

/** The results file's 512 × 512 direct rows: the faster way, then each way. */
function directLargeRaw({ ways, ...best }: DirectRun): Record<string, DirectRun | undefined> {
  return { directLarge: best, directLargeBatched: ways?.batched, directLargeUnbatched: ways?.alone };
}

/** Whether `shoal up` runs before direct in round `round` (0-based): in every second round. */
function shoalFirstIn(round: number): boolean {
  return round % 2 === 1;
}

/** Which side ran first in each round (raw.ratios and raw.largeRatios are in this order). */
function roundOrder(rounds: number): string[] {
  return Array.from({ length: rounds }, (_, i) => (shoalFirstIn(i) ? "shoal up first" : "direct first"));
}

/**
 * The round whose ratio to its own direct run is the median of the row's (the lower middle of an
 * even count): the row reports that round whole, so its items/s, its direct reference and its
 * CPU rows come from the same minute. Every round's ratio is kept beside it.
 */
function medianRound(row: Round[]): { shoal: ShoalRun; direct: DirectRun; ratios: number[] } {
  const paired = row.filter((r): r is Required<Round> => r.direct !== undefined);
  if (paired.length === 0) throw new Error("onnx: a row without direct runs has no ratio");
  const ratio = (r: Required<Round>) => r.shoal.itemsPerS / r.direct.itemsPerS;
  const sorted = [...paired].sort((a, b) => ratio(a) - ratio(b));
  const mid = sorted[Math.floor((sorted.length - 1) / 2)]!;
  return { shoal: mid.shoal, direct: mid.direct, ratios: paired.map(ratio) };
}

const mainMsOf = (r: ShoalRun) => Object.entries(r.cpuMsPerItem).filter(([k]) => /^worker\d+Main$/.test(k)).reduce((a, [, v]) => a + v, 0);
const outsideOf = (r: ShoalRun) => mainMsOf(r) + (r.cpuMsPerItem.coordinator ?? 0) + (r.cpuMsPerItem.nats ?? 0);

/** CPU-ms per item of every process of `shoal up` (workers whole: inference and encoding included). */
const fleetCpuOf = (r: ShoalRun) => Object.entries(r.cpuMsPerItem).filter(([k]) => !/Main$/.test(k)).reduce((a, [, v]) => a + v, 0);

function largeMetrics(large: { size: number }, sLarge: ShoalRun, dLarge: DirectRun): Metric[] {
  return [
    check({
      name: `imagegen-tiny ${large.size}×${large.size} items/s through shoal up`,
      value: sLarge.itemsPerS,
      unit: "items/s",
      reference: { label: `onnxruntime direct (${dLarge.batching ? "batched" : "batching off"}: the faster)`, value: dLarge.itemsPerS, unit: "items/s" },
      ratio: sLarge.itemsPerS / dLarge.itemsPerS,
      target: { of: "ratio", op: ">=", threshold: TARGET_RATIO_LARGE, text: `≥ ${TARGET_RATIO_LARGE} × direct` },
    }),
    {
      name: `CPU-ms per item outside inference (${large.size}×${large.size}: coordinator, nats-server, worker main threads)`,
      value: outsideOf(sLarge),
      unit: "ms",
    },
    {
      // On a saturated machine the items/s ratio follows this one: every CPU-ms the fleet spends
      // beyond direct's is taken from inference.
      name: `CPU-ms per item, every process (${large.size}×${large.size})`,
      value: fleetCpuOf(sLarge),
      unit: "ms",
      reference: { label: "direct, the same process", value: dLarge.cpuMsPerItem, unit: "ms" },
      ratio: fleetCpuOf(sLarge) / dLarge.cpuMsPerItem,
    },
  ];
}

async function runLargeOnly(ctx: CaseContext, large: { n: number; size: number; steps: number }, largeList: ItemList, largeWarm: ItemList, workers: number, threads: number): Promise<CaseOutcome> {
  ctx.log(`SHOAL_BENCH_ONNX_ROWS=large: only the ${large.size}×${large.size} rows; direct: ${large.n} items`);
  let profileDir: string | undefined;
  if (ctx.profileDir) {
    profileDir = join(ctx.profileDir, `onnx-${Date.now()}`);
    mkdirSync(profileDir, { recursive: true });
  }
  const rounds = ctx.quick ? 1 : ROUNDS;
  const largeDirect = () => directLarge(ctx, threads, largeList, largeWarm, large.size);
  const { runs, profiles, idle } = await throughShoalUp(workers, [{ list: largeList, warm: largeWarm, direct: largeDirect }], ctx.log, profileDir, [], ctx.quick ? 0 : IDLE_SECONDS, rounds);
  const mLarge = medianRound(runs[0]!);
  const sLarge = mLarge.shoal;
  const dLargeBest = mLarge.direct;
  ctx.log(`shoal up: ${sLarge.itemsPerS.toFixed(2)} items/s at ${large.size}×${large.size}`);
  return {
    params: { rows: "large", model: "imagegen-tiny", workers, threadsPerWorker: 1, directThreads: threads, large: { items: large.n, width: large.size, height: large.size, steps: large.steps }, roundOrder: roundOrder(rounds) },
    raw: { ...directLargeRaw(dLargeBest), shoalUpLarge: sLarge, largeRatios: mLarge.ratios, ...(idle ? { idleCpuMsPerS: idle } : {}), ...(Object.keys(profiles).length > 0 ? { profiles } : {}) },
    metrics: [...largeMetrics(large, sLarge, dLargeBest), ...idleMetric(idle)],
  };
}

async function run(ctx: CaseContext): Promise<CaseOutcome> {
  // 128×128, 4 steps: an item takes a few ms, so it takes hundreds of items for the run to last
  // seconds rather than a fraction of one. 512×512 items take 16 × the pixels: fewer of them.
  const p = ctx.quick ? { n: 16, size: 64, steps: 2 } : { n: 400, size: 128, steps: 4 };
  const large = ctx.quick ? { n: 4, size: 128, steps: 2 } : { n: 48, size: 512, steps: 4 };
  const workers = 2;
  const threadsPerWorker = 1;
  const threads = workers * threadsPerWorker;
  const list = items(p.n, p.size, p.steps);
  const warm = warmOf(p.size, p.steps);
  const largeList = items(large.n, large.size, large.steps, "large image");
  const largeWarm = warmOf(large.size, large.steps);
  if (largeOnly()) return runLargeOnly(ctx, large, largeList, largeWarm, workers, threads);

  ctx.log(`direct: OnnxBackend with ${threads} threads, ${p.n} items ${p.size}×${p.size}, ${p.steps} steps, all submitted at once`);
  const alone = await direct(threads, false, list, warm);
  ctx.log(`direct, every item alone (batching off): ${alone.itemsPerS.toFixed(2)} items/s`);
  const rounds = ctx.quick ? 1 : ROUNDS;
  const smallDirect = () => direct(threads, true, list, warm);
  const largeDirect = () => directLarge(ctx, threads, largeList, largeWarm, large.size);
  let profileDir: string | undefined;
  if (ctx.profileDir) {
    profileDir = join(ctx.profileDir, `onnx-${Date.now()}`);
    mkdirSync(profileDir, { recursive: true });
  }
  ctx.log(`shoal up --workers ${workers} (1 thread each)${profileDir ? `, profiles in ${profileDir}` : ""}`);
  const { runs, profiles, idle } = await throughShoalUp(
    workers,
    [
      { list, warm, direct: smallDirect },
      { list: largeList, warm: largeWarm, direct: largeDirect },
    ],
    ctx.log,
    profileDir,
    [],
    ctx.quick ? 0 : IDLE_SECONDS,
    rounds,
  );
  const small = medianRound(runs[0]!);
  const mLarge = medianRound(runs[1]!);
  const [s, d] = [small.shoal, small.direct];
  const [sLarge, dLarge] = [mLarge.shoal, mLarge.direct];
  // Context: the same 128×128 items with --max-in-flight 16 given explicitly (two groups of
  // imagegen-tiny's max_batch 8 per thread). Since the worker's default fills batches
  // (worker/options.ts defaultMaxInFlight) this is also the default for 1 thread; the row stays
  // to compare against runs of older code, where the default was 2 × threads.
  const deep = (await throughShoalUp(workers, [{ list, warm }], ctx.log, undefined, ["--max-in-flight", String(DEEP_MAX_IN_FLIGHT)])).runs[0]![0]!.shoal;
  ctx.log(`shoal up --max-in-flight ${DEEP_MAX_IN_FLIGHT}: ${deep.itemsPerS.toFixed(2)} items/s at ${p.size}×${p.size}`);
  ctx.log(`shoal up: ${s.itemsPerS.toFixed(2)} items/s at ${p.size}×${p.size}, ${sLarge.itemsPerS.toFixed(2)} items/s at ${large.size}×${large.size}`);
  const mainMs = mainMsOf;
  const outside = outsideOf;
  const metrics: Metric[] = [
    check({
      name: "imagegen-tiny items/s through shoal up",
      value: s.itemsPerS,
      unit: "items/s",
      reference: { label: "onnxruntime direct", value: d.itemsPerS, unit: "items/s" },
      ratio: s.itemsPerS / d.itemsPerS,
      target: { of: "ratio", op: ">=", threshold: TARGET_RATIO, text: `≥ ${TARGET_RATIO} × direct` },
    }),
    {
      name: "the same vs direct, every item alone",
      value: s.itemsPerS,
      unit: "items/s",
      reference: { label: "direct, batching off", value: alone.itemsPerS, unit: "items/s" },
      ratio: s.itemsPerS / alone.itemsPerS,
    },
    ...largeMetrics(large, sLarge, dLarge),
    {
      name: `the same with --max-in-flight ${DEEP_MAX_IN_FLIGHT} (context)`,
      value: deep.itemsPerS,
      unit: "items/s",
      reference: { label: "onnxruntime direct", value: d.itemsPerS, unit: "items/s" },
      ratio: deep.itemsPerS / d.itemsPerS,
    },
    check({
      name: `CPU-ms per item outside inference (${p.size}×${p.size}: coordinator, nats-server, worker main threads)`,
      value: outside(s),
      unit: "ms",
      target: { of: "value", op: "<=", threshold: 1, text: "≤ 1 CPU-ms per item" },
    }),
    {
      name: `CPU-ms per item on worker main threads (${p.size}×${p.size})`,
      value: mainMs(s),
      unit: "ms",
    },
    {
      name: `CPU-ms per item outside inference with --max-in-flight ${DEEP_MAX_IN_FLIGHT} (context)`,
      value: outside(deep),
      unit: "ms",
    },
    ...idleMetric(idle),
  ];
  return {
    params: {
      items: p.n, model: "imagegen-tiny", width: p.size, height: p.size, steps: p.steps, workers, threadsPerWorker, directThreads: threads, warmUpItems: warm.length,
      large: { items: large.n, width: large.size, height: large.size, steps: large.steps },
      roundOrder: roundOrder(rounds),
    },
    raw: { direct: d, directUnbatched: alone, shoalUp: s, ratios: small.ratios, ...directLargeRaw(dLarge), shoalUpLarge: sLarge, largeRatios: mLarge.ratios, shoalUpDeep: deep, ...(idle ? { idleCpuMsPerS: idle } : {}), ...(Object.keys(profiles).length > 0 ? { profiles } : {}) },
    metrics,
  };
}

export const onnxCase: BenchCase = {
  name: "onnx",
  title: "real ONNX: imagegen-tiny items/s through `shoal up --workers 2` vs onnxruntime-node directly with the same threads, at 128×128 and 512×512",
  simulated: false,
  target: "≥ 0.9 × direct onnxruntime-node (128×128); ≥ 0.97 × at 512×512",
  run,
};
