/** The timer functions a DeadlineTimer uses (tests pass fakes). */
export interface TimerApi {
  set(fn: () => void, ms: number): unknown;
  clear(handle: unknown): void;
}

/** The longest delay setTimeout takes (2^31 - 1 ms). */
const MAX_TIMER_MS = 2 ** 31 - 1;

const NODE_TIMERS: TimerApi = {
  set: (fn, ms) => setTimeout(fn, ms).unref(),
  clear: (h) => clearTimeout(h as NodeJS.Timeout),
};

/**
 * One timer for many deadlines, armed for the earliest one and only while there is one.
 *
 * Replaces fixed-rate sweeps (a 10 Hz interval that woke an idle process a hundred times a
 * second across the fleet, with nothing to find): the owner adds each deadline as it is made,
 * and when the timer fires `onDue(now)` handles what is due and returns the next deadline still
 * pending (undefined: none, the timer stays off). A deadline that went away early (the item
 * ended) costs at most one firing that finds nothing. Deadlines are on the clock given
 * (`performance.now()` by default), in milliseconds.
 */
export class DeadlineTimer {
  private handle: unknown;
  /** The deadline the timer is armed for; Infinity when it is not armed. */
  private armedFor = Infinity;
  private stopped = false;

  constructor(
    private readonly onDue: (now: number) => number | undefined,
    private readonly clock: () => number = () => performance.now(),
    private readonly timers: TimerApi = NODE_TIMERS,
  ) {}

  /** A new deadline: the timer fires at it, unless it is already armed for one no later. */
  add(atMs: number): void {
    if (this.stopped || atMs >= this.armedFor) return;
    this.arm(atMs);
  }

  /** Whether the timer is armed (for tests and metrics: an idle owner has none). */
  get armed(): boolean {
    return this.armedFor !== Infinity;
  }

  /** Idempotent; add() does nothing after it. */
  stop(): void {
    this.stopped = true;
    this.disarm();
  }

  private arm(atMs: number): void {
    this.disarm();
    this.armedFor = atMs;
    // Whole milliseconds, rounded up: a timer firing a fraction early would find nothing due
    // and arm again for less than a millisecond. At most setTimeout's limit (~24.8 days): past
    // it Node fires after 1 ms, which would make a far deadline (--item-timeout 30d) a busy loop;
    // firing at the limit finds nothing due and arms again for the rest.
    this.handle = this.timers.set(() => this.fire(), Math.min(MAX_TIMER_MS, Math.max(1, Math.ceil(atMs - this.clock()))));
  }

  private disarm(): void {
    if (this.handle !== undefined) this.timers.clear(this.handle);
    this.handle = undefined;
    this.armedFor = Infinity;
  }

  private fire(): void {
    this.handle = undefined;
    this.armedFor = Infinity;
    if (this.stopped) return;
    const next = this.onDue(this.clock());
    // onDue may have added deadlines itself (armed already for one no later than `next`).
    if (next !== undefined && !this.stopped) this.add(next);
  }
}
