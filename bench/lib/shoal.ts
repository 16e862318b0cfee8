// Real Shoal processes for the bench, through the integration-test harness: a nats-server with
// its own port and store, the coordinator and worker processes of the compiled CLI, and the SDK.

import { randomUUID } from "node:crypto";
import { status } from "@grpc/grpc-js";
import type { SubmitInput } from "../../cli/client.js";
import { isTerminal } from "../../coordinator/batch-store.js";
import { BatchState, ItemStatus, WorkerState, type Batch } from "../../proto/gen/shoal/v1/shoal.js";
import { Stack } from "../../test/harness/processes.js";
import { TestClient } from "../../test/harness/client.js";
import { stopStack, trackStack } from "./procs.js";

export interface WorkerSpec {
  id: string;
  args: string[];
}

export interface ShoalStack {
  stack: Stack;
  client: TestClient;
  /** Stops everything by pid (SIGKILL); the coordinator first gets SIGTERM when it is profiled. */
  stop(): Promise<void>;
}

/**
 * Bench processes log at warn: the harness reads every line, and info lines per batch would cost
 * CPU the bench itself needs. SHOAL_BENCH_LOG_LEVEL overrides it to look into a case (with
 * SHOAL_TEST_VERBOSE=1 to see the lines).
 */
export const BENCH_LOG_LEVEL = process.env.SHOAL_BENCH_LOG_LEVEL ?? "warn";

/** A SIMULATED worker: declared VRAM, items that sleep for work_ms. */
export function simWorker(id: string, vram: string, maxInFlight: number, threads = Math.min(256, maxInFlight), extra: string[] = []): WorkerSpec {
  return {
    id,
    args: ["--simulate", "--vram", vram, "--threads", String(threads), "--max-in-flight", String(maxInFlight), "--heartbeat-interval", WORKER_HEARTBEAT, "--log-level", BENCH_LOG_LEVEL, ...extra],
  };
}

export async function startShoal(opts: {
  coordinatorArgs?: string[];
  coordinatorNodeArgs?: string[];
  workers: WorkerSpec[];
  /** An existing stack whose nats-server is already running. */
  stack?: Stack;
  waitForWorkers?: boolean;
}): Promise<ShoalStack> {
  const stack = opts.stack ?? trackStack(new Stack());
  if (!stack.nats) await stack.startNats();
  stack.coordinatorNodeArgs = opts.coordinatorNodeArgs ?? [];
  // Production defaults for heartbeats (1 s interval, 3 s timeout) rather than the tests' faster ones.
  await stack.startCoordinator(["--log-level", BENCH_LOG_LEVEL, "--heartbeat-timeout", "3s", ...(opts.coordinatorArgs ?? [])]);
  await Promise.all(opts.workers.map((w) => stack.startWorker(w.id, w.args)));
  const client = new TestClient(stack.grpcAddr);
  if (opts.waitForWorkers !== false && opts.workers.length > 0) await client.waitForWorkers(opts.workers.length, 120_000);
  return {
    stack,
    client,
    async stop() {
      client.close();
      await stopStack(stack);
    },
  };
}

/**
 * RunBatch with a deadline. Resolves with the terminal batch, or undefined when the deadline
 * passed first (the batch never became terminal: counted as lost by the caller, so one stuck
 * batch cannot hang the whole bench).
 */
export async function runBatch(client: TestClient, req: SubmitInput, timeoutMs: number): Promise<Batch | undefined> {
  // As a careful client does: an UNAVAILABLE (e.g. a JetStream write that timed out on a busy
  // machine) is retried under the same idempotency key, so a batch stored despite the error is
  // found again rather than submitted twice.
  const keyed = { ...req, idempotencyKey: req.idempotencyKey || `bench-${randomUUID()}` };
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 1; ; attempt++) {
    try {
      return await client.sdk.runBatch(keyed, { timeoutMs: Math.max(1, deadline - Date.now()) });
    } catch (err) {
      const code = (err as { grpcCode?: number }).grpcCode;
      if (code === status.DEADLINE_EXCEEDED) return undefined;
      if (code !== status.UNAVAILABLE || attempt >= 4 || Date.now() + 1000 >= deadline) throw err;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

/**
 * What a batch that did not finish in time was doing, for the error a case throws: its items by
 * status, where the unfinished ones are, and what each worker says it holds. Best effort: a
 * coordinator that does not answer is reported as such.
 */
export async function describeUnfinishedBatches(client: TestClient): Promise<string> {
  try {
    const { batches } = await client.list(5);
    const open = batches.filter((b) => !isTerminal(b));
    const lines: string[] = [];
    for (const summary of open) {
      const b = await client.get(summary.id);
      const byStatus = new Map<string, number>();
      for (const r of b.results) byStatus.set(ItemStatus[r.status], (byStatus.get(ItemStatus[r.status]) ?? 0) + 1);
      const unfinished = b.results.filter((r) => r.status === ItemStatus.ITEM_STATUS_UNSPECIFIED);
      lines.push(
        `batch ${b.id} ${BatchState[b.state]}: ${[...byStatus].map(([s, n]) => `${n} ${s}`).join(", ")}; unfinished: ` +
          unfinished
            .slice(0, 10)
            .map((r) => `#${r.index} on "${r.workerId}" after ${r.attempts} attempts`)
            .join("; "),
      );
    }
    const workers = await client.workers();
    lines.push(`workers: ${workers.map((w) => `${w.id} ${WorkerState[w.state]} in flight ${w.itemsInFlight} done ${w.itemsDone}`).join("; ")}`);
    return lines.join("\n");
  } catch (err) {
    return `(the coordinator did not say: ${(err as Error).message})`;
  }
}

/** The heartbeat interval of SIMULATED workers: the production default, or SHOAL_BENCH_HEARTBEAT_INTERVAL. */
export const WORKER_HEARTBEAT = process.env.SHOAL_BENCH_HEARTBEAT_INTERVAL ?? "1s";
