// cluster: what a 3-node JetStream cluster with every store on all three servers (--replicas 3)
// costs against the single nats-server, measured back to back in one run with the same
// coordinator, the same two SIMULATED workers and the same zero-work items:
//   - dispatch rate: items/s of a few large batches submitted at once;
//   - added latency: one 1-item RunBatch at a time (p50, p99), the per-item path's floor.
// Every durable write of the path (batch record, results stream, terminal record) is a
// replicated JetStream write on the cluster, acknowledged once a majority holds it.

import { Stack } from "../../test/harness/processes.js";
import { NatsCluster } from "../../test/harness/nats-cluster.js";
import { TestClient } from "../../test/harness/client.js";
import { stopStack, trackStack } from "../lib/procs.js";
import { check, type CaseOutcome, type Metric } from "../lib/report.js";
import { BENCH_LOG_LEVEL, runBatch, simWorker } from "../lib/shoal.js";
import { percentile } from "../lib/stats.js";
import type { BenchCase, CaseContext } from "./case.js";

interface Shape {
  batches: number;
  batchSize: number;
  idleCalls: number;
}

interface Measured {
  itemsPerS: number;
  p50Ms: number;
  p99Ms: number;
  lost: number;
}

const zeroItems = (n: number) => Array.from({ length: n }, () => ({ model: "sim-zero", params: {} }));

/** One coordinator and two simulated workers on `natsUrl`; the peak, then the unloaded floor. */
async function measure(stack: Stack, natsUrl: string, replicas: number, p: Shape, ctx: CaseContext, label: string): Promise<Measured> {
  stack.natsUrl = natsUrl;
  const r = ["--replicas", String(replicas)];
  await stack.startCoordinator(["--log-level", BENCH_LOG_LEVEL, "--heartbeat-timeout", "3s", "--max-items", "100000", "--max-queued-items", "10000000", ...r]);
  await Promise.all([1, 2].map((i) => stack.startWorker(`${label}-${i}`, [...simWorker(`${label}-${i}`, "80GB", 2000, 256).args, ...r])));
  const client = new TestClient(stack.grpcAddr);
  try {
    await client.waitForWorkers(2, 120_000);
    if (!(await runBatch(client, { items: zeroItems(500) }, 60_000))) throw new Error(`${label}: warm-up batch did not finish within 60 s`);
    ctx.log(`${label}: peak, ${p.batches} batches × ${p.batchSize} sim-zero items at once`);
    const t0 = performance.now();
    let end = t0;
    const done = await Promise.all(
      Array.from({ length: p.batches }, () =>
        runBatch(client, { items: zeroItems(p.batchSize) }, 300_000).then((b) => {
          if (b) end = performance.now();
          return b;
        }),
      ),
    );
    let lost = done.filter((b) => !b).length * p.batchSize;
    const finished = p.batches * p.batchSize - lost;
    if (finished === 0) throw new Error(`${label}: no batch finished before its deadline`);
    const ok = done.reduce((s, b) => s + (b?.succeeded ?? 0), 0);
    if (ok !== finished) throw new Error(`${label}: ${ok} of ${finished} items of finished batches succeeded`);
    ctx.log(`${label}: unloaded latency, ${p.idleCalls} one-item RunBatch calls`);
    const idle: number[] = [];
    for (let i = 0; i < p.idleCalls; i++) {
      const s = performance.now();
      const b = await runBatch(client, { items: zeroItems(1) }, 30_000);
      if (!b) {
        lost++;
        continue;
      }
      if (b.succeeded !== 1) throw new Error(`${label}: a one-item call did not succeed`);
      idle.push(performance.now() - s);
    }
    return { itemsPerS: finished / ((end - t0) / 1000), p50Ms: percentile(idle, 50), p99Ms: percentile(idle, 99), lost };
  } finally {
    client.close();
  }
}

async function run(ctx: CaseContext): Promise<CaseOutcome> {
  const p: Shape = ctx.quick ? { batches: 2, batchSize: 1000, idleCalls: 20 } : { batches: 6, batchSize: 10_000, idleCalls: 200 };
  const single = trackStack(new Stack());
  let one: Measured;
  try {
    await single.startNats();
    one = await measure(single, single.natsUrl, 1, p, ctx, "single");
  } finally {
    await stopStack(single);
  }
  const cluster = new NatsCluster(3);
  const onCluster = trackStack(new Stack());
  let three: Measured;
  try {
    ctx.log("starting a 3-node JetStream cluster (routes on loopback)");
    await cluster.start();
    three = await measure(onCluster, cluster.urls, 3, p, ctx, "cluster");
  } finally {
    await stopStack(onCluster);
    await cluster.stop();
  }
  const metrics: Metric[] = [
    // Our own bar, not the (it asks for the numbers): surviving the loss of a server
    // should cost at most half the dispatch rate, here where three servers share one machine.
    check({
      name: "R3 cluster dispatch items/s",
      value: three.itemsPerS,
      unit: "items/s",
      reference: { label: "single nats-server", value: one.itemsPerS, unit: "items/s" },
      ratio: three.itemsPerS / one.itemsPerS,
      target: { of: "ratio", op: ">=", threshold: 0.5, text: "≥ 0.5 × single server" },
    }),
    {
      name: "R3 cluster added latency p50",
      value: three.p50Ms,
      unit: "ms",
      reference: { label: "single nats-server", value: one.p50Ms, unit: "ms" },
      ratio: three.p50Ms / one.p50Ms,
    },
    {
      name: "R3 cluster added latency p99",
      value: three.p99Ms,
      unit: "ms",
      reference: { label: "single nats-server", value: one.p99Ms, unit: "ms" },
      ratio: three.p99Ms / one.p99Ms,
    },
  ];
  return {
    params: { ...p, workers: 2, replicasOnCluster: 3, servers: 3 },
    raw: { single: one, cluster: three },
    metrics,
    notes: [
      "Both runs on one machine: the three servers share its cores and disk, so the cluster pays replication without gaining machines. Items are SIMULATED (sim-zero).",
      ...(one.lost + three.lost > 0 ? [`lost (deadline passed): ${one.lost} single, ${three.lost} cluster`] : []),
    ],
  };
}

export const clusterCase: BenchCase = {
  name: "cluster",
  title: "3-node R3 JetStream cluster vs one nats-server: dispatch rate and added latency",
  simulated: true,
  target: "dispatch on a 3-node R3 cluster ≥ 0.5 × one nats-server; latency reported as ratios, all in one run",
  run,
};
