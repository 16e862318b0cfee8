// The client commands. Each takes a context (clients and the two output streams) and parsed
// options, writes what people read, and returns the exit status; errors are thrown and turned
// into one clear line by error-report.ts. Data goes to `out` (so `id=$(shoal submit f)` works),
// progress and hints to `err`.

import { status } from "@grpc/grpc-js";
import { BatchState, ItemStatus, type Batch, type ItemResult, type SubmitBatchRequest } from "../proto/gen/shoal/v1/shoal.js";
import { readBatchFile, type BatchFile } from "./batch-file.js";
import type { ShoalClients } from "./client.js";
import { ClientError, UsageError } from "./errors.js";
import { followBatch } from "./follow.js";
import { batchStateName, formatBytes, padIndex, workerStateName } from "./format.js";
import type { Output } from "./output.js";
import { createProgress, type ProgressCounts } from "./progress.js";
import { saveResults } from "./results.js";
import {
  batchesTable,
  batchSummaryLine,
  batchToJson,
  describeBatch,
  isTerminal,
  itemErrorText,
  itemLine,
  modelsTable,
  planLimitsTable,
  progressNote,
  usageReportJson,
  usageTable,
  workersTable,
} from "./views.js";

export interface CommandContext {
  clients: ShoalClients;
  out: Output;
  err: Output;
}

export const EXIT_OK = 0;
/** The command ran but the outcome is a failure: a FAILED batch, an unverifiable artifact. */
export const EXIT_FAILURE = 1;
/** The input was wrong: bad flags, a malformed batch file, a batch the server refused. */
export const EXIT_USAGE = 2;

export interface SubmitOptions {
  wait?: boolean;
  model?: string;
  priority?: number;
  idempotencyKey?: string;
  /** `k=v` strings, as given on the command line. */
  label?: string[];
  /** Least time between plain progress lines when stderr is not a terminal. */
  progressIntervalMs?: number;
}

export async function submit(ctx: CommandContext, file: string, opts: SubmitOptions = {}): Promise<number> {
  const flagLabels = parseLabels(opts.label ?? []);
  if (opts.priority !== undefined && !Number.isInteger(opts.priority)) {
    throw new UsageError(`--priority: "${opts.priority}" must be an integer`);
  }
  const batchFile = await readBatchFile(file, { defaultModel: opts.model });
  const request: SubmitBatchRequest = {
    items: batchFile.items,
    idempotencyKey: opts.idempotencyKey ?? batchFile.idempotencyKey ?? "",
    webhook: batchFile.webhook,
    priority: opts.priority ?? batchFile.priority ?? 0,
    labels: { ...batchFile.labels, ...flagLabels },
  };

  let batchId: string;
  let itemCount: number;
  try {
    ({ batchId, itemCount } = await ctx.clients.submitBatch(request));
  } catch (err) {
    throw annotateRefusal(err, batchFile);
  }

  if (!opts.wait) {
    ctx.out.write(`${batchId}\n`);
    ctx.err.write(
      `submitted ${itemCount} item${itemCount === 1 ? "" : "s"} as batch ${batchId}\n` +
        `  follow it:   shoal watch ${batchId}\n` +
        `  results:     shoal results ${batchId} --out ./out\n`,
    );
    return EXIT_OK;
  }

  ctx.err.write(`submitted ${itemCount} item${itemCount === 1 ? "" : "s"} as batch ${batchId}\n`);
  const counts: ProgressCounts = { succeeded: 0, failed: 0, cancelled: 0 };
  const progress = createProgress(ctx.err, batchId, itemCount, { intervalMs: opts.progressIntervalMs });
  let batch: Batch;
  try {
    batch = await followBatch(ctx.clients, batchId, {
      onItem(item) {
        if (item.status === ItemStatus.ITEM_STATUS_SUCCEEDED) counts.succeeded++;
        else if (item.status === ItemStatus.ITEM_STATUS_FAILED) counts.failed++;
        else counts.cancelled++;
        progress.update(counts);
      },
      onSnapshot(snapshot) {
        // After a reconnect the server's counters may be ahead of the items we saw.
        counts.succeeded = Math.max(counts.succeeded, snapshot.succeeded);
        counts.failed = Math.max(counts.failed, snapshot.failed);
        counts.cancelled = Math.max(counts.cancelled, snapshot.cancelled);
        progress.update(counts);
        progress.estimate({ queuePosition: snapshot.queuePosition, completionAt: snapshot.estimatedCompletionAt });
      },
      onReconnect(reason) {
        ctx.err.write(`lost the watch stream (${reason}); watching ${batchId} again\n`);
      },
    });
    progress.update({ succeeded: batch.succeeded, failed: batch.failed, cancelled: batch.cancelled });
  } finally {
    progress.stop();
  }
  writeFinalSummary(ctx, batch);
  return batchExitCode(batch);
}

export interface GetOptions {
  json?: boolean;
}

export async function get(ctx: CommandContext, batchId: string, opts: GetOptions = {}): Promise<number> {
  const batch = await ctx.clients.getBatch(batchId);
  ctx.out.write(opts.json ? JSON.stringify(batchToJson(batch), null, 2) + "\n" : describeBatch(batch));
  return EXIT_OK;
}

export async function watch(ctx: CommandContext, batchId: string): Promise<number> {
  // The total is only needed to pad indexes; learn it before the first item arrives.
  const first = await ctx.clients.getBatch(batchId);
  let batch: Batch;
  if (isTerminal(first.state)) {
    for (const r of first.results) ctx.out.write(itemLine(r, first.total) + "\n");
    batch = first;
  } else {
    // Queue position and ETA go to stderr, so stdout stays one line per item.
    ctx.err.write(progressNote(first) + "\n");
    batch = await followBatch(ctx.clients, batchId, {
      onItem: (r) => ctx.out.write(itemLine(r, first.total) + "\n"),
      onSnapshot: (snapshot) => ctx.err.write(progressNote(snapshot) + "\n"),
      onReconnect: (reason) => ctx.err.write(`lost the watch stream (${reason}); watching ${batchId} again\n`),
    });
  }
  ctx.out.write(batchSummaryLine(batch) + "\n");
  return batchExitCode(batch);
}

export interface ResultsOptions {
  out?: string;
}

export async function results(ctx: CommandContext, batchId: string, opts: ResultsOptions = {}): Promise<number> {
  const outDir = opts.out ?? "./out";
  const batch = await ctx.clients.getBatch(batchId);
  if (!isTerminal(batch.state)) {
    ctx.err.write(
      `error: batch ${batchId} is ${batchStateName(batch.state)}; its results are ready once it finishes ` +
        `(wait with: shoal watch ${batchId})\n`,
    );
    return EXIT_FAILURE;
  }
  const outcome = await saveResults(ctx.clients, batch, outDir, ctx.out);
  const notOk = batch.results.filter((r) => r.status !== ItemStatus.ITEM_STATUS_SUCCEEDED).length;
  ctx.out.write(
    `${outcome.filesWritten} file${outcome.filesWritten === 1 ? "" : "s"} (${formatBytes(outcome.bytesWritten)}) ` +
      `and results.json in ${outDir}` +
      (notOk ? `; ${notOk} item${notOk === 1 ? "" : "s"} without output (see results.json)` : "") +
      "\n",
  );
  for (const problem of outcome.problems) ctx.err.write(`error: ${problem}\n`);
  return outcome.problems.length ? EXIT_FAILURE : EXIT_OK;
}

export async function workers(ctx: CommandContext): Promise<number> {
  const list = await ctx.clients.listWorkers();
  if (list.length === 0) {
    ctx.out.write("no workers registered (start some with `shoal up --workers N` or `shoal worker --nats URL`)\n");
    return EXIT_OK;
  }
  ctx.out.write(workersTable(list));
  return EXIT_OK;
}

export async function models(ctx: CommandContext): Promise<number> {
  const list = await ctx.clients.listModels();
  if (list.length === 0) {
    ctx.out.write("no models\n");
    return EXIT_OK;
  }
  ctx.out.write(modelsTable(list));
  return EXIT_OK;
}

export async function cancel(ctx: CommandContext, batchId: string): Promise<number> {
  const batch = await ctx.clients.cancelBatch(batchId);
  ctx.out.write(batchSummaryLine(batch) + "\n");
  return EXIT_OK;
}

export async function retry(ctx: CommandContext, batchId: string): Promise<number> {
  // Read first, to say which failed items RetryBatch leaves out and why (it answers only the
  // new batch, or FAILED_PRECONDITION naming them when nothing is left to retry).
  const skipped = notRetried(await ctx.clients.getBatch(batchId));
  const { batchId: newId, itemCount } = await ctx.clients.retryBatch(batchId);
  if (!newId || itemCount === 0) {
    ctx.err.write(`batch ${batchId} has no retryable failed items; nothing to retry\n`);
    return EXIT_OK;
  }
  ctx.out.write(`${newId}\n`);
  ctx.err.write(
    `retrying ${itemCount} failed item${itemCount === 1 ? "" : "s"} of ${batchId} as batch ${newId}\n` +
      (skipped ? `  skipped:     ${skipped}\n` : "") +
      `  follow it:   shoal watch ${newId}\n`,
  );
  return EXIT_OK;
}

/** "2 failed items not retryable: 2 CONTENT_POLICY (blocked by the content policy)", or "" when none. */
export function notRetried(batch: Batch): string {
  const byCode = new Map<string, number>();
  let n = 0;
  for (const r of batch.results) {
    if (r.status !== ItemStatus.ITEM_STATUS_FAILED || r.error?.retryable) continue;
    const code = r.error?.code || "UNKNOWN";
    byCode.set(code, (byCode.get(code) ?? 0) + 1);
    n++;
  }
  if (n === 0) return "";
  const why = (code: string) => (code === "CONTENT_POLICY" ? " (blocked by the content policy; never retried)" : "");
  return `${n} failed item${n === 1 ? "" : "s"} not retryable: ${[...byCode].map(([code, k]) => `${k} ${code}${why(code)}`).join(", ")}`;
}

export interface ListOptions {
  pageSize?: number;
  pageToken?: string;
}

export interface UsageOptions {
  tenant?: string;
  since?: string;
  json?: boolean;
}

/** The usage table, then the plan limits of the tenants asked about (or both as JSON). */
export async function usage(ctx: CommandContext, opts: UsageOptions = {}): Promise<number> {
  const report = await ctx.clients.getUsageReport({ tenant: opts.tenant, since: opts.since });
  if (opts.json) {
    ctx.out.write(JSON.stringify(usageReportJson(report), null, 2) + "\n");
    return EXIT_OK;
  }
  ctx.out.write(report.days.length === 0 ? "no usage recorded in that period\n" : usageTable(report.days));
  ctx.out.write("\n" + planLimitsTable(report.limits));
  return EXIT_OK;
}

export async function list(ctx: CommandContext, opts: ListOptions = {}): Promise<number> {
  const page = await ctx.clients.listBatches({ pageSize: opts.pageSize, pageToken: opts.pageToken });
  if (page.batches.length === 0) {
    ctx.out.write(opts.pageToken ? "no more batches\n" : "no batches yet (submit one with `shoal submit FILE`)\n");
    return EXIT_OK;
  }
  ctx.out.write(batchesTable(page.batches));
  if (page.nextPageToken) {
    const size = opts.pageSize ? ` --page-size ${opts.pageSize}` : "";
    ctx.err.write(`more: shoal list${size} --page-token ${page.nextPageToken}\n`);
  }
  return EXIT_OK;
}

export async function drain(ctx: CommandContext, workerId: string): Promise<number> {
  const worker = await ctx.clients.drainWorker(workerId);
  const inFlight = worker.itemsInFlight;
  ctx.out.write(
    `worker ${worker.id || workerId}: ${workerStateName(worker.state)}; no new items go there` +
      (inFlight ? `, ${inFlight} in flight will finish first` : "") +
      "\n",
  );
  return EXIT_OK;
}

/** `--label k=v`, repeatable; the value may hold '=' itself. */
export function parseLabels(labels: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const label of labels) {
    const eq = label.indexOf("=");
    if (eq <= 0) throw new UsageError(`--label: "${label}" must be key=value`);
    out[label.slice(0, eq)] = label.slice(eq + 1);
  }
  return out;
}

/** A FAILED batch (every item failed) or a CANCELLED one is not a success for scripts. */
export function batchExitCode(batch: Batch): number {
  return batch.state === BatchState.BATCH_STATE_FAILED || batch.state === BatchState.BATCH_STATE_CANCELLED
    ? EXIT_FAILURE
    : EXIT_OK;
}

const MAX_FAILURES_SHOWN = 10;

function writeFinalSummary(ctx: CommandContext, batch: Batch): void {
  let text = batchSummaryLine(batch) + "\n";
  const failed = batch.results.filter((r) => r.status === ItemStatus.ITEM_STATUS_FAILED);
  if (failed.length > 0) {
    text += "failed items:\n";
    for (const r of failed.slice(0, MAX_FAILURES_SHOWN)) text += `  ${failedLine(r, batch.total)}\n`;
    if (failed.length > MAX_FAILURES_SHOWN) {
      text += `  … and ${failed.length - MAX_FAILURES_SHOWN} more (shoal get ${batch.id})\n`;
    }
  }
  ctx.out.write(text);

  const hints: string[] = [];
  if (batch.succeeded > 0) hints.push(`results:  shoal results ${batch.id} --out ./out`);
  const retryable = failed.filter((r) => r.error?.retryable).length;
  if (retryable > 0) hints.push(`retry:    shoal retry ${batch.id}   (${retryable} retryable)`);
  if (hints.length) ctx.err.write(hints.map((h) => `  ${h}\n`).join(""));
}

function failedLine(r: ItemResult, total: number): string {
  return `#${padIndex(r.index, total)}  ${itemErrorText(r) || "failed"}`;
}

/**
 * The server names bad fields by item index (`items[3].params.width`); for a JSONL file or a
 * `requests` body, add where item 3 was written, so the user can go straight to the line.
 */
function annotateRefusal(err: unknown, batchFile: BatchFile): unknown {
  if (!(err instanceof ClientError) || err.code !== "INVALID_ARGUMENT") return err;
  if (batchFile.shape !== "jsonl" && batchFile.shape !== "requests") return err;
  const problems = err.fieldProblems.map((problem) => {
    const m = /^items\[(\d+)\]/.exec(problem);
    const source = m ? batchFile.sources[Number(m[1])] : undefined;
    return source ? `${problem} (${source})` : problem;
  });
  return new ClientError(status.INVALID_ARGUMENT, problems.join("\n"), { cause: err, metadata: err.metadata });
}
