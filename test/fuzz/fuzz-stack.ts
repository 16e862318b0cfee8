// The fleet a fuzz campaign runs against: real nats-server, coordinator and worker processes
// (test/harness/processes.ts), with API keys on so the auth paths are fuzzed too, metrics ports
// to read shoal_protocol_errors_total from, and a worker id no generated string can name (so a
// fuzzed DrainWorker or drain subject never reaches the real worker by chance).

import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { BatchState, ItemStatus, type Batch } from "../../proto/gen/shoal/v1/shoal.js";
import { TestClient } from "../harness/client.js";
import { freePort, Stack, type Proc } from "../harness/processes.js";
import { GrpcTarget } from "./grpc-target.js";
import { NatsTarget } from "./nats-target.js";

export interface FuzzStack {
  stack: Stack;
  coordinator: Proc;
  worker: Proc;
  workerId: string;
  apiKey: string;
  client: TestClient;
  grpc: GrpcTarget;
  nats: NatsTarget;
  coordinatorMetricsPort: number;
  workerMetricsPort: number;
}

export interface FuzzStackOptions {
  /** Deadline of every fuzzed call; an answer later than this is a hang. */
  deadlineMs: number;
}

export async function startFuzzStack(opts: FuzzStackOptions): Promise<FuzzStack> {
  const stack = new Stack();
  try {
    const apiKey = `fuzz-${randomBytes(12).toString("hex")}`;
    const workerId = `fuzz-worker-${randomBytes(6).toString("hex")}`;
    const [coordinatorMetricsPort, workerMetricsPort] = [await freePort(), await freePort()];
    await stack.startNats();
    // A later --metrics-port wins over the harness's "--metrics-port 0".
    // An operator key, so DrainWorker is fuzzed past the role check too.
    const keysFile = join(stack.dir, "fuzz-keys.json");
    writeFileSync(keysFile, JSON.stringify({ tenants: [{ name: "fuzz", keys: [apiKey], role: "operator" }] }));
    const coordinator = await stack.startCoordinator(["--metrics-port", String(coordinatorMetricsPort), "--api-keys-file", keysFile, "--webhook-allow-private"]);
    const worker = await stack.startWorker(workerId, ["--vram", "4GiB", "--metrics-port", String(workerMetricsPort)]);
    const client = new TestClient(stack.grpcAddr, apiKey);
    await client.waitForWorkers(1);
    const grpc = new GrpcTarget(stack.grpcAddr, apiKey, opts.deadlineMs);
    const nats = await NatsTarget.connect(stack.natsUrl, "shoal", workerId);
    return { stack, coordinator, worker, workerId, apiKey, client, grpc, nats, coordinatorMetricsPort, workerMetricsPort };
  } catch (err) {
    await stack.stop();
    throw err;
  }
}

export async function stopFuzzStack(f: FuzzStack | undefined): Promise<void> {
  if (!f) return;
  f.client.close();
  f.grpc.close();
  await f.nats.close();
  await f.stack.stop();
}

/** Undefined while nats-server, coordinator and worker all live; otherwise who died and how. */
export function deadProcess(f: FuzzStack): string | undefined {
  for (const p of [f.stack.nats!, f.coordinator, f.worker]) {
    if (p.child.exitCode !== null || p.child.signalCode !== null) {
      const tail = p.output.slice(-15).join("\n");
      return `${p.name} (pid ${p.pid}) exited with ${p.child.exitCode ?? p.child.signalCode}; its last output:\n${tail}`;
    }
  }
  return undefined;
}

/** The sum of shoal_protocol_errors_total over its labels on one process's /metrics. */
export async function protocolErrors(port: number): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(10_000) });
  const text = await res.text();
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith("shoal_protocol_errors_total")) sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return sum;
}

/** A plain two-item batch, after the garbage: it must complete with both items SUCCEEDED. */
export async function ordinaryBatch(f: FuzzStack, timeoutMs = 120_000): Promise<Batch> {
  const { batchId } = await f.client.sdk.submitBatch(
    { items: [0, 1].map((i) => ({ model: "imagegen-tiny", params: { prompt: `after the fuzz ${i}`, width: 64, height: 64, steps: 1 } })) },
    { timeoutMs: 30_000 },
  );
  return f.client.waitTerminal(batchId, timeoutMs);
}

export function batchSucceeded(b: Batch): boolean {
  return b.state === BatchState.BATCH_STATE_COMPLETED && b.succeeded === b.total && b.results.every((r) => r.status === ItemStatus.ITEM_STATUS_SUCCEEDED);
}

/**
 * Waits until every batch the coordinator accepted during the campaign is terminal: nothing
 * accepted is dropped, however odd its labels, webhook or params. Returns the ids still open.
 */
export async function unfinished(f: FuzzStack, ids: readonly string[], timeoutMs: number): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  let open = [...new Set(ids)];
  while (open.length > 0 && Date.now() < deadline) {
    const still: string[] = [];
    for (const id of open) {
      const b = await f.client.sdk.getBatch(id, { timeoutMs: 10_000 });
      if (b.state < BatchState.BATCH_STATE_COMPLETED) still.push(id);
    }
    open = still;
    if (open.length > 0) await new Promise((r) => setTimeout(r, 250));
  }
  return open;
}
