// How batches, items, workers and models look on a terminal, and as `--json`. Pure functions
// of the API messages, so the output of every command is tested without a server.

import {
  BatchState,
  ItemStatus,
  type Batch,
  type ItemResult,
  type Model,
  type ModelParam,
  type GetUsageResponse,
  type TenantDayUsage,
  type TenantPlanLimits,
  type Worker,
} from "../proto/gen/shoal/v1/shoal.js";
import {
  batchStateName,
  formatBytes,
  formatDuration,
  formatGiB,
  formatLabels,
  formatTable,
  formatTime,
  itemStatusName,
  padIndex,
  workerStateName,
} from "./format.js";

export function isTerminal(state: BatchState): boolean {
  return state === BatchState.BATCH_STATE_COMPLETED || state === BatchState.BATCH_STATE_FAILED || state === BatchState.BATCH_STATE_CANCELLED;
}

export function doneCount(batch: Pick<Batch, "succeeded" | "failed" | "cancelled">): number {
  return batch.succeeded + batch.failed + batch.cancelled;
}

/** "48 succeeded, 1 failed, 1 cancelled of 50"; zero counts other than succeeded are left out. */
export function batchCounts(batch: Batch): string {
  const parts = [`${batch.succeeded} succeeded`];
  if (batch.failed) parts.push(`${batch.failed} failed`);
  if (batch.cancelled) parts.push(`${batch.cancelled} cancelled`);
  return `${parts.join(", ")} of ${batch.total}`;
}

/** Wall time from creation to completion (or to `now` while the batch runs). */
export function batchElapsedMs(batch: Batch, now = Date.now()): number | undefined {
  if (!batch.createdAt) return undefined;
  const end = batch.completedAt ?? (isTerminal(batch.state) ? undefined : new Date(now));
  return end ? Math.max(0, end.getTime() - batch.createdAt.getTime()) : undefined;
}

/** "batch b_x COMPLETED in 12.3s: 48 succeeded, 1 failed of 50". */
export function batchSummaryLine(batch: Batch): string {
  const elapsed = batchElapsedMs(batch);
  const took = elapsed !== undefined && isTerminal(batch.state) ? ` in ${formatDuration(elapsed)}` : "";
  return `batch ${batch.id} ${batchStateName(batch.state)}${took}: ${batchCounts(batch)}`;
}

/** "1 (next to start)", "3 (2 batches ahead)": a queued batch's place among those not started. */
export function queuePositionText(position: number): string {
  if (position <= 1) return "1 (next to start)";
  return `${position} (${position - 1} batch${position === 2 ? "" : "es"} ahead)`;
}

/**
 * "in 1m05s (2025-03-27 11:41:17)": when a running batch is expected to finish; undefined when
 * the coordinator has no estimate (or the batch is terminal).
 */
export function etaText(batch: Pick<Batch, "state" | "estimatedCompletionAt">, now = Date.now()): string | undefined {
  if (isTerminal(batch.state) || !batch.estimatedCompletionAt) return undefined;
  const left = batch.estimatedCompletionAt.getTime() - now;
  return `${left > 500 ? `in ${formatDuration(left)}` : "any moment now"} (${formatTime(batch.estimatedCompletionAt)})`;
}

/** "queue position 2 (1 batch ahead); done in 1m05s (…)": one line for `shoal watch`. */
export function progressNote(batch: Batch, now = Date.now()): string {
  const parts: string[] = [];
  if (batch.queuePosition > 0) parts.push(`queue position ${queuePositionText(batch.queuePosition)}`);
  const eta = etaText(batch, now);
  parts.push(eta ? `expected to finish ${eta}` : "no estimate of its completion yet");
  return `batch ${batch.id}: ${parts.join("; ")}`;
}

/** The error of an item as one phrase: "OUT_OF_MEMORY: CUDA out of memory (retryable)". */
export function itemErrorText(result: ItemResult): string {
  const e = result.error;
  if (!e) return "";
  const text = [e.code, e.message].filter((s) => s !== "").join(": ");
  return e.retryable ? `${text} (retryable)` : text;
}

function artifactsText(result: ItemResult): string {
  return result.artifacts.map((a) => `${a.name} ${formatBytes(a.sizeBytes)}`).join(", ");
}

/** One line per finished item, as `shoal watch` prints them while they arrive. */
export function itemLine(result: ItemResult, total: number): string {
  const status = itemStatusName(result.status).padEnd(9);
  const head = `#${padIndex(result.index, total)}  ${status}`;
  if (result.status === ItemStatus.ITEM_STATUS_SUCCEEDED) {
    const parts = [result.workerId || "-", `run ${formatDuration(result.runMs)}`, artifactsText(result)];
    return [head, ...parts.filter((p) => p !== "")].join("  ");
  }
  const attempts = result.attempts > 1 ? ` after ${result.attempts} attempts` : "";
  return `${head}  ${itemErrorText(result) || "-"}${attempts}`;
}

/** The human form of `shoal get`: header fields, then a table of items once terminal. */
export function describeBatch(batch: Batch, now = Date.now()): string {
  const rows: [string, string][] = [["state", batchStateName(batch.state)]];
  if (isTerminal(batch.state)) {
    rows.push(["items", batchCounts(batch)]);
  } else {
    const running = batch.running ? `, ${batch.running} running` : "";
    rows.push(["progress", `${doneCount(batch)}/${batch.total} done (${batchCounts(batch)}${running})`]);
    if (batch.queuePosition > 0) rows.push(["queue", queuePositionText(batch.queuePosition)]);
    // Unknown until an item of each of its models has run somewhere (or while no worker runs).
    rows.push(["eta", etaText(batch, now) ?? "unknown yet"]);
  }
  rows.push(["created", formatTime(batch.createdAt)]);
  const elapsed = batchElapsedMs(batch, now);
  if (batch.completedAt) {
    rows.push(["completed", `${formatTime(batch.completedAt)}${elapsed !== undefined ? ` (took ${formatDuration(elapsed)})` : ""}`]);
  } else if (elapsed !== undefined) {
    rows.push(["elapsed", formatDuration(elapsed)]);
  }
  if (batch.priority) rows.push(["priority", String(batch.priority)]);
  const labels = formatLabels(batch.labels);
  if (labels) rows.push(["labels", labels]);

  const width = Math.max(...rows.map(([k]) => k.length));
  let text = `batch ${batch.id}\n` + rows.map(([k, v]) => `  ${k.padEnd(width)}  ${v}\n`).join("");
  if (batch.results.length > 0) {
    text += "\n" + itemsTable(batch.results, batch.total);
  } else if (!isTerminal(batch.state)) {
    text += `\nitem results appear when the batch finishes (follow it with: shoal watch ${batch.id})\n`;
  }
  return text;
}

export function itemsTable(results: ItemResult[], total: number): string {
  const rows = results.map((r) => [
    `#${padIndex(r.index, total)}`,
    itemStatusName(r.status),
    r.model || "-",
    r.workerId || "-",
    String(r.attempts),
    r.queueMs || r.runMs ? formatDuration(r.queueMs) : "-",
    r.runMs ? formatDuration(r.runMs) : "-",
    r.status === ItemStatus.ITEM_STATUS_SUCCEEDED ? artifactsText(r) : itemErrorText(r),
  ]);
  return formatTable(["ITEM", "STATUS", "MODEL", "WORKER", "ATTEMPTS", "QUEUED", "RAN", "OUTPUT / ERROR"], rows, {
    alignRight: [4, 5, 6],
  });
}

/** `#0 NVIDIA H100  62.1/79.6 GiB (reserved 1.5 GiB)`: free is what the scheduler can still use. */
export function gpuLine(gpu: Worker["gpus"][number]): string {
  const budget = gpu.source === "budget" ? " [budget]" : "";
  return (
    `#${gpu.index} ${gpu.name || "?"}  ${formatGiB(gpu.vramFreeBytes)}/${formatGiB(gpu.vramTotalBytes)} GiB ` +
    `(reserved ${formatGiB(gpu.vramReservedBytes)} GiB)${budget}`
  );
}

export function workersTable(workers: Worker[]): string {
  const rows = workers.map((w) => [
    w.id,
    workerStateName(w.state),
    String(w.itemsInFlight),
    String(w.itemsDone),
    w.gpus.length ? w.gpus.map(gpuLine).join("\n") : "-",
    w.residentModels.length ? w.residentModels.join(", ") : "-",
  ]);
  return formatTable(["WORKER", "STATE", "IN-FLIGHT", "DONE", "GPUS (free/total)", "RESIDENT MODELS"], rows, {
    alignRight: [2, 3],
  });
}

/** `width  integer 64..1024 step 8 =256`; a `*` marks required params. */
export function paramLine(p: ModelParam): string {
  const parts = [`${p.name}${p.required ? "*" : ""}`, p.type];
  if (p.type === "string") {
    if (p.minLength || p.maxLength) parts.push(`${p.minLength}..${p.maxLength || "∞"} chars`);
  } else if (p.minimum || p.maximum) {
    parts.push(`${p.minimum}..${p.maximum}`);
  }
  if (p.multipleOf > 1) parts.push(`step ${p.multipleOf}`);
  if (p.defaultValue !== undefined && p.defaultValue !== null) parts.push(`=${JSON.stringify(p.defaultValue)}`);
  return parts.join(" ");
}

/** Weights once per GPU, then per item; with a 256×256 example for image models. */
export function vramLines(m: Model): string {
  const lines = [`weights ${formatBytes(m.weightsBytes)}`, `per item ${formatBytes(m.activationBytes)}`];
  if (m.activationBytesPerPixel) {
    const example = m.activationBytes + m.activationBytesPerPixel * 256 * 256;
    lines.push(`+ ${formatBytes(m.activationBytesPerPixel)}/pixel`, `(${formatBytes(example)} at 256x256)`);
  }
  return lines.join("\n");
}

export function modelsTable(models: Model[]): string {
  const rows = models.map((m) => [
    m.name,
    m.version || "-",
    m.params.length ? m.params.map(paramLine).join("\n") : "-",
    vramLines(m),
    m.residentOn.length ? m.residentOn.join("\n") : "-",
  ]);
  return formatTable(["MODEL", "VERSION", "PARAMS (* required)", "VRAM", "RESIDENT ON"], rows);
}

/** `shoal usage`: one row per tenant and UTC day; CHARGED is succeeded items (content-policy ones never are). */
export function usageTable(days: TenantDayUsage[]): string {
  const rows = days.map((d) => [
    d.day,
    d.tenant || "-",
    String(d.accepted),
    String(d.succeeded),
    String(d.failed),
    String(d.contentPolicy),
    String(d.cancelled),
    d.gpuSeconds.toFixed(1),
  ]);
  return formatTable(["DAY (UTC)", "TENANT", "ACCEPTED", "SUCCEEDED", "FAILED", "CONTENT_POLICY", "CANCELLED", "GPU-SECONDS"], rows, { alignRight: [2, 3, 4, 5, 6, 7] });
}

/** What a plan limit of 0 (none of the tenant's own) reads as, and why it is not the whole story. */
export const UNLIMITED = "unlimited";
const UNLIMITED_NOTE = `${UNLIMITED}: no limit of the tenant's own; the coordinator's --max-items and --max-queued-items still apply`;

/**
 * `shoal usage`: the plan limits (--api-keys-file) of the tenants asked about, under the usage
 * table; GetUsage leaves out tenants without any limit, so an empty list says so in words.
 */
export function planLimitsTable(limits: TenantPlanLimits[]): string {
  if (limits.length === 0) return `plan limits: none (no limits in the keys file for these tenants; only the coordinator's --max-items and --max-queued-items apply)\n`;
  const limit = (n: number) => (n > 0 ? String(n) : UNLIMITED);
  const rows = limits.map((l) => [l.tenant, limit(l.maxItemsPerBatch), limit(l.itemsPerDay), limit(l.maxQueuedItems)]);
  const table = formatTable(["TENANT", "MAX_ITEMS_PER_BATCH", "ITEMS_PER_DAY", "MAX_QUEUED_ITEMS"], rows, { alignRight: [1, 2, 3] });
  const anyUnlimited = rows.some((r) => r.includes(UNLIMITED));
  return `plan limits (--api-keys-file):\n${table}${anyUnlimited ? `(${UNLIMITED_NOTE})\n` : ""}`;
}

/**
 * GetUsage's answer as JSON (`shoal usage --json`, the gateway's GET /v1/usage): snake_case as in
 * the proto, and a limit of 0 ("no limit of the tenant's own") as null.
 */
export function usageReportJson(report: GetUsageResponse): { days: Record<string, unknown>[]; limits: Record<string, unknown>[] } {
  return {
    days: report.days.map((d) => ({
      tenant: d.tenant,
      day: d.day,
      accepted: d.accepted,
      succeeded: d.succeeded,
      failed: d.failed,
      content_policy: d.contentPolicy,
      cancelled: d.cancelled,
      gpu_seconds: d.gpuSeconds,
    })),
    limits: report.limits.map((l) => ({
      tenant: l.tenant,
      max_items_per_batch: l.maxItemsPerBatch || null,
      items_per_day: l.itemsPerDay || null,
      max_queued_items: l.maxQueuedItems || null,
    })),
  };
}

export function batchesTable(batches: Batch[]): string {
  const rows = batches.map((b) => [
    b.id,
    batchStateName(b.state),
    `${doneCount(b)}/${b.total}`,
    String(b.succeeded),
    String(b.failed),
    String(b.cancelled),
    formatTime(b.createdAt),
    formatLabels(b.labels),
  ]);
  return formatTable(["BATCH", "STATE", "DONE", "OK", "FAILED", "CANCELLED", "CREATED", "LABELS"], rows, {
    alignRight: [2, 3, 4, 5],
  });
}

/**
 * `--json` output: every field, snake_case as in the proto contract, short enum names. Unlike
 * the generated toJSON it keeps zero values (item 0 has index 0), so scripts need no defaults.
 */
export function batchToJson(batch: Batch): Record<string, unknown> {
  return {
    id: batch.id,
    state: batchStateName(batch.state),
    total: batch.total,
    succeeded: batch.succeeded,
    failed: batch.failed,
    cancelled: batch.cancelled,
    running: batch.running,
    priority: batch.priority,
    labels: batch.labels,
    created_at: batch.createdAt?.toISOString() ?? null,
    completed_at: batch.completedAt?.toISOString() ?? null,
    queue_position: batch.queuePosition,
    estimated_completion_at: batch.estimatedCompletionAt?.toISOString() ?? null,
    results: batch.results.map(itemResultToJson),
  };
}

export function itemResultToJson(r: ItemResult): Record<string, unknown> {
  return {
    index: r.index,
    status: itemStatusName(r.status),
    model: r.model,
    error: r.error ? { code: r.error.code, message: r.error.message, retryable: r.error.retryable } : null,
    artifacts: r.artifacts.map((a) => ({
      name: a.name,
      content_type: a.contentType,
      size_bytes: a.sizeBytes,
      sha256: a.sha256,
      uri: a.uri,
    })),
    worker_id: r.workerId,
    attempts: r.attempts,
    queue_ms: r.queueMs,
    run_ms: r.runMs,
  };
}
