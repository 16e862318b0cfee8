// Where a batch's time goes, step by step: a few timestamps per batch (not per item), kept only
// while the coordinator logs at debug level, and logged as one "batch step times" line when the
// batch's usage is counted (after its terminal record). The bench's dispatch case reads these lines
// (SHOAL_BENCH_STEPS=1, docs/performance.md) to split the added latency of a batch into its
// steps; with the level above debug nothing is allocated and every call below returns at once.
//
// Clock: `performance.timeOrigin + performance.now()`, a wall-clock time in ms with sub-ms
// resolution, so a mark can be compared with the time nats-server stored a results message (the
// JetStream message timestamp; same machine, same clock).

/** Timestamps of one batch's way through the coordinator (ms, wallNowMs()). */
export interface StepMarks {
  /** SubmitBatch entered BatchApi.submit. */
  received: number;
  /** Validated and encoded: the writes begin. */
  validated?: number;
  /** The day's usage count, the open marker and the index entry stored (written at once). */
  markedIndexed?: number;
  /** The batch record stored: the batch is accepted. */
  accepted?: number;
  /** The last assignment request carrying one of its items was sent to a worker. */
  lastAssignSent?: number;
  /** The last of those was answered (the worker took the items). */
  lastAssignTaken?: number;
  /** nats-server stored the results message that carried its last outcome. */
  lastOutcomeStored?: number;
  /** That outcome was applied: every item is done and the terminal write begins. */
  complete?: number;
  /** The terminal write's preparation (the pending webhook) is stored. */
  prepared?: number;
  /** The terminal record is stored. */
  stored?: number;
  /** The batch's usage is counted (after the record, off the answer's path: terminal-usage.ts). */
  usageCounted?: number;
}

export function wallNowMs(): number {
  return performance.timeOrigin + performance.now();
}

/** The marks as durations between consecutive steps (ms), for the log line. */
export function stepDurations(m: StepMarks): Record<string, number> {
  const out: Record<string, number> = {};
  const span = (name: string, from: number | undefined, to: number | undefined) => {
    if (from !== undefined && to !== undefined) out[name] = round3(to - from);
  };
  span("validate", m.received, m.validated);
  span("usageMarkerIndex", m.validated, m.markedIndexed);
  span("recordCreate", m.markedIndexed, m.accepted);
  span("passAndSend", m.accepted, m.lastAssignSent);
  // The worker answers, runs and publishes at once: the coordinator may read the answer after
  // the outcome is stored, so the reply is shown apart, not as a step of the sum.
  span("(assignReply)", m.lastAssignSent, m.lastAssignTaken);
  span("assignToResultStored", m.lastAssignSent, m.lastOutcomeStored);
  span("resultConsumed", m.lastOutcomeStored, m.complete);
  span("terminalPrepare", m.complete, m.prepared);
  span("terminalRecord", m.prepared, m.stored);
  span("total", m.received, m.stored);
  // After the record, while watchers already have their answer: apart, not part of the total.
  span("(usageAfterRecord)", m.stored, m.usageCounted);
  return out;
}

function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}
