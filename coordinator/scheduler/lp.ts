// A small linear-program solver and the capacity LP built on it. The LP is shared by the
// scheduler's affinity planner (the fluid split of GPUs between models), the ETA's capacity bound
// (eta-capacity.ts), the simulator's ideal and the bench's lower bound on makespan
// (bench/lib/ideal.ts, every GPU its own class). Pure.

/**
 * Dense simplex for `maximize c·x s.t. A x ≤ b, x ≥ 0` with b ≥ 0 (the origin is feasible), with
 * Bland's rule against cycling. Small problems only (the fleet case has a few dozen variables).
 */
export function maximize(c: number[], A: number[][], b: number[]): { value: number; x: number[] } {
  const m = A.length;
  const n = c.length;
  const eps = 1e-12;
  // Tableau rows: [A | I | b]; objective row: [-c | 0 | 0].
  const T: number[][] = A.map((row, i) => [...row, ...Array.from({ length: m }, (_, j) => (i === j ? 1 : 0)), b[i]!]);
  const obj = [...c.map((v) => -v), ...new Array<number>(m).fill(0), 0];
  const basis = Array.from({ length: m }, (_, i) => n + i);
  for (let iter = 0; iter < 10_000; iter++) {
    const enter = obj.findIndex((v, j) => j < n + m && v < -eps);
    if (enter < 0) break;
    let leave = -1;
    let best = Infinity;
    for (let i = 0; i < m; i++) {
      const a = T[i]![enter]!;
      if (a > eps) {
        const ratio = T[i]![n + m]! / a;
        if (ratio < best - eps || (Math.abs(ratio - best) <= eps && basis[i]! < basis[leave]!)) {
          best = ratio;
          leave = i;
        }
      }
    }
    if (leave < 0) throw new Error("linear program is unbounded");
    const pivot = T[leave]![enter]!;
    T[leave] = T[leave]!.map((v) => v / pivot);
    for (let i = 0; i < m; i++) {
      if (i === leave) continue;
      const f = T[i]![enter]!;
      if (f !== 0) T[i] = T[i]!.map((v, j) => v - f * T[leave]![j]!);
    }
    const f = obj[enter]!;
    for (let j = 0; j < obj.length; j++) obj[j] = obj[j]! - f * T[leave]![j]!;
    basis[leave] = enter;
  }
  const x = new Array<number>(n).fill(0);
  basis.forEach((v, i) => {
    if (v < n) x[v] = T[i]![n + m]!;
  });
  return { value: obj[n + m]!, x };
}

/** One (model, GPU class) pair the capacity LP may use: `rate` items of work per unit of the class's capacity. */
export interface CapacityPair {
  model: number;
  cls: number;
  rate: number;
}

/**
 * The capacity LP that the affinity planner splits GPUs by and the ETA bounds a batch's end by:
 *
 *   maximize λ  s.t.  Σ_c rate(m,c)·u(m,c) ≥ λ·W_m  for each model m,  Σ_m u(m,c) ≤ capacity_c,
 *
 * where `workSeconds[m]` is W_m (seconds: keeps the tableau's numbers in a comfortable range), a
 * model without pairs is left out (nothing can run it), and u follows `pairs`' order. λ is the
 * rate at which every model's work is done at once, so 1 / λ is the fluid horizon in seconds.
 * Throws when the program is unbounded (no work at all binds λ).
 */
export function capacityRate(workSeconds: readonly number[], pairs: readonly CapacityPair[], capacity: readonly number[]): { lambda: number; share: number[] } {
  const nVars = 1 + pairs.length;
  const A: number[][] = [];
  const b: number[] = [];
  const served = new Set(pairs.map((p) => p.model));
  workSeconds.forEach((w, m) => {
    if (!served.has(m)) return;
    const row = new Array<number>(nVars).fill(0);
    row[0] = w;
    pairs.forEach((p, k) => {
      if (p.model === m) row[1 + k] = -p.rate;
    });
    A.push(row);
    b.push(0);
  });
  capacity.forEach((cap, ci) => {
    const row = new Array<number>(nVars).fill(0);
    pairs.forEach((p, k) => {
      if (p.cls === ci) row[1 + k] = 1;
    });
    A.push(row);
    b.push(cap);
  });
  const c = new Array<number>(nVars).fill(0);
  c[0] = 1;
  const { value, x } = maximize(c, A, b);
  return { lambda: value, share: x.slice(1) };
}
