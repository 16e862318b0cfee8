// The coordinator's tick schedule (coordinator/tick-schedule.ts) with the real Fleet and
// DeadlineTimer on fake timers (unit test): an idle coordinator ticks at the next heartbeat
// expiry instead of every timeout / 6, finds a silent worker lost no later than the fixed
// cadence did, and goes back to the fixed cadence as soon as a batch runs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { DeadlineTimer, type TimerApi } from "../../shared/deadline-timer.js";
import { Fleet } from "../../coordinator/fleet.js";
import { nextTickAtMs } from "../../coordinator/tick-schedule.js";
import { Heartbeat } from "../../proto/gen/shoal/v1/wire.js";
import { WorkerState } from "../../proto/gen/shoal/v1/shoal.js";

const TIMEOUT_MS = 3000;
const PERIOD_MS = TIMEOUT_MS / 6;

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
  return { api, clock: () => now, advance };
}

/** A coordinator's tick loop reduced to what decides its timing: the fleet, busy or not. */
function tickLoop() {
  const t = fakeTimers();
  const fleet = new Fleet(TIMEOUT_MS);
  const ticks: number[] = [];
  const lost: { id: string; at: number; lastSeen: number }[] = [];
  let busy = false;
  const seq = new Map<string, number>();
  const timer = new DeadlineTimer(
    (now) => {
      ticks.push(now);
      for (const w of fleet.sweep(now)) lost.push({ id: w.id, at: now, lastSeen: w.lastSeenMs });
      return nextTickAtMs({ nowMs: now, busy, periodMs: PERIOD_MS, idleMaxMs: TIMEOUT_MS, nextLostAtMs: fleet.nextLostAtMs() });
    },
    t.clock,
    t.api,
  );
  const heartbeat = (workerId: string) => {
    const n = (seq.get(workerId) ?? 0) + 1;
    seq.set(workerId, n);
    fleet.observe(Heartbeat.fromPartial({ workerId, incarnation: "i1", seq: n, state: WorkerState.WORKER_STATE_READY, hostname: "h", maxInFlight: 1 }), t.clock());
  };
  timer.add(PERIOD_MS); // start()
  return {
    ...t,
    fleet,
    ticks,
    lost,
    heartbeat,
    setBusy: (b: boolean) => {
      busy = b;
      if (b) timer.add(t.clock() + PERIOD_MS); // activate()
    },
    timer,
  };
}

/** Runs the loop to `to` with the given workers heartbeating every second (offset per worker). */
function runWithHeartbeats(loop: ReturnType<typeof tickLoop>, from: number, to: number, workers: string[]) {
  for (let at = from; at <= to; at += 1000) {
    workers.forEach((w, i) => {
      loop.advance(at + i * 370);
      loop.heartbeat(w);
    });
  }
  loop.advance(to);
}

test("tick schedule - pure: busy at the period, idle at the heartbeat expiry or idleMax, never later than an expiry", () => {
  assert.equal(nextTickAtMs({ nowMs: 1000, busy: true, periodMs: 500, idleMaxMs: 3000, nextLostAtMs: undefined }), 1500);
  assert.equal(nextTickAtMs({ nowMs: 1000, busy: true, periodMs: 500, idleMaxMs: 3000, nextLostAtMs: 1200 }), 1200);
  assert.equal(nextTickAtMs({ nowMs: 1000, busy: false, periodMs: 500, idleMaxMs: 3000, nextLostAtMs: undefined }), 4000);
  assert.equal(nextTickAtMs({ nowMs: 1000, busy: false, periodMs: 500, idleMaxMs: 3000, nextLostAtMs: 3400 }), 3400);
});

test("tick schedule - fleet: the next expiry is the earliest live worker's last heartbeat + timeout + 1 ms; LOST ones do not count", () => {
  const fleet = new Fleet(TIMEOUT_MS);
  assert.equal(fleet.nextLostAtMs(), undefined);
  const hb = (workerId: string, seq: number) => Heartbeat.fromPartial({ workerId, incarnation: "i1", seq, state: WorkerState.WORKER_STATE_READY, hostname: "h", maxInFlight: 1 });
  fleet.observe(hb("a", 1), 100);
  fleet.observe(hb("b", 1), 700);
  assert.equal(fleet.nextLostAtMs(), 100 + TIMEOUT_MS + 1);
  // sweep() marks a worker lost at exactly that time, not a millisecond before.
  assert.deepEqual(fleet.sweep(100 + TIMEOUT_MS).map((w) => w.id), []);
  assert.deepEqual(fleet.sweep(100 + TIMEOUT_MS + 1).map((w) => w.id), ["a"]);
  assert.equal(fleet.nextLostAtMs(), 700 + TIMEOUT_MS + 1);
  fleet.sweep(10_000);
  assert.equal(fleet.nextLostAtMs(), undefined);
});

test("tick schedule - an idle coordinator with heartbeating workers ticks every ~2-3 s, not every timeout / 6", () => {
  const loop = tickLoop();
  runWithHeartbeats(loop, 0, 60_000, ["w1", "w2"]);
  assert.deepEqual(loop.lost, []);
  // The fixed cadence: 120 ticks in 60 s. At the heartbeat expiry: one per (timeout - interval) or so.
  assert.ok(loop.ticks.length <= 60_000 / (TIMEOUT_MS - 1000) + 2, `${loop.ticks.length} ticks in 60 s idle`);
  assert.ok(loop.ticks.length >= 60_000 / TIMEOUT_MS - 1, `${loop.ticks.length} ticks: at least one per timeout`);
  for (let i = 1; i < loop.ticks.length; i++) assert.ok(loop.ticks[i]! - loop.ticks[i - 1]! <= TIMEOUT_MS, "never more than the timeout between ticks");
});

test("tick schedule - a worker that goes silent while idle is found lost at its expiry, within timeout + period as before", () => {
  const loop = tickLoop();
  runWithHeartbeats(loop, 0, 10_000, ["w1", "w2"]);
  const w2Last = loop.fleet.get("w2")!.lastSeenMs;
  runWithHeartbeats(loop, 11_000, 30_000, ["w1"]);
  assert.equal(loop.lost.length, 1);
  assert.equal(loop.lost[0]!.id, "w2");
  assert.equal(loop.lost[0]!.at, w2Last + TIMEOUT_MS + 1, "found at its expiry");
  assert.ok(loop.lost[0]!.at - w2Last <= TIMEOUT_MS + PERIOD_MS, "the documented bound");
});

test("tick schedule - a batch arms the fixed cadence at once; idle again, it slows down", () => {
  const loop = tickLoop();
  runWithHeartbeats(loop, 0, 10_000, ["w1"]);
  const idleTicks = loop.ticks.length;
  loop.advance(10_100);
  loop.setBusy(true);
  const busyFrom = loop.ticks.length;
  runWithHeartbeats(loop, 11_000, 20_100, ["w1"]);
  const busyTicks = loop.ticks.slice(busyFrom);
  assert.equal(busyTicks[0], 10_100 + PERIOD_MS, "the first busy tick one period after the batch came");
  for (let i = 1; i < busyTicks.length; i++) assert.ok(busyTicks[i]! - busyTicks[i - 1]! <= PERIOD_MS);
  assert.ok(busyTicks.length >= 10_000 / PERIOD_MS - 1);
  loop.setBusy(false);
  const idleFrom = loop.ticks.length;
  runWithHeartbeats(loop, 21_000, 41_000, ["w1"]);
  assert.ok(loop.ticks.length - idleFrom <= 20_000 / (TIMEOUT_MS - 1000) + 2);
  assert.ok(idleTicks <= 10_000 / (TIMEOUT_MS - 1000) + 2);
  loop.timer.stop();
});
