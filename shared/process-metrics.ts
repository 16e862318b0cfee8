import { monitorEventLoopDelay, type IntervalHistogram } from "node:perf_hooks";
import { Gauge, collectDefaultMetrics, type Registry } from "prom-client";

/** Default sampling period of the event-loop delay monitor (`--event-loop-resolution`). */
export const DEFAULT_EVENT_LOOP_RESOLUTION_MS = 250;

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
export function collectProcessMetrics(registry: Registry, resolutionMs = DEFAULT_EVENT_LOOP_RESOLUTION_MS): { stop(): void } {
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
      // No firing since the last scrape (scrapes closer than the resolution): keep the figures.
      if (histogram.count === 0) return;
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
  return { stop: () => histogram.disable() };
}
