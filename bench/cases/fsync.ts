// fsync: what `shoal up --fsync always` costs next to the default `--fsync interval` (2m), in
// dispatch rate and in latency. Two fleets run side by side in the same run, identical except for
// the nats-server config (the one `shoal up` writes, from cli/nats-config.ts): the whole path of
// the dispatch case, with SIMULATED zero-work items, so every millisecond measured is Shoal, NATS
// and the disk. The order alternates between rounds (interval first, then always first) so a
// machine that slows down during the run does not favour either mode.
//
// `always` makes nats-server fsync each JetStream write before acknowledging it. For sim-zero
// items (no artifacts) Shoal's durable writes are the batch record (KV), outcome group commits
// (stream) and the terminal batch (KV compare-and-set): a few fsyncs per batch and per group
// commit, not one per item. Items with artifacts add their object-store writes, which this case
// does not have; the raw JetStream figures show what each such write costs.

import { jetstream, jetstreamManager, StorageType } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { natsServerConfig, natsServerVersion, type FsyncMode } from "../../cli/nats-config.js";
import { ItemStatus } from "../../proto/gen/shoal/v1/shoal.js";
import { freePort, natsServerBinary, Stack } from "../../test/harness/processes.js";
import { readJetStreamSync, storeFileSystem } from "../lib/durability.js";
import { stopStack, trackStack } from "../lib/procs.js";
import { check, type CaseOutcome, type Metric } from "../lib/report.js";
import { runBatch, simWorker, startShoal, type ShoalStack } from "../lib/shoal.js";
import { maxOf, mean, percentile, sleep } from "../lib/stats.js";
import type { BenchCase, CaseContext } from "./case.js";

const MODES: FsyncMode[] = ["interval", "always"];
const DEFAULT_INTERVAL_MS = 120_000;

interface Fleet {
  mode: FsyncMode;
  shoal: ShoalStack;
  monitorPort: number;
}

interface ModeSamples {
  /** Raw JetStream next to Shoal: one client publishing to one file stream of the same server. */
  jsAckMs: number[];
  jsWindowed: { count: number; seconds: number }[];
  peak: { items: number; seconds: number }[];
  unloadedMs: number[];
  pacedBatchMs: number[];
  pacedItems: number;
  pacedSeconds: number;
  lost: number;
  varz: { sync_always?: boolean; sync_interval?: number } | undefined;
}

function zeroItems(n: number) {
  return Array.from({ length: n }, () => ({ model: "sim-zero", params: {} }));
}

async function startFleet(mode: FsyncMode, p: { workers: number; maxInFlight: number }): Promise<Fleet> {
  const bin = natsServerBinary();
  const stack = trackStack(new Stack());
  // Exactly what `shoal up --fsync <mode>` writes; the harness's monitoring port confirms it took.
  stack.natsConfig = natsServerConfig({ fsync: mode, fsyncIntervalMs: DEFAULT_INTERVAL_MS }, natsServerVersion(bin), bin).text;
  try {
    const shoal = await startShoal({
      stack,
      coordinatorArgs: ["--max-items", "100000", "--max-queued-items", "10000000"],
      workers: Array.from({ length: p.workers }, (_, i) => simWorker(`fsync-${mode}-${i + 1}`, "80GB", p.maxInFlight, 256)),
    });
    return { mode, shoal, monitorPort: stack.natsMonitorPort };
  } catch (err) {
    await stopStack(stack);
    throw err;
  }
}

/**
 * What one JetStream write costs on this disk in each mode, without Shoal: publish-ack latency
 * one at a time, then the rate with `window` publishes outstanding (a stream writes, and with
 * `always` fsyncs, one message at a time, so this is close to the ceiling of any one stream).
 */
async function rawJetStream(f: Fleet, sequential: number, windowed: number, window: number, s: ModeSamples): Promise<void> {
  const nc = await connect({ servers: f.shoal.stack.natsUrl, name: `bench-fsync-${f.mode}` });
  try {
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: "BENCH_FSYNC", subjects: ["bench.fsync.>"], storage: StorageType.File });
    const js = jetstream(nc);
    const payload = new Uint8Array(128);
    for (let i = 0; i < sequential; i++) {
      const t = performance.now();
      await js.publish("bench.fsync.seq", payload);
      s.jsAckMs.push(performance.now() - t);
    }
    let next = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: window }, async () => {
        while (next++ < windowed) await js.publish("bench.fsync.win", payload);
      }),
    );
    s.jsWindowed.push({ count: windowed, seconds: (performance.now() - t0) / 1000 });
    await jsm.streams.delete("BENCH_FSYNC");
  } finally {
    await nc.close();
  }
}

async function peak(f: Fleet, batches: number, batchSize: number, deadlineMs: number, s: ModeSamples): Promise<void> {
  const t0 = performance.now();
  let end = t0;
  const done = await Promise.all(
    Array.from({ length: batches }, () =>
      runBatch(f.shoal.client, { items: zeroItems(batchSize) }, deadlineMs).then((b) => {
        if (b) end = performance.now();
        return b;
      }),
    ),
  );
  const finished = done.filter((b) => b !== undefined);
  s.lost += (batches - finished.length) * batchSize;
  const ok = finished.reduce((n, b) => n + b.succeeded, 0);
  if (ok !== finished.length * batchSize) throw new Error(`${f.mode} peak: ${ok} of ${finished.length * batchSize} items of finished batches succeeded`);
  if (finished.length === 0) throw new Error(`${f.mode} peak: no batch finished within ${deadlineMs} ms`);
  s.peak.push({ items: ok, seconds: (end - t0) / 1000 });
}

async function unloaded(f: Fleet, calls: number, s: ModeSamples): Promise<void> {
  for (let i = 0; i < calls; i++) {
    const t = performance.now();
    const b = await runBatch(f.shoal.client, { items: zeroItems(1) }, 30_000);
    if (!b) {
      s.lost++;
      continue;
    }
    if (b.succeeded !== 1) throw new Error(`${f.mode}: a 1-item batch did not succeed`);
    s.unloadedMs.push(performance.now() - t);
  }
}

/** Open loop: batches start on schedule whether or not earlier ones finished. */
async function paced(f: Fleet, rate: number, seconds: number, batchesPerSecond: number, s: ModeSamples): Promise<{ batchSize: number; intervalMs: number; count: number }> {
  const batchSize = Math.max(1, Math.round(rate / batchesPerSecond));
  const intervalMs = (1000 * batchSize) / rate;
  const count = Math.max(1, Math.floor((seconds * 1000) / intervalMs));
  const calls: Promise<void>[] = [];
  const start = performance.now();
  let lastDone = start;
  let items = 0;
  for (let k = 0; k < count; k++) {
    const wait = start + k * intervalMs - performance.now();
    if (wait > 0) await sleep(wait);
    const t = performance.now();
    calls.push(
      runBatch(f.shoal.client, { items: zeroItems(batchSize) }, 30_000).then((b) => {
        if (!b) {
          s.lost += batchSize;
          return;
        }
        const e = performance.now();
        lastDone = Math.max(lastDone, e);
        if (b.results.some((r) => r.status !== ItemStatus.ITEM_STATUS_SUCCEEDED)) throw new Error(`${f.mode} paced: an item did not succeed`);
        s.pacedBatchMs.push(e - t);
        items += batchSize;
      }),
    );
  }
  await Promise.all(calls);
  s.pacedItems += items;
  s.pacedSeconds += (lastDone - start) / 1000;
  return { batchSize, intervalMs, count };
}

async function run(ctx: CaseContext): Promise<CaseOutcome> {
  const p = ctx.quick
    ? { rounds: 1, workers: 2, maxInFlight: 2000, warmItems: 100, batches: 2, batchSize: 500, unloadedCalls: 10, pacedSeconds: 1, batchesPerSecond: 20, jsSequential: 50, jsWindowed: 200, jsWindow: 32, settleMs: 200 }
    : { rounds: 4, workers: 2, maxInFlight: 2000, warmItems: 2000, batches: 4, batchSize: 5000, unloadedCalls: 100, pacedSeconds: 10, batchesPerSecond: 50, jsSequential: 500, jsWindowed: 5000, jsWindow: 64, settleMs: 2000 };
  const samples: Record<FsyncMode, ModeSamples> = {
    interval: { jsAckMs: [], jsWindowed: [], peak: [], unloadedMs: [], pacedBatchMs: [], pacedItems: 0, pacedSeconds: 0, lost: 0, varz: undefined },
    always: { jsAckMs: [], jsWindowed: [], peak: [], unloadedMs: [], pacedBatchMs: [], pacedItems: 0, pacedSeconds: 0, lost: 0, varz: undefined },
  };
  const pacedRates: number[] = [];
  let pacedShape: { batchSize: number; intervalMs: number; count: number } | undefined;
  let storeFs = "unknown";
  for (let round = 0; round < p.rounds; round++) {
    const order = round % 2 === 0 ? MODES : [...MODES].reverse();
    const fleets: Fleet[] = [];
    try {
      for (const mode of order) fleets.push(await startFleet(mode, p));
      storeFs = storeFileSystem(fleets[0]!.shoal.stack.dir);
      for (const f of fleets) {
        const v = await readJetStreamSync(f.monitorPort);
        samples[f.mode].varz = v;
        if ((v?.sync_always === true) !== (f.mode === "always")) throw new Error(`${f.mode}: nats-server reports sync_always ${v?.sync_always}`);
      }
      ctx.log(`round ${round + 1}/${p.rounds} (${order.join(" then ")}): warm-up, ${p.warmItems} items each`);
      for (const f of fleets) if (!(await runBatch(f.shoal.client, { items: zeroItems(p.warmItems) }, 60_000))) throw new Error(`${f.mode}: warm-up batch did not finish within 60 s`);
      // Each phase of one fleet is followed by a pause, so the other fleet is not measured while
      // the first one's processes still work off what the phase left (acks, state flushes).
      const eachFleet = async (phase: (f: Fleet) => Promise<unknown>) => {
        for (const f of fleets) {
          await phase(f);
          await sleep(p.settleMs);
        }
      };
      ctx.log(`raw JetStream: ${p.jsSequential} publishes one at a time, then ${p.jsWindowed} with ${p.jsWindow} outstanding`);
      await eachFleet((f) => rawJetStream(f, p.jsSequential, p.jsWindowed, p.jsWindow, samples[f.mode]));
      ctx.log(`peak: ${p.batches} batches × ${p.batchSize} sim-zero items at once, each mode in turn`);
      await eachFleet((f) => peak(f, p.batches, p.batchSize, ctx.quick ? 60_000 : 300_000, samples[f.mode]));
      ctx.log(`unloaded: ${p.unloadedCalls} one-item RunBatch calls, one at a time`);
      await eachFleet((f) => unloaded(f, p.unloadedCalls, samples[f.mode]));
      // The same offered load for both: half the slower mode's peak in this round.
      const last = (m: FsyncMode) => samples[m].peak.at(-1)!;
      const rate = 0.5 * Math.min(...MODES.map((m) => last(m).items / last(m).seconds));
      pacedRates.push(rate);
      ctx.log(`paced: ~${rate.toFixed(0)} items/s for ${p.pacedSeconds} s each`);
      await eachFleet(async (f) => (pacedShape = await paced(f, rate, p.pacedSeconds, p.batchesPerSecond, samples[f.mode])));
    } finally {
      for (const f of fleets) await f.shoal.stop();
    }
  }

  const rateOf = (m: FsyncMode) => {
    const items = samples[m].peak.reduce((n, x) => n + x.items, 0);
    const seconds = samples[m].peak.reduce((n, x) => n + x.seconds, 0);
    return items / seconds;
  };
  const [ri, ra] = [rateOf("interval"), rateOf("always")];
  const lat = (m: FsyncMode, which: "unloadedMs" | "pacedBatchMs", q: number) => percentile(samples[m][which], q);
  const pacedRate = mean(pacedRates);
  const lost = samples.interval.lost + samples.always.lost;
  const confirmed = MODES.every((m) => (samples[m].varz?.sync_always === true) === (m === "always")) ? 1 : 0;
  const vs = (name: string, unit: string, always: number, interval: number): Metric => ({
    name,
    value: always,
    unit,
    reference: { label: "interval (2m)", value: interval, unit },
    ratio: always / interval,
  });
  const jsRate = (m: FsyncMode) => samples[m].jsWindowed.reduce((n, x) => n + x.count, 0) / samples[m].jsWindowed.reduce((n, x) => n + x.seconds, 0);
  const metrics: Metric[] = [
    vs("peak items/s with always", "items/s", ra, ri),
    vs(`raw JetStream publishes/s (${p.jsWindow} outstanding), always`, "msg/s", jsRate("always"), jsRate("interval")),
    vs("raw JetStream publish-ack p50, always", "ms", percentile(samples.always.jsAckMs, 50), percentile(samples.interval.jsAckMs, 50)),
    vs("unloaded 1-item RunBatch p50, always", "ms", lat("always", "unloadedMs", 50), lat("interval", "unloadedMs", 50)),
    vs("unloaded 1-item RunBatch p99, always", "ms", lat("always", "unloadedMs", 99), lat("interval", "unloadedMs", 99)),
    vs(`added latency p50 @ ${pacedRate.toFixed(0)} items/s, always`, "ms", lat("always", "pacedBatchMs", 50), lat("interval", "pacedBatchMs", 50)),
    vs(`added latency p99 @ ${pacedRate.toFixed(0)} items/s, always`, "ms", lat("always", "pacedBatchMs", 99), lat("interval", "pacedBatchMs", 99)),
    check({
      name: "nats-server /varz confirms each mode's sync setting",
      value: confirmed,
      unit: "",
      target: { of: "value", op: ">=", threshold: 1, text: "1 (else the ratios mean nothing)" },
    }),
    check({
      name: "items never finished (lost)",
      value: lost,
      unit: "items",
      target: { of: "value", op: "<=", threshold: 0, text: "0 (guarantee 2)" },
    }),
  ];
  const notes: string[] = [];
  if (storeFs === "tmpfs") notes.push("the JetStream store is on tmpfs, where fsync does nothing: the ratios do not show what a disk costs");
  const summary = (m: FsyncMode) => {
    const s = samples[m];
    return {
      rawJetStream: {
        publishAckMs: { count: s.jsAckMs.length, p50: percentile(s.jsAckMs, 50), p99: percentile(s.jsAckMs, 99), max: maxOf(s.jsAckMs) },
        windowed: { runs: s.jsWindowed, perSecond: jsRate(m) },
      },
      peak: { runs: s.peak, itemsPerS: rateOf(m) },
      unloadedMs: { calls: s.unloadedMs.length, p50: percentile(s.unloadedMs, 50), p99: percentile(s.unloadedMs, 99), max: maxOf(s.unloadedMs), mean: mean(s.unloadedMs) },
      paced: {
        items: s.pacedItems,
        achievedItemsPerS: s.pacedItems / s.pacedSeconds,
        batchLatencyMs: { p50: percentile(s.pacedBatchMs, 50), p90: percentile(s.pacedBatchMs, 90), p99: percentile(s.pacedBatchMs, 99), max: maxOf(s.pacedBatchMs) },
      },
      lostItems: s.lost,
      natsVarz: { syncAlways: s.varz?.sync_always === true, syncIntervalNs: s.varz?.sync_interval ?? 0 },
    };
  };
  return {
    params: {
      modes: { interval: "sync_interval: \"2m\" (the default)", always: "sync_interval: always" },
      rounds: p.rounds,
      order: "interval first in odd rounds, always first in even ones; both fleets run side by side",
      simulatedWorkersPerFleet: p.workers,
      workerMaxInFlight: p.maxInFlight,
      model: "sim-zero (SIMULATED, 0 bytes, work_ms 0)",
      peak: { batches: p.batches, batchSize: p.batchSize, warmUpItems: p.warmItems },
      unloadedCalls: p.unloadedCalls,
      rawJetStream: { payloadBytes: 128, sequential: p.jsSequential, windowed: p.jsWindowed, window: p.jsWindow },
      settleMsBetweenFleets: p.settleMs,
      paced: { itemsPerS: pacedRate, perRound: pacedRates, seconds: p.pacedSeconds, ...(pacedShape ?? {}) },
      storeFileSystem: storeFs,
      latencyDefinition: "as in the dispatch case: client-observed RunBatch time of the batch an item belongs to",
    },
    raw: {
      interval: summary("interval"),
      always: summary("always"),
      ratios: {
        peakItemsPerS: ra / ri,
        // How much the ratio moves between rounds says how far to trust it on a busy machine.
        peakItemsPerSPerRound: samples.always.peak.map((a, i) => a.items / a.seconds / (samples.interval.peak[i]!.items / samples.interval.peak[i]!.seconds)),
      },
    },
    metrics,
    notes,
  };
}

export const fsyncCase: BenchCase = {
  name: "fsync",
  title: "what --fsync always costs next to the default interval: items/s and latency through the whole path (SIMULATED zero-work items), same run",
  simulated: true,
  target: "measured, no target: the ratios say what `always` costs; nats-server must confirm each setting and no item may be lost",
  run,
};
