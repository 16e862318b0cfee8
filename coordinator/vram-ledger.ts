// The coordinator's view of VRAM per GPU: what the last heartbeat said was free, minus what the
// coordinator has promised since and the worker has not yet counted. Pure: no I/O, no clock.

export interface GpuView {
  key: string;
  workerId: string;
  index: number;
  name: string;
  totalBytes: number;
  freeBytes: number;
  reservedBytes: number;
  source: string;
}

interface Reservation {
  gpuKey: string;
  bytes: number;
  /** The model whose weights this reservation includes, if it loads one. */
  loads: string | undefined;
}

export function gpuKey(workerId: string, index: number): string {
  return `${workerId}/${index}`;
}

export class ReservationError extends Error {
  override readonly name = "ReservationError";
  readonly code = "OVERBOOKED";
}

export class VramLedger {
  private readonly gpus = new Map<string, GpuView>();
  /** The same GPUs by worker, sorted by index: placement reads this for every item. */
  private readonly byWorker = new Map<string, GpuView[]>();
  private readonly reservations = new Map<string, Reservation>();
  /** gpuKey → model → reservations that load it (weights counted once per GPU). */
  private readonly loads = new Map<string, Map<string, number>>();

  /**
   * A heartbeat: replaces the GPU's free figure and drops the reservations the worker now
   * counts itself (the items it reports as held), so nothing is subtracted twice.
   */
  observe(
    workerId: string,
    gpus: { index: number; name: string; totalBytes: number; freeBytes: number; source: string }[],
    heldTokens: Iterable<string>,
  ): void {
    const previous = this.byWorker.get(workerId) ?? [];
    const next: GpuView[] = [];
    for (const g of gpus) {
      const key = gpuKey(workerId, g.index);
      let view = this.gpus.get(key);
      if (!view) {
        view = { key, workerId, index: g.index, name: g.name, totalBytes: 0, freeBytes: 0, reservedBytes: 0, source: g.source };
        this.gpus.set(key, view);
      }
      view.name = g.name;
      view.totalBytes = g.totalBytes;
      view.freeBytes = g.freeBytes;
      view.source = g.source;
      next.push(view);
    }
    for (const old of previous) if (!next.includes(old)) this.gpus.delete(old.key);
    next.sort((a, b) => a.index - b.index);
    this.byWorker.set(workerId, next);
    for (const token of heldTokens) {
      const r = this.reservations.get(token);
      if (r && this.gpus.get(r.gpuKey)?.workerId === workerId) this.drop(token, r);
    }
  }

  available(key: string): number {
    const g = this.gpus.get(key);
    return g ? g.freeBytes - g.reservedBytes : 0;
  }

  /** True when a reservation on this GPU already loads the model (its weights are counted). */
  loading(key: string, model: string): boolean {
    return (this.loads.get(key)?.get(model) ?? 0) > 0;
  }

  reserve(token: string, key: string, bytes: number, loads?: string): void {
    const g = this.gpus.get(key);
    if (!g) throw new ReservationError(`unknown GPU ${key}`);
    if (this.reservations.has(token)) throw new ReservationError(`lease ${token} already holds a reservation`);
    if (bytes > g.freeBytes - g.reservedBytes) {
      throw new ReservationError(`${bytes} bytes exceed the ${g.freeBytes - g.reservedBytes} available on ${key}`);
    }
    g.reservedBytes += bytes;
    this.reservations.set(token, { gpuKey: key, bytes, loads });
    if (loads) {
      let m = this.loads.get(key);
      if (!m) this.loads.set(key, (m = new Map()));
      m.set(loads, (m.get(loads) ?? 0) + 1);
    }
  }

  /** The item ended or was taken back. Unknown tokens are ignored (already counted). */
  release(token: string): void {
    const r = this.reservations.get(token);
    if (r) this.drop(token, r);
  }

  removeWorker(workerId: string): void {
    for (const [token, r] of this.reservations) if (this.gpus.get(r.gpuKey)?.workerId === workerId) this.drop(token, r);
    for (const g of this.byWorker.get(workerId) ?? []) {
      this.gpus.delete(g.key);
      this.loads.delete(g.key);
    }
    this.byWorker.delete(workerId);
  }

  /** Shared, not copied: callers must not modify it. */
  gpusOf(workerId: string): readonly GpuView[] {
    return this.byWorker.get(workerId) ?? [];
  }

  all(): GpuView[] {
    return [...this.gpus.values()];
  }

  reservationCount(): number {
    return this.reservations.size;
  }

  private drop(token: string, r: Reservation): void {
    this.reservations.delete(token);
    const g = this.gpus.get(r.gpuKey);
    if (g) g.reservedBytes -= r.bytes;
    if (r.loads) {
      const m = this.loads.get(r.gpuKey);
      const n = (m?.get(r.loads) ?? 0) - 1;
      if (n > 0) m!.set(r.loads, n);
      else m?.delete(r.loads);
    }
  }
}
