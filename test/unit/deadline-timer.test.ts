import { test } from "node:test";
import assert from "node:assert/strict";
import { DeadlineTimer, type TimerApi } from "../../shared/deadline-timer.js";

/** Fake timers and clock (unit test): the test moves time and fires what is due. */
function fakeTimers() {
  let now = 0;
  let nextId = 0;
  const pending = new Map<number, { at: number; fn: () => void }>();
  const api: TimerApi = {
    set: (fn, ms) => {
      const id = ++nextId;
      pending.set(id, { at: now + ms, fn });
      return id;
    },
    clear: (h) => void pending.delete(h as number),
  };
  /** Moves the clock to `to`, firing each timer due on the way, in order. */
  const advance = (to: number) => {
    for (;;) {
      const due = [...pending.entries()].filter(([, t]) => t.at <= to).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      pending.delete(due[0]);
      now = due[1].at;
      due[1].fn();
    }
    now = to;
  };
  return { api, clock: () => now, advance, armedCount: () => pending.size, armedAt: () => [...pending.values()].map((t) => t.at) };
}

test("deadline timer - no deadline, no timer; armed for the earliest; fires when due and re-arms for the next one", () => {
  const f = fakeTimers();
  const deadlines = new Set<number>();
  const fired: number[] = [];
  const timer = new DeadlineTimer(
    (now) => {
      let next: number | undefined;
      for (const d of [...deadlines]) {
        if (d <= now) {
          deadlines.delete(d);
          fired.push(d);
        } else if (next === undefined || d < next) next = d;
      }
      return next;
    },
    f.clock,
    f.api,
  );
  assert.equal(f.armedCount(), 0, "idle: nothing armed");
  assert.equal(timer.armed, false);
  for (const d of [500, 200, 900]) {
    deadlines.add(d);
    timer.add(d);
  }
  assert.deepEqual(f.armedAt(), [200], "one timer, for the earliest deadline");
  f.advance(199);
  assert.deepEqual(fired, [], "nothing before its deadline");
  f.advance(200);
  assert.deepEqual(fired, [200], "fired at the deadline, not a sweep period later");
  assert.deepEqual(f.armedAt(), [500], "re-armed for the next pending deadline");
  f.advance(1000);
  assert.deepEqual(fired, [200, 500, 900]);
  assert.equal(f.armedCount(), 0, "all handled: the timer stays off");
  assert.equal(timer.armed, false);
});

test("deadline timer - a deadline that went away costs one firing that finds nothing; a later one does not re-arm; stop is idempotent", () => {
  const f = fakeTimers();
  let calls = 0;
  const deadlines = new Set<number>([100]);
  const timer = new DeadlineTimer(
    (now) => {
      calls++;
      const left = [...deadlines].filter((d) => d > now);
      return left.length ? Math.min(...left) : undefined;
    },
    f.clock,
    f.api,
  );
  timer.add(100);
  timer.add(300); // later than the armed one: no new timer
  assert.deepEqual(f.armedAt(), [100]);
  deadlines.delete(100); // the item ended early
  f.advance(150);
  assert.equal(calls, 1, "one firing");
  assert.equal(f.armedCount(), 0, "nothing pending: off");
  timer.add(250);
  assert.deepEqual(f.armedAt(), [250]);
  timer.stop();
  timer.stop();
  assert.equal(f.armedCount(), 0, "stop disarms");
  timer.add(400);
  assert.equal(f.armedCount(), 0, "nothing is armed after stop");
});

test("deadline timer - waits whole milliseconds, rounded up and at least 1 (a deadline due now never spins at 0 ms)", () => {
  const f = fakeTimers();
  let due = 100.4;
  const timer = new DeadlineTimer((now) => (now >= due ? undefined : due), f.clock, f.api);
  timer.add(100.4);
  assert.deepEqual(f.armedAt(), [101], "rounded up");
  f.advance(101);
  assert.equal(f.armedCount(), 0);
  due = 101;
  timer.add(101); // due at this very moment
  assert.deepEqual(f.armedAt(), [102], "at least 1 ms");
  f.advance(102);
  assert.equal(f.armedCount(), 0);
});

test("deadline timer - a deadline beyond setTimeout's limit (2^31 - 1 ms) waits the limit and arms again, never a 1 ms loop", () => {
  const f = fakeTimers();
  const limit = 2 ** 31 - 1;
  const far = 30 * 24 * 3600 * 1000; // --item-timeout 30d
  let calls = 0;
  const timer = new DeadlineTimer(
    (now) => {
      calls++;
      return now >= far ? undefined : far;
    },
    f.clock,
    f.api,
  );
  timer.add(far);
  assert.deepEqual(f.armedAt(), [limit]);
  f.advance(limit);
  assert.equal(calls, 1);
  assert.deepEqual(f.armedAt(), [far], "the rest, in one more timer");
  f.advance(far);
  assert.equal(calls, 2);
  assert.equal(f.armedCount(), 0);
});
