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
  private readonly reservations = new Map<string, Reservation>();

  /**
   * A heartbeat: replaces the GPU's free figure and drops the reservations the worker now
   * counts itself (the items it reports as held), so nothing is subtracted twice.
   */
  observe(
    workerId: string,
    gpus: { index: number; name: string; totalBytes: number; freeBytes: number; source: string }[],
    heldTokens: Iterable<string>,
  ): void {
    const seen = new Set<string>();
    for (const g of gpus) {
      const key = gpuKey(workerId, g.index);
      seen.add(key);
      const prev = this.gpus.get(key);
      this.gpus.set(key, {
        key,
        workerId,
        index: g.index,
        name: g.name,
        totalBytes: g.totalBytes,
        freeBytes: g.freeBytes,
        reservedBytes: prev?.reservedBytes ?? 0,
        source: g.source,
      });
    }
    for (const key of [...this.gpus.keys()]) {
      if (this.gpus.get(key)!.workerId === workerId && !seen.has(key)) this.gpus.delete(key);
    }
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
    for (const r of this.reservations.values()) if (r.gpuKey === key && r.loads === model) return true;
    return false;
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
  }

  /** The item ended or was taken back. Unknown tokens are ignored (already counted). */
  release(token: string): void {
    const r = this.reservations.get(token);
    if (r) this.drop(token, r);
  }

  removeWorker(workerId: string): void {
    for (const [token, r] of this.reservations) if (this.gpus.get(r.gpuKey)?.workerId === workerId) this.reservations.delete(token);
    for (const [key, g] of this.gpus) if (g.workerId === workerId) this.gpus.delete(key);
  }

  gpusOf(workerId: string): GpuView[] {
    return [...this.gpus.values()].filter((g) => g.workerId === workerId).sort((a, b) => a.index - b.index);
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
  }
}
