// How long an item runs, learned from the fleet. Pure: no I/O, no clock.
//
// API
//   gpuTypeOf(name, totalBytes)          the GPU type key of one GPU (its name and its size)
//   new DurationModel(options?)          options: defaultMs, alpha, maxKeys
//   model.observe(key, ms)               one counted outcome: `key` ran `ms` on `key.gpuType`
//   model.predict(key, declaredMs?)      -> { ms, samples, source }; key.gpuType optional
//   model.ratio(t, u)                    how many times as long GPU type t takes as u (once known)
//   model.snapshot() / DurationModel.restore(snapshot, options?)   plain JSON, for persistence
//   model.version                        grows with every observe (persist when it moved)
//
// A key is (model, shape, GPU type): the shape is the caller's shape key (coordinator: the
// `model|WxH` of vram-estimates.ts), the GPU type a string from `gpuTypeOf`. Predictions fall
// back level by level, so there is always an answer:
//   exact     the same model, shape and GPU type
//   shape     the same model and shape on other GPU types, scaled by how this GPU type's run
//             times compare with theirs on shapes both ran (pairwise ratios); else the shape's
//             mean over every GPU type as it is
//   model     the same one level up: the model on this GPU type (any shape), then scaled from
//             other GPU types, then pooled
//   declared  what the caller declared for the item (`declaredMs`)
//   default   `defaultMs`
// Without a GPU type (an item not placed yet) the pooled levels answer: pooled over every
// completion, their mean is what the fleet as it is being used delivers per item, which is what
// a queue's ETA needs (Little's law: items per ms = running items / mean duration).
//
// Each level is a running mean that starts as the plain average (alpha 1/n) and becomes an
// exponentially weighted one (alpha `alpha`) so it follows a model that got slower or faster;
// once a level has a few samples, a sample more than OUTLIER_FACTOR times away from its mean is
// clipped to that bound before it is folded in, so one item stuck behind a swap storm (or a
// zero from a cancelled run) moves the estimate by a bounded step instead of ruining it. The
// ratio of GPU type T to GPU type U is a ratio of two such means (T's run times over U's mean
// for the same shapes), so a noisy duration distribution does not bias it as a mean of ratios
// would.

/** The GPU type key: two GPUs with the same name and the same size (whole GB) are the same type. */
export function gpuTypeOf(name: string, totalBytes: number): string {
  return `${name.trim() || "unknown"} ${Math.round(totalBytes / 1e9)}GB`;
}

export interface DurationKey {
  model: string;
  shape: string;
  /** Absent when the GPU is not known yet: the pooled levels answer. */
  gpuType?: string;
}

export type DurationSource = "exact" | "shape" | "model" | "declared" | "default";

export interface DurationPrediction {
  ms: number;
  /** How many counted outcomes the answering level holds (0 for declared and default). */
  samples: number;
  source: DurationSource;
}

export interface DurationOptions {
  /** The guess when nothing is known and nothing was declared. */
  defaultMs?: number;
  /** Weight of a new sample once a level has more than 1/alpha of them. */
  alpha?: number;
  /** Most keys kept; the least recently observed go first. */
  maxKeys?: number;
}

/** One running mean (see the header). */
interface Stat {
  mean: number;
  n: number;
  /** The model's `version` when last observed: eviction order. */
  at: number;
}

/** GPU type T against GPU type U: T's run times and U's means for the same shapes. */
interface Ratio {
  ran: number;
  other: number;
  n: number;
}

export interface DurationSnapshot {
  v: 1;
  /** [level key, mean ms, samples] */
  stats: [string, number, number][];
  /** [T, U, mean run ms on T, mean of U for the same shapes, samples] */
  ratios: [string, string, number, number, number][];
}

export const DEFAULT_ITEM_MS = 1000;
const DEFAULT_ALPHA = 0.05;
const DEFAULT_MAX_KEYS = 20_000;
/** A level needs this many samples before outliers are clipped (before, the mean is still moving fast). */
const CLIP_AFTER = 5;
const OUTLIER_FACTOR = 4;
/** A ratio between two GPU types is used from this many samples on. */
const RATIO_MIN_SAMPLES = 3;
/** GPU types beyond this many are not compared pairwise (they still get exact and pooled levels). */
const MAX_GPU_TYPES = 64;
const SEP = "\u001f";

const exactKey = (model: string, shape: string, gpuType: string) => `e${SEP}${model}${SEP}${shape}${SEP}${gpuType}`;
const shapeKey = (model: string, shape: string) => `s${SEP}${model}${SEP}${shape}`;
const modelOnTypeKey = (model: string, gpuType: string) => `t${SEP}${model}${SEP}${gpuType}`;
const modelKey = (model: string) => `m${SEP}${model}`;

export class DurationModel {
  private readonly stats = new Map<string, Stat>();
  /** T → U → ratio. */
  private readonly ratios = new Map<string, Map<string, Ratio>>();
  private readonly gpuTypes = new Set<string>();
  private readonly defaultMs: number;
  private readonly alpha: number;
  private readonly maxKeys: number;
  /** Grows with every counted observation. */
  version = 0;

  constructor(options: DurationOptions = {}) {
    this.defaultMs = options.defaultMs ?? DEFAULT_ITEM_MS;
    this.alpha = options.alpha ?? DEFAULT_ALPHA;
    this.maxKeys = options.maxKeys ?? DEFAULT_MAX_KEYS;
    if (!(this.defaultMs >= 0) || !(this.alpha > 0 && this.alpha <= 1) || !(this.maxKeys >= 4)) {
      throw new RangeError(`invalid duration model options: ${JSON.stringify(options)}`);
    }
  }

  /** One counted outcome. Not finite or negative durations are ignored. */
  observe(key: DurationKey, ms: number): void {
    if (!Number.isFinite(ms) || ms < 0) return;
    this.version++;
    const { model, shape, gpuType } = key;
    if (gpuType !== undefined) {
      if (this.gpuTypes.size < MAX_GPU_TYPES) this.gpuTypes.add(gpuType);
      // Compare with every other GPU type's mean for the same shape, before this sample is added.
      for (const other of this.gpuTypes) {
        if (other === gpuType) continue;
        const theirs = this.stats.get(exactKey(model, shape, other));
        if (theirs && theirs.mean > 0) this.foldRatio(gpuType, other, ms, theirs.mean);
      }
      this.update(exactKey(model, shape, gpuType), ms);
      this.update(modelOnTypeKey(model, gpuType), ms);
    }
    this.update(shapeKey(model, shape), ms);
    this.update(modelKey(model), ms);
    if (this.stats.size > this.maxKeys) this.evict();
  }

  predict(key: DurationKey, declaredMs?: number): DurationPrediction {
    const { model, shape, gpuType } = key;
    if (gpuType !== undefined) {
      const exact = this.stats.get(exactKey(model, shape, gpuType));
      if (exact) return { ms: exact.mean, samples: exact.n, source: "exact" };
      const scaled = this.scaled(gpuType, (other) => this.stats.get(exactKey(model, shape, other)));
      if (scaled) return { ...scaled, source: "shape" };
    }
    const pooledShape = this.stats.get(shapeKey(model, shape));
    if (pooledShape) return { ms: pooledShape.mean, samples: pooledShape.n, source: "shape" };
    if (gpuType !== undefined) {
      const onType = this.stats.get(modelOnTypeKey(model, gpuType));
      if (onType) return { ms: onType.mean, samples: onType.n, source: "model" };
      const scaled = this.scaled(gpuType, (other) => this.stats.get(modelOnTypeKey(model, other)));
      if (scaled) return { ...scaled, source: "model" };
    }
    const pooledModel = this.stats.get(modelKey(model));
    if (pooledModel) return { ms: pooledModel.mean, samples: pooledModel.n, source: "model" };
    if (declaredMs !== undefined && Number.isFinite(declaredMs) && declaredMs >= 0) return { ms: declaredMs, samples: 0, source: "declared" };
    return { ms: this.defaultMs, samples: 0, source: "default" };
  }

  /**
   * How many times as long GPU type `t` takes as GPU type `u` for the same items, once they
   * have run at least a few of the same shapes; undefined until then.
   */
  ratio(t: string, u: string): number | undefined {
    if (t === u) return 1;
    const r = this.ratios.get(t)?.get(u);
    return r && r.n >= RATIO_MIN_SAMPLES && r.other > 0 ? r.ran / r.other : undefined;
  }

  /** Distinct keys held (every level counts). */
  get size(): number {
    return this.stats.size;
  }

  snapshot(): DurationSnapshot {
    const ratios: DurationSnapshot["ratios"] = [];
    for (const [t, byOther] of this.ratios) for (const [u, r] of byOther) ratios.push([t, u, r.ran, r.other, r.n]);
    return { v: 1, stats: [...this.stats].map(([k, s]) => [k, s.mean, s.n]), ratios };
  }

  /**
   * A model with what a snapshot holds. Entries that are not well formed are skipped, not
   * trusted: a snapshot comes from storage and may be from another version or damaged.
   */
  static restore(snapshot: unknown, options: DurationOptions = {}): DurationModel {
    const m = new DurationModel(options);
    const snap = snapshot as Partial<DurationSnapshot> | null;
    if (!snap || typeof snap !== "object" || snap.v !== 1) return m;
    const ok = (x: unknown): x is number => typeof x === "number" && Number.isFinite(x) && x >= 0;
    for (const e of Array.isArray(snap.stats) ? snap.stats : []) {
      if (!Array.isArray(e) || typeof e[0] !== "string" || !ok(e[1]) || !ok(e[2]) || e[2] < 1) continue;
      m.stats.set(e[0], { mean: e[1], n: Math.floor(e[2]), at: 0 });
      const parts = e[0].split(SEP);
      if (parts[0] === "e" && parts.length === 4 && m.gpuTypes.size < MAX_GPU_TYPES) m.gpuTypes.add(parts[3]!);
    }
    for (const e of Array.isArray(snap.ratios) ? snap.ratios : []) {
      if (!Array.isArray(e) || typeof e[0] !== "string" || typeof e[1] !== "string" || !ok(e[2]) || !ok(e[3]) || !ok(e[4])) continue;
      const r = m.ratioOf(e[0], e[1]);
      r.ran = e[2];
      r.other = e[3];
      r.n = Math.floor(e[4]);
    }
    return m;
  }

  /** `gpuType`'s prediction from other GPU types' means scaled by the ratios: weighted by samples. */
  private scaled(gpuType: string, statOf: (other: string) => Stat | undefined): { ms: number; samples: number } | undefined {
    let sum = 0;
    let weight = 0;
    let samples = 0;
    for (const other of this.gpuTypes) {
      if (other === gpuType) continue;
      const s = statOf(other);
      const r = s && this.ratio(gpuType, other);
      if (!s || r === undefined) continue;
      const w = Math.min(s.n, this.ratios.get(gpuType)!.get(other)!.n);
      sum += s.mean * r * w;
      weight += w;
      samples = Math.max(samples, s.n);
    }
    return weight > 0 ? { ms: sum / weight, samples } : undefined;
  }

  private update(k: string, ms: number): void {
    const s = this.stats.get(k);
    if (!s) {
      this.stats.set(k, { mean: ms, n: 1, at: this.version });
      return;
    }
    const x = s.n >= CLIP_AFTER ? clip(ms, s.mean) : ms;
    s.n++;
    s.mean += (x - s.mean) * Math.max(this.alpha, 1 / s.n);
    s.at = this.version;
  }

  private ratioOf(t: string, u: string): Ratio {
    let byOther = this.ratios.get(t);
    if (!byOther) this.ratios.set(t, (byOther = new Map()));
    let r = byOther.get(u);
    if (!r) byOther.set(u, (r = { ran: 0, other: 0, n: 0 }));
    return r;
  }

  /** One sample of T (`ran`) against U's mean for the same shape (`other`); U against T too. */
  private foldRatio(t: string, u: string, ran: number, other: number): void {
    for (const [a, b, x, y] of [
      [t, u, ran, other],
      [u, t, other, ran],
    ] as const) {
      const r = this.ratioOf(a, b);
      // The sample's ratio is clipped like any outlier before both means move.
      const ratio = r.n >= CLIP_AFTER && r.other > 0 && y > 0 ? clip(x / y, r.ran / r.other) * y : x;
      r.n++;
      const alpha = Math.max(this.alpha, 1 / r.n);
      r.ran += (ratio - r.ran) * alpha;
      r.other += (y - r.other) * alpha;
    }
  }

  /** Drops the least recently observed tenth of the keys. */
  private evict(): void {
    const drop = [...this.stats].sort((a, b) => a[1].at - b[1].at).slice(0, Math.ceil(this.stats.size / 10));
    for (const [k] of drop) this.stats.delete(k);
  }
}

function clip(x: number, around: number): number {
  if (!(around > 0)) return x;
  return Math.min(around * OUTLIER_FACTOR, Math.max(around / OUTLIER_FACTOR, x));
}
