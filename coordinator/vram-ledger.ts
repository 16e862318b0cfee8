// The coordinator's view of VRAM per GPU: what the last report said was free, minus what the
// coordinator has promised since and the worker has not yet counted. Pure: no I/O, no clock.
//
// Every assignment is a lease on one GPU, alive until its outcome arrives (or the worker is
// lost). While any lease of a model lives on a GPU, that model's weights are counted there
// (by the worker once it holds the item, or by the reservation that loads it), so further
// items of the model need only their activations. When a lease ends the ledger gives its
// activations back at once on budget GPUs, whose free figure is pure accounting; a measured
// (nvidia-smi) GPU waits for its next reading, since the runtime may keep the memory cached.

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

export interface GpuReport {
  index: number;
  name: string;
  totalBytes: number;
  freeBytes: number;
  source: string;
}

/** The VRAM side of one attempt (see attempts.ts): what it holds on its GPU. */
interface Reservation {
  gpuKey: string;
  model: string;
  /** Reserved bytes not yet counted by the worker (0 once it reported holding the item). */
  reserved: number;
  /** The item's activations: given back on a budget GPU when the lease ends. */
  activation: number;
  /** The model's weights: given back on a budget GPU when its last lease there ends. */
  weights: number;
  /** The worker has counted this item in a free figure it reported. */
  counted: boolean;
  /** A later report no longer listed the item: that figure already has its room back. */
  letGo: boolean;
}

export function gpuKey(workerId: string, index: number): string {
  return `${workerId}/${index}`;
}

export class ReservationError extends Error {
  override readonly name = "ReservationError";
  readonly code = "OVERBOOKED";
}

const EMPTY: ReadonlyMap<string, number> = new Map();

export class VramLedger {
  private readonly gpus = new Map<string, GpuView>();
  /** The same GPUs by worker, sorted by index: placement reads this for every item. */
  private readonly byWorker = new Map<string, GpuView[]>();
  private readonly leases = new Map<string, Reservation>();
  /** gpuKey → model → live leases of that model on the GPU. */
  private readonly warmCounts = new Map<string, Map<string, number>>();
  /** workerId → its live lease tokens, so a report only visits its own worker's leases. */
  private readonly leasesByWorker = new Map<string, Set<string>>();
  /**
   * gpuKey → model → weights the worker keeps loaded and counts as used in that GPU's free
   * figure, idle or not (Heartbeat.resident_weights). Their weights are paid there already, and
   * only an eviction (defragmentation) gives them back.
   */
  private readonly residentByGpu = new Map<string, Map<string, number>>();
  /**
   * workerId → items its last full report listed that are no live lease here: their outcomes
   * came first, so that report's free figure still counts room the ledger has already given
   * back (a heartbeat sent just before an item ended). Until a report without them, its GPUs'
   * figures understate what is free.
   */
  private readonly staleHeld = new Map<string, number>();
  /** Told the worker whose GPUs' free, reserved or warm figures changed (the placement index). */
  private readonly listeners: ((workerId: string) => void)[] = [];

  /** Calls `fn` with a worker's id whenever a figure placement reads on one of its GPUs changes. */
  onChange(fn: (workerId: string) => void): void {
    this.listeners.push(fn);
  }

  private changed(workerId: string): void {
    for (const fn of this.listeners) fn(workerId);
  }

  /**
   * A report from the worker (heartbeat, or its answer to an assignment): replaces each GPU's
   * free figure; the leases it lists as held are counted in that figure from now on, so their
   * reservations stop being subtracted. `partial`: the report lists only some of what the
   * worker holds (an assignment's answer lists the items it just took): leases it does not list
   * are not taken as let go, or their room would only come back with the next heartbeat.
   */
  observe(workerId: string, gpus: GpuReport[], heldTokens: Iterable<string>, partial = false): void {
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
    for (const old of previous) {
      if (next.includes(old)) continue;
      this.gpus.delete(old.key);
      this.residentByGpu.delete(old.key);
    }
    next.sort((a, b) => a.index - b.index);
    this.byWorker.set(workerId, next);
    const held = heldTokens instanceof Set ? (heldTokens as Set<string>) : new Set(heldTokens);
    if (!partial) {
      const mine = this.leasesByWorker.get(workerId);
      let stale = 0;
      for (const token of held) if (!mine?.has(token)) stale++;
      if (stale > 0) this.staleHeld.set(workerId, stale);
      else this.staleHeld.delete(workerId);
    }
    for (const token of this.leasesByWorker.get(workerId) ?? []) {
      const lease = this.leases.get(token)!;
      if (held.has(token)) {
        if (!lease.counted) {
          lease.counted = true;
          this.unreserve(lease);
        }
      } else if (lease.counted && !partial) {
        lease.letGo = true;
      }
    }
    this.changed(workerId);
  }

  /** The resident weights a worker reports (all of them: the list replaces the last one). */
  observeResident(workerId: string, list: Iterable<{ gpuIndex: number; model: string; weightsBytes: number }>): void {
    for (const g of this.byWorker.get(workerId) ?? []) this.residentByGpu.delete(g.key);
    for (const r of list) {
      const key = gpuKey(workerId, r.gpuIndex);
      if (!this.gpus.has(key)) continue;
      let m = this.residentByGpu.get(key);
      if (!m) this.residentByGpu.set(key, (m = new Map()));
      m.set(r.model, r.weightsBytes);
    }
    this.changed(workerId);
  }

  /**
   * False while the worker's last full report listed items whose attempts have ended here: its
   * free figures are too low until its next report (defragmentation waits for that, rather than
   * evicting for room that is about to show).
   */
  settled(workerId: string): boolean {
    return !this.staleHeld.has(workerId);
  }

  /** Models whose weights the worker keeps (and counts) on this GPU, with their bytes. */
  residentWeights(key: string): ReadonlyMap<string, number> {
    return this.residentByGpu.get(key) ?? EMPTY;
  }

  /** The GPU's size (undefined for a GPU no report named). */
  totalBytes(key: string): number | undefined {
    return this.gpus.get(key)?.totalBytes;
  }

  available(key: string): number {
    const g = this.gpus.get(key);
    return g ? g.freeBytes - g.reservedBytes : 0;
  }

  /** True while a live lease of the model is on this GPU: its weights are counted there. */
  warm(key: string, model: string): boolean {
    return (this.warmCounts.get(key)?.get(model) ?? 0) > 0;
  }

  /** Models with a live lease on this GPU (their weights are counted there). */
  warmModels(key: string): IterableIterator<string> | string[] {
    return this.warmCounts.get(key)?.keys() ?? [];
  }

  /** Opens a lease: `bytes` are reserved (activations, plus the weights if it loads the model). */
  reserve(token: string, key: string, bytes: number, model: string, activation: number = bytes, weights = 0): void {
    const g = this.gpus.get(key);
    if (!g) throw new ReservationError(`unknown GPU ${key}`);
    if (this.leases.has(token)) throw new ReservationError(`lease ${token} already holds a reservation`);
    if (bytes > g.freeBytes - g.reservedBytes) {
      throw new ReservationError(`${bytes} bytes exceed the ${g.freeBytes - g.reservedBytes} available on ${key}`);
    }
    g.reservedBytes += bytes;
    this.leases.set(token, { gpuKey: key, model, reserved: bytes, activation: Math.min(activation, bytes), weights, counted: false, letGo: false });
    let mine = this.leasesByWorker.get(g.workerId);
    if (!mine) this.leasesByWorker.set(g.workerId, (mine = new Set()));
    mine.add(token);
    let m = this.warmCounts.get(key);
    if (!m) this.warmCounts.set(key, (m = new Map()));
    m.set(model, (m.get(model) ?? 0) + 1);
    this.changed(g.workerId);
  }

  /** The lease ended (its outcome arrived, or it was taken back). Unknown tokens are ignored. */
  release(token: string): void {
    const lease = this.leases.get(token);
    if (!lease) return;
    this.end(token, lease);
    const g = this.gpus.get(lease.gpuKey);
    // The worker has already let go of a counted item; on a budget GPU its next report will say
    // exactly this (its activations, and the weights once no item of the model is left there),
    // so say it now and let the room be used at once.
    if (lease.counted && !lease.letGo && g && g.source === "budget") {
      // Weights the worker keeps resident stay counted until they are evicted.
      const weights = this.warm(lease.gpuKey, lease.model) || this.residentWeights(lease.gpuKey).has(lease.model) ? 0 : lease.weights;
      g.freeBytes = Math.min(g.totalBytes, g.freeBytes + lease.activation + weights);
    }
    this.changed(g?.workerId ?? lease.gpuKey.slice(0, lease.gpuKey.lastIndexOf("/")));
  }

  removeWorker(workerId: string): void {
    for (const token of [...(this.leasesByWorker.get(workerId) ?? [])]) this.end(token, this.leases.get(token)!);
    this.leasesByWorker.delete(workerId);
    this.staleHeld.delete(workerId);
    for (const g of this.byWorker.get(workerId) ?? []) {
      this.gpus.delete(g.key);
      this.warmCounts.delete(g.key);
      this.residentByGpu.delete(g.key);
    }
    this.byWorker.delete(workerId);
    this.changed(workerId);
  }

  /** Shared, not copied: callers must not modify it. */
  gpusOf(workerId: string): readonly GpuView[] {
    return this.byWorker.get(workerId) ?? [];
  }

  all(): GpuView[] {
    return [...this.gpus.values()];
  }

  /** Leases whose bytes are still reserved (not yet counted by their worker). */
  reservationCount(): number {
    let n = 0;
    for (const l of this.leases.values()) if (l.reserved > 0) n++;
    return n;
  }

  private unreserve(lease: Reservation): void {
    const g = this.gpus.get(lease.gpuKey);
    if (g) g.reservedBytes -= lease.reserved;
    lease.reserved = 0;
  }

  private end(token: string, lease: Reservation): void {
    this.leases.delete(token);
    const workerId = this.gpus.get(lease.gpuKey)?.workerId ?? lease.gpuKey.slice(0, lease.gpuKey.lastIndexOf("/"));
    this.leasesByWorker.get(workerId)?.delete(token);
    this.unreserve(lease);
    const m = this.warmCounts.get(lease.gpuKey);
    const n = (m?.get(lease.model) ?? 0) - 1;
    if (n > 0) m!.set(lease.model, n);
    else m?.delete(lease.model);
  }
}
