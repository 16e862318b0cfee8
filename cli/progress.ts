// Progress of a batch while `shoal submit --wait` follows it. On a terminal a cli-progress bar
// redraws in place on stderr; anywhere else (CI logs, pipes) a plain line every few seconds, as
// redrawn bars would fill a log file with control characters.

import cliProgress from "cli-progress";
import type { Output } from "./output.js";

export interface ProgressCounts {
  succeeded: number;
  failed: number;
  cancelled: number;
}

export interface ProgressReporter {
  update(counts: ProgressCounts): void;
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

/** `batch b_x: 12/50 done (11 ok, 1 failed)`. */
export function progressLine(batchId: string, total: number, c: ProgressCounts): string {
  const done = c.succeeded + c.failed + c.cancelled;
  const parts = [`${c.succeeded} ok`, `${c.failed} failed`];
  if (c.cancelled) parts.push(`${c.cancelled} cancelled`);
  return `batch ${batchId}: ${done}/${total} done (${parts.join(", ")})`;
}

class LineProgress implements ProgressReporter {
  private last: ProgressCounts = { succeeded: 0, failed: 0, cancelled: 0 };
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

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.print();
  }

  private print(): void {
    const line = progressLine(this.batchId, this.total, this.last);
    this.lastPrintedAt = this.now();
    if (line === this.lastPrinted) return;
    this.lastPrinted = line;
    this.stream.write(line + "\n");
  }
}

class BarProgress implements ProgressReporter {
  private readonly bar: cliProgress.SingleBar;
  private stopped = false;

  constructor(stream: Output, batchId: string, total: number) {
    this.bar = new cliProgress.SingleBar({
      stream: stream as unknown as NodeJS.WritableStream,
      format: `batch ${batchId} [{bar}] {value}/{total} | {succeeded} ok, {failed} failed | {duration_formatted}, eta {eta_formatted}`,
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

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.bar.stop();
  }
}
