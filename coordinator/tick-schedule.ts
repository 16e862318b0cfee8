// When the coordinator's tick fires next. The tick sweeps lost workers, fails unplaceable items,
// refreshes progress and gauges, and runs a scheduling pass. While batches run (or a restart's
// recovery window is open) it fires every `periodMs` (--heartbeat-timeout / 6), as it always
// has. With nothing running, nothing but a worker's heartbeat expiry can fall due, so the tick
// is armed for that expiry (or `idleMaxMs` when it is later, for the gauges and the LOST list's
// upkeep) instead of waking an idle coordinator twice a second (issue 13, the fleet's idle cost:
// docs/performance.md). A submitted or resumed batch arms the busy cadence at once
// (Coordinator.activate). Lost-worker detection is never later than before: the tick is never
// later than the next expiry, busy or idle.

export interface TickInputs {
  nowMs: number;
  /** Batches in memory, or the recovery window still open. */
  busy: boolean;
  /** The fixed cadence while busy. */
  periodMs: number;
  /** The longest an idle coordinator goes without a tick. */
  idleMaxMs: number;
  /** The earliest time a worker not yet LOST would be found lost (Fleet.nextLostAtMs); undefined: none. */
  nextLostAtMs: number | undefined;
}

/** The time of the next tick, never later than the next heartbeat expiry. */
export function nextTickAtMs(t: TickInputs): number {
  const cadence = t.nowMs + (t.busy ? t.periodMs : t.idleMaxMs);
  return t.nextLostAtMs === undefined ? cadence : Math.min(cadence, t.nextLostAtMs);
}
