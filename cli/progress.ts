// Progress of a batch while `shoal submit --wait` follows it. On a terminal a cli-progress bar
// redraws in place on stderr; anywhere else (CI logs, pipes) a plain line every few seconds, as
// redrawn bars would fill a log file with control characters.

import cliProgress from "cli-progress";
import { formatDuration, formatTime } from "./format.js";
import type { Output } from "./output.js";

export interface ProgressCounts {
  succeeded: number;
  failed: number;
  cancelled: number;
}

/** The coordinator's estimate for the batch (GetBatch / WatchBatch progress events). */
export interface ProgressEstimate {
  /** > 0 while the batch waits to start (1 = next). */
  queuePosition: number;
  /** When it is expected to finish; undefined when the coordinator does not know yet. */
  completionAt: Date | undefined;
}

export interface ProgressReporter {
  update(counts: ProgressCounts): void;
  /** The server's latest queue position and ETA; shown instead of a guess from the rate so far. */
  estimate(e: ProgressEstimate): void;
  /** Draws the final state and releases the terminal; safe to call twice. */
  stop(): void;
}

export interface ProgressOptions {
  /** Least time between two plain lines; the bar has its own frame rate. */
  intervalMs?: number;
  now?: () => number;
}

export function createProgress(
  stream: Output,
  batchId: string,
  total: number,
  options: ProgressOptions = {},
): ProgressReporter {
  return stream.isTTY
    ? new BarProgress(stream, batchId, total)
    : new LineProgress(stream, batchId, total, options.intervalMs ?? 2000, options.now ?? Date.now);
}

/** `batch b_x: 12/50 done (11 ok, 1 failed)`, then `; queue position 2` or `; eta <time>` when known. */
export function progressLine(batchId: string, total: number, c: ProgressCounts, e?: ProgressEstimate): string {
  const done = c.succeeded + c.failed + c.cancelled;
  const parts = [`${c.succeeded} ok`, `${c.failed} failed`];
  if (c.cancelled) parts.push(`${c.cancelled} cancelled`);
  let line = `batch ${batchId}: ${done}/${total} done (${parts.join(", ")})`;
  // Absolute times: a line changes (and is printed) only when the estimate does.
  if (e && e.queuePosition > 0) line += `; queue position ${e.queuePosition}`;
  if (e?.completionAt && done < total) line += `; eta ${formatTime(e.completionAt)}`;
  return line;
}

/** The bar's ETA: the server's when it has one (counting down at each redraw), else cli-progress's own. */
function etaPart(e: ProgressEstimate | undefined, now: number): string | undefined {
  if (!e) return undefined;
  if (e.queuePosition > 0 && !e.completionAt) return `queue position ${e.queuePosition}`;
  if (!e.completionAt) return undefined;
  const left = e.completionAt.getTime() - now;
  const eta = `eta ${left > 0 ? formatDuration(left) : "now"}`;
  return e.queuePosition > 0 ? `queue position ${e.queuePosition}, ${eta}` : eta;
}

class LineProgress implements ProgressReporter {
  private last: ProgressCounts = { succeeded: 0, failed: 0, cancelled: 0 };
  private est: ProgressEstimate | undefined;
  private lastPrintedAt = -Infinity;
  private lastPrinted = "";
  private stopped = false;

  constructor(
    private readonly stream: Output,
    private readonly batchId: string,
    private readonly total: number,
    private readonly intervalMs: number,
    private readonly now: () => number,
  ) {}

  update(counts: ProgressCounts): void {
    this.last = { ...counts };
    if (this.now() - this.lastPrintedAt >= this.intervalMs) this.print();
  }

  estimate(e: ProgressEstimate): void {
    this.est = e;
    if (this.now() - this.lastPrintedAt >= this.intervalMs) this.print();
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.print();
  }

  private print(): void {
    const line = progressLine(this.batchId, this.total, this.last, this.stopped ? undefined : this.est);
    this.lastPrintedAt = this.now();
    if (line === this.lastPrinted) return;
    this.lastPrinted = line;
    this.stream.write(line + "\n");
  }
}

class BarProgress implements ProgressReporter {
  private readonly bar: cliProgress.SingleBar;
  private stopped = false;
  private est: ProgressEstimate | undefined;

  constructor(stream: Output, batchId: string, total: number) {
    const head = `batch ${batchId} [{bar}] {value}/{total} | {succeeded} ok, {failed} failed | {duration_formatted}, `;
    this.bar = new cliProgress.SingleBar({
      stream: stream as unknown as NodeJS.WritableStream,
      // The server's estimate when it has one; cli-progress's extrapolation of the rate otherwise.
      format: (options, params, payload) => {
        const server = params.value < params.total && !params.stopTime ? etaPart(this.est, Date.now()) : undefined;
        return cliProgress.Format.Formatter({ ...options, format: head + (server ?? "eta {eta_formatted}") }, params, payload);
      },
      // A hidden cursor would stay hidden if Ctrl-C ends the process mid-watch.
      hideCursor: false,
      barsize: 30,
      etaBuffer: 50,
      fps: 10,
    });
    this.bar.start(Math.max(total, 1), 0, { succeeded: 0, failed: 0 });
  }

  update(c: ProgressCounts): void {
    if (this.stopped) return;
    this.bar.update(c.succeeded + c.failed + c.cancelled, { succeeded: c.succeeded, failed: c.failed });
  }

  estimate(e: ProgressEstimate): void {
    this.est = e;
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.bar.stop();
  }
}
