// When the coordinator runs its next scheduling pass. Anything that may let an item be placed
// (a submit, an outcome, a heartbeat, a tick) asks for a pass; requests made before the pass
// runs share it. Passes are at least `minGapMs` apart: under a stream of outcome messages
// (hundreds a second from each worker at the fleet's peak) each message would otherwise start a
// pass of its own and place the few items it freed in small assignments, one request, reply and
// socket write per worker each. Waiting out the rest of the gap lets the messages of that
// millisecond share one pass and one assignment per worker; a pass after a quiet spell (an
// unloaded submit) runs at once, in the next turn of the event loop.

export class PassTrigger {
  private queued = false;
  private lastRunAtMs = -Infinity;
  private timer: NodeJS.Timeout | undefined;
  private immediate: NodeJS.Immediate | undefined;
  /** A pass asked for later (requestAt), if none runs before. */
  private wake: NodeJS.Timeout | undefined;
  private wakeAtMs = Infinity;

  /** `now`: a monotonic clock in ms (tests pass their own). */
  constructor(
    private readonly run: () => void,
    private readonly minGapMs: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Asks for a pass; it runs once for every request made before it starts. */
  request(): void {
    if (this.queued) return;
    this.queued = true;
    const wait = this.lastRunAtMs + this.minGapMs - this.now();
    if (wait <= 0) this.immediate = setImmediate(() => this.fire());
    else this.timer = setTimeout(() => this.fire(), wait);
  }

  /**
   * Asks for a pass `delayMs` from now (an item held for a GPU predicted to free then), unless
   * one is already asked for sooner. A pass that runs before then does not cancel it: the held
   * item may still be waiting.
   */
  requestIn(delayMs: number): void {
    const atMs = this.now() + Math.max(0, delayMs);
    if (atMs >= this.wakeAtMs) return;
    if (this.wake) clearTimeout(this.wake);
    this.wakeAtMs = atMs;
    this.wake = setTimeout(() => {
      this.wake = undefined;
      this.wakeAtMs = Infinity;
      this.request();
    }, atMs - this.now());
    this.wake.unref();
  }

  /** Drops the passes that were asked for and have not run. Idempotent. */
  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    if (this.immediate) clearImmediate(this.immediate);
    if (this.wake) clearTimeout(this.wake);
    this.timer = undefined;
    this.immediate = undefined;
    this.wake = undefined;
    this.wakeAtMs = Infinity;
    this.queued = false;
  }

  private fire(): void {
    this.timer = undefined;
    this.immediate = undefined;
    this.queued = false;
    this.lastRunAtMs = this.now();
    this.run();
  }
}
