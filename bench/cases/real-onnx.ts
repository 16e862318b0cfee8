// real ONNX: imagegen-tiny items per second through `shoal up --workers 2` (nats-server,
// coordinator, two workers with one inference thread each, all real) against onnxruntime-node
// called directly in one process with the same number of threads (Shoal's OnnxBackend with
// threads = 2, no NATS, no gRPC, no artifact store, every item handed to it at once so its dynamic
// batching can group them), and, for context, the same with batching off (one image per
// session run, what a script calling onnxruntime-node item by item does). The same items on
// every side.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ItemStatus } from "../../proto/gen/shoal/v1/shoal.js";
import { CLI, freePort } from "../../test/harness/processes.js";
import { TestClient } from "../../test/harness/client.js";
import { OnnxBackend } from "../../worker/inference/onnx-backend.js";
import { cpuWindow, fleetOverheadByProcess, fleetOverheadMetric, shoalUpProcesses, type CpuPerItem } from "../lib/cpu-accounting.js";
import { childPids, spawnTracked, stopProc, trackPid, untrackPid, type BenchProc } from "../lib/procs.js";
import { check, type CaseOutcome } from "../lib/report.js";
import { runBatch } from "../lib/shoal.js";
import type { BenchCase, CaseContext } from "./case.js";

const TARGET_RATIO = 0.9;

function items(n: number, size: number, steps: number) {
  return Array.from({ length: n }, (_, i) => ({
    model: "imagegen-tiny",
    params: { prompt: `bench image ${i}: a red ceramic mug on a wooden table`, width: size, height: size, steps, seed: 1000 + i, guidance_scale: 7.5 },
  }));
}

async function direct(threads: number, batching: boolean, list: ReturnType<typeof items>, warm: ReturnType<typeof items>): Promise<{ seconds: number; itemsPerS: number; cpu: CpuPerItem }> {
  const backend = new OnnxBackend({ threads, batching });
  try {
    await backend.start();
    const runAll = (l: ReturnType<typeof items>, tag: string) =>
      Promise.all(l.map((it, i) => backend.run({ id: `${tag}-${i}`, model: it.model, params: it.params, batchId: "bench", index: i }, new AbortController().signal)));
    await runAll(warm, "warm");
    const cpu = cpuWindow({ direct: [process.pid] });
    const t0 = performance.now();
    const out = await runAll(list, "item");
    const seconds = (performance.now() - t0) / 1000;
    const cpuUse = cpu.end(list.length);
    if (out.some((o) => o.artifacts.length !== 1)) throw new Error("direct: an item produced no image");
    return { seconds, itemsPerS: list.length / seconds, cpu: cpuUse };
  } finally {
    await backend.close();
  }
}

async function throughShoalUp(workers: number, list: ReturnType<typeof items>, warm: ReturnType<typeof items>, log: (m: string) => void) {
  const dataDir = mkdtempSync(join(tmpdir(), "shoal-bench-up-"));
  const grpcPort = await freePort();
  const natsPort = await freePort();
  let up: BenchProc | undefined;
  let children: number[] = [];
  let client: TestClient | undefined;
  try {
    up = spawnTracked("shoal up", process.execPath, [
      CLI, "up", "--workers", String(workers), "--grpc-port", String(grpcPort), "--nats-port", String(natsPort),
      "--metrics-port", "0", "--http-port", "0", "--data-dir", dataDir, "--gpu", "none", "--max-items", String(Math.max(50, list.length)), "--log-level", "warn", "--log-format", "json",
    ]);
    await up.waitForLine((l) => l.includes("Shoal is up"), 180_000);
    children = childPids(up.pid);
    children.forEach(trackPid);
    log(`shoal up: ${workers} workers ready (pids ${[up.pid, ...children].join(", ")})`);
    client = new TestClient(`127.0.0.1:${grpcPort}`);
    if (!(await runBatch(client, { items: warm }, 300_000))) throw new Error("shoal up: the warm-up batch did not finish");
    const cpu = cpuWindow(shoalUpProcesses(up.pid));
    const t0 = performance.now();
    const batch = await runBatch(client, { items: list }, 600_000);
    const seconds = (performance.now() - t0) / 1000;
    const cpuUse = cpu.end(list.length);
    if (!batch) throw new Error("shoal up: the batch did not finish within 600 s");
    const ok = batch.results.filter((r) => r.status === ItemStatus.ITEM_STATUS_SUCCEEDED).length;
    if (ok !== list.length) throw new Error(`shoal up: ${ok} of ${list.length} items succeeded: ${JSON.stringify(batch.results.find((r) => r.error)?.error)}`);
    return {
      seconds,
      itemsPerS: list.length / seconds,
      cpu: cpuUse,
      runMsTotal: batch.results.reduce((s, r) => s + Number(r.runMs), 0),
      byWorker: Object.fromEntries([...new Set(batch.results.map((r) => r.workerId))].map((w) => [w, batch.results.filter((r) => r.workerId === w).length])),
    };
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
}

async function run(ctx: CaseContext): Promise<CaseOutcome> {
  // 128×128, 4 steps: an item takes a few ms, so it takes hundreds of items for the run to last
  // seconds rather than a fraction of one.
  const p = ctx.quick ? { n: 16, size: 64, steps: 2 } : { n: 400, size: 128, steps: 4 };
  const workers = 2;
  const threadsPerWorker = 1;
  const list = items(p.n, p.size, p.steps);
  const warm = items(4, p.size, p.steps).map((it, i) => ({ ...it, params: { ...it.params, prompt: `warm-up ${i}` } }));

  ctx.log(`direct: OnnxBackend with ${workers * threadsPerWorker} threads, ${p.n} items ${p.size}×${p.size}, ${p.steps} steps, all submitted at once`);
  const d = await direct(workers * threadsPerWorker, true, list, warm);
  ctx.log(`direct: ${d.itemsPerS.toFixed(2)} items/s`);
  const alone = await direct(workers * threadsPerWorker, false, list, warm);
  ctx.log(`direct, every item alone (batching off): ${alone.itemsPerS.toFixed(2)} items/s`);
  ctx.log(`shoal up --workers ${workers} (1 thread each)`);
  const s = await throughShoalUp(workers, list, warm, ctx.log);
  ctx.log(`shoal up: ${s.itemsPerS.toFixed(2)} items/s`);
  return {
    params: { items: p.n, model: "imagegen-tiny", width: p.size, height: p.size, steps: p.steps, workers, threadsPerWorker, directThreads: workers * threadsPerWorker, warmUpItems: warm.length },
    raw: { direct: d, directUnbatched: alone, shoalUp: s, fleetCpuMsPerItemOutsideInference: fleetOverheadByProcess(s.cpu, d.cpu, s.byWorker) },
    metrics: [
      check({
        name: "imagegen-tiny items/s through shoal up",
        value: s.itemsPerS,
        unit: "items/s",
        reference: { label: "onnxruntime direct", value: d.itemsPerS, unit: "items/s" },
        ratio: s.itemsPerS / d.itemsPerS,
        target: { of: "ratio", op: ">=", threshold: TARGET_RATIO, text: `≥ ${TARGET_RATIO} × direct` },
      }),
      fleetOverheadMetric(s.cpu, d.cpu),
      {
        name: "the same vs direct, every item alone",
        value: s.itemsPerS,
        unit: "items/s",
        reference: { label: "direct, batching off", value: alone.itemsPerS, unit: "items/s" },
        ratio: s.itemsPerS / alone.itemsPerS,
      },
    ],
  };
}

export const onnxCase: BenchCase = {
  name: "onnx",
  title: "real ONNX: imagegen-tiny items/s through `shoal up --workers 2` vs onnxruntime-node directly with the same threads",
  simulated: false,
  target: "≥ 0.9 × direct onnxruntime-node",
  run,
};
