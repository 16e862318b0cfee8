import { test } from "node:test";
import assert from "node:assert/strict";
import { Registry } from "prom-client";
import { collectProcessMetrics } from "../../shared/process-metrics.js";
import { CoordinatorMetrics } from "../../coordinator/metrics.js";
import { WorkerMetrics } from "../../worker/metrics.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A gauge's value in one scrape's text (one series, no labels). */
function gauge(text: string, name: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  assert.ok(line, `${name} in the output`);
  return Number(line.split(" ")[1]);
}

test("process metrics - prom-client's defaults are there once, with the event-loop gauges the dashboard reads", async () => {
  const registry = new Registry();
  const handle = collectProcessMetrics(registry, 20);
  try {
    const text = await registry.metrics();
    for (const name of ["process_cpu_user_seconds_total", "process_resident_memory_bytes", "nodejs_heap_size_used_bytes", "nodejs_gc_duration_seconds", "nodejs_eventloop_lag_seconds", "nodejs_eventloop_lag_p99_seconds", "nodejs_eventloop_lag_p50_seconds"]) {
      assert.equal(text.split("\n").filter((l) => l.startsWith(`# TYPE ${name} `)).length, 1, `${name} registered once`);
    }
    // Both processes' registries build (a name registered twice would throw).
    assert.match(await new CoordinatorMetrics(20).registry.metrics(), /nodejs_eventloop_lag_p99_seconds/);
    assert.match(await new WorkerMetrics("w1", undefined, 20).registry.metrics(), /nodejs_eventloop_lag_p99_seconds/);
  } finally {
    handle.stop();
  }
});

test("process metrics - the event-loop gauges report the delay alone (an idle loop reads below the resolution) and a stall longer than the resolution shows", async () => {
  const resolutionMs = 100;
  const registry = new Registry();
  const handle = collectProcessMetrics(registry, resolutionMs);
  try {
    await sleep(600); // an idle loop: several firings
    await registry.metrics(); // collect() runs at scrapes: this one reads and resets
    await sleep(450);
    const idle = await registry.metrics();
    // Node records the whole interval between firings (resolution + delay): without the
    // resolution taken off, the smallest reading could not be below it.
    const idleMin = gauge(idle, "nodejs_eventloop_lag_min_seconds");
    assert.ok(idleMin < resolutionMs / 1000, `idle minimum ${idleMin} s is a delay, not an interval`);
    // After a scrape (which resets the histogram) Node needs one firing before it records again.
    await sleep(2.5 * resolutionMs);
    const end = Date.now() + 3 * resolutionMs;
    while (Date.now() < end) {
      /* a stall of the event loop, 3 × the resolution */
    }
    await sleep(2 * resolutionMs);
    // Read from this scrape: the next one starts a new window.
    const max = gauge(await registry.metrics(), "nodejs_eventloop_lag_max_seconds");
    assert.ok(max >= (2 * resolutionMs) / 1000, `the stall shows in the maximum (${max} s)`);
  } finally {
    handle.stop();
  }
});

test("process metrics - --event-loop-resolution: 250 ms by default on both processes, a duration, refused outside 1ms..60s with the option named", async () => {
  const { Command } = await import("commander");
  const { commonOptions, coordinatorFlags, coordinatorOptionsFrom, workerFlags, workerOptionsFrom } = await import("../../cli/server-commands.js");
  const coordinator = (args: string[]) => {
    const cmd = commonOptions(coordinatorFlags(new Command("coordinator"))).exitOverride();
    cmd.parse(args, { from: "user" });
    return coordinatorOptionsFrom(cmd.opts());
  };
  const worker = (args: string[]) => {
    const cmd = commonOptions(workerFlags(new Command("worker"))).exitOverride();
    cmd.parse(args, { from: "user" });
    return workerOptionsFrom(cmd.opts());
  };
  assert.equal(coordinator([]).eventLoopResolutionMs, 250);
  assert.equal(worker([]).eventLoopResolutionMs, 250);
  assert.equal(coordinator(["--event-loop-resolution", "1s"]).eventLoopResolutionMs, 1000);
  assert.equal(worker(["--event-loop-resolution", "10ms"]).eventLoopResolutionMs, 10);
  assert.throws(() => coordinator(["--event-loop-resolution", "0ms"]), /--event-loop-resolution: "0ms" must be between 1ms and 60s/);
  assert.throws(() => worker(["--event-loop-resolution", "2m"]), /--event-loop-resolution: "2m" must be between 1ms and 60s/);
  assert.throws(() => worker(["--event-loop-resolution", "often"]), /--event-loop-resolution: "often" is not a duration/);
});

test("process metrics - the monitor samples only while the owner holds work (and a linger after); paused, a stall is not recorded and the percentiles read 0", async () => {
  const resolutionMs = 20;
  const lingerMs = 100;
  const registry = new Registry();
  const handle = collectProcessMetrics(registry, resolutionMs, lingerMs);
  const stall = (ms: number) => {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      /* a stall of the event loop */
    }
  };
  try {
    handle.setBusy(false);
    handle.setBusy(false); // idempotent: one pause, after the linger
    await sleep(lingerMs + 5 * resolutionMs);
    await registry.metrics(); // drains what the linger recorded
    stall(8 * resolutionMs);
    await sleep(3 * resolutionMs);
    const paused = await registry.metrics();
    // A sampling monitor would have recorded the stall (~8 × the resolution) here.
    assert.equal(gauge(paused, "nodejs_eventloop_lag_max_seconds"), 0, "paused: nothing recorded");
    assert.equal(gauge(paused, "nodejs_eventloop_lag_p99_seconds"), 0);
    // Work again: sampling at once (no linger on the way in), and the stall shows.
    handle.setBusy(true);
    await sleep(2.5 * resolutionMs);
    stall(8 * resolutionMs);
    await sleep(2 * resolutionMs);
    const busy = gauge(await registry.metrics(), "nodejs_eventloop_lag_max_seconds");
    assert.ok(busy >= (5 * resolutionMs) / 1000, `busy: the stall shows (${busy} s)`);
    // Work that ends and comes back within the linger never pauses it.
    handle.setBusy(false);
    await sleep(lingerMs / 4);
    handle.setBusy(true);
    await sleep(lingerMs);
    await registry.metrics();
    await sleep(2.5 * resolutionMs);
    stall(8 * resolutionMs);
    await sleep(2 * resolutionMs);
    assert.ok(gauge(await registry.metrics(), "nodejs_eventloop_lag_max_seconds") >= (5 * resolutionMs) / 1000, "still sampling");
  } finally {
    handle.stop();
    handle.stop();
  }
});
