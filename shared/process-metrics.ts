import { monitorEventLoopDelay, type IntervalHistogram } from "node:perf_hooks";
import { Gauge, collectDefaultMetrics, type Registry } from "prom-client";

/** Default sampling period of the event-loop delay monitor (`--event-loop-resolution`). */
export const DEFAULT_EVENT_LOOP_RESOLUTION_MS = 250;

/** How long the monitor keeps sampling after the process's last work ended (see setBusy). */
export const EVENT_LOOP_IDLE_LINGER_MS = 2000;

/** The handle of the process metrics: the owner says when it holds work. */
export interface ProcessMetricsHandle {
  /**
   * Whether the process holds work (a worker's held items, the coordinator's running batches).
   * The event-loop monitor samples while it does and for EVENT_LOOP_IDLE_LINGER_MS after; then
   * it stops until the next work, so an idle process does not wake for it. Busy at creation.
   */
  setBusy(busy: boolean): void;
  /** Idempotent. */
  stop(): void;
}

/**
 * prom-client's event-loop gauges, which this module registers itself (same names, same help),
 * so that the dashboard's `nodejs_eventloop_lag_p99_seconds` keeps working.
 */
const LAG_GAUGES = ["min", "max", "mean", "stddev", "p50", "p90", "p99"] as const;

/**
 * prom-client's process metrics (CPU, memory, handles, GC, ...) and the event-loop delay, sampled
 * every `resolutionMs` instead of prom-client's fixed 10 ms.
 *
 * Why not prom-client's own monitor: its `monitorEventLoopDelay` timer fires 100 times a second
 * in every process, busy or idle; on an idle fleet that timer was most of each Node process's
 * wake-ups (about 100 of 110 per second) and of its idle CPU (docs/performance.md, "The fleet's
 * idle cost"). A coarser timer alone would move the gauges: Node's histogram records the whole
 * interval between two firings (the resolution plus the delay), so prom-client's gauges read
 * ~10 ms on an idle loop and would read ~250 ms here. These gauges report the delay alone (the
 * recorded interval less the resolution), so an idle loop reads ~0 whatever the resolution. A
 * stall longer than the resolution is always seen; a shorter one is seen when it overlaps a
 * firing (probability ~ stall / resolution).
 */
export function collectProcessMetrics(
  registry: Registry,
  resolutionMs = DEFAULT_EVENT_LOOP_RESOLUTION_MS,
  lingerMs = EVENT_LOOP_IDLE_LINGER_MS,
): ProcessMetricsHandle {
  // prom-client cannot leave its monitor out: given the longest period Node accepts it never
  // fires, and its gauges are taken out of the registry for the ones below.
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 2 ** 31 - 1 });
  registry.removeSingleMetric("nodejs_eventloop_lag_seconds");
  for (const g of LAG_GAUGES) registry.removeSingleMetric(`nodejs_eventloop_lag_${g}_seconds`);

  const histogram: IntervalHistogram = monitorEventLoopDelay({ resolution: resolutionMs });
  histogram.enable();
  const resolutionNs = resolutionMs * 1e6;
  const delaySeconds = (recordedNs: number) => Math.max(0, recordedNs - resolutionNs) / 1e9;
  let gauges: Record<(typeof LAG_GAUGES)[number], Gauge>;
  const lag = new Gauge({
    name: "nodejs_eventloop_lag_seconds",
    help: "Lag of event loop in seconds.",
    registers: [registry],
    aggregator: "average",
    // As prom-client does: the lag of one setImmediate now (seen by the next scrape), and the
    // histogram's figures since the last scrape.
    collect() {
      const start = process.hrtime.bigint();
      setImmediate(() => lag.set(Number(process.hrtime.bigint() - start) / 1e9));
      if (histogram.count === 0) {
        // Paused (no work held, see setBusy) and nothing recorded since the last scrape: the
        // percentiles read 0, there is no delay to report; `nodejs_eventloop_lag_seconds` above
        // still measures one turn of the loop at every scrape.
        if (!sampling) for (const g of LAG_GAUGES) gauges[g].set(0);
        // Otherwise no firing since the last scrape (scrapes closer than the resolution): keep the figures.
        return;
      }
      gauges.min.set(delaySeconds(histogram.min));
      gauges.max.set(delaySeconds(histogram.max));
      gauges.mean.set(delaySeconds(histogram.mean));
      // The spread of the intervals is the spread of the delays.
      gauges.stddev.set(histogram.stddev / 1e9);
      gauges.p50.set(delaySeconds(histogram.percentile(50)));
      gauges.p90.set(delaySeconds(histogram.percentile(90)));
      gauges.p99.set(delaySeconds(histogram.percentile(99)));
      histogram.reset();
    },
  });
  // Registered after `lag`, whose collect() sets them: a scrape reads them after it ran.
  gauges = Object.fromEntries(
    LAG_GAUGES.map((g) => [g, new Gauge({ name: `nodejs_eventloop_lag_${g}_seconds`, help: `The ${g} of the recorded event loop delays.`, registers: [registry] })]),
  ) as Record<(typeof LAG_GAUGES)[number], Gauge>;
  // Why pause at all: at 4 firings a second the monitor was most of an idle worker's wake-ups (4 of
  // 5) and 4 of the coordinator's ~8 (docs/performance.md, "The fleet's idle cost, second round").
  let sampling = true;
  let stopped = false;
  let pauseTimer: NodeJS.Timeout | undefined;
  const clearPause = () => {
    if (pauseTimer) clearTimeout(pauseTimer);
    pauseTimer = undefined;
  };
  return {
    setBusy(busy: boolean) {
      if (stopped) return;
      if (busy) {
        clearPause();
        if (!sampling) {
          sampling = true;
          histogram.enable();
        }
      } else if (sampling && !pauseTimer) {
        // The linger keeps a trickle of short items (one ends, the next comes) from toggling
        // the timer for each and leaves the end of a burst measured.
        pauseTimer = setTimeout(() => {
          pauseTimer = undefined;
          sampling = false;
          histogram.disable();
        }, lingerMs).unref();
      }
    },
    stop() {
      stopped = true;
      clearPause();
      sampling = false;
      histogram.disable();
    },
  };
}
