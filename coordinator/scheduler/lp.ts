// A small linear-program solver, shared by the scheduler's affinity planner (the fluid split of
// GPUs between models) and the bench's ideal (bench/lib/ideal.ts computes the same LP as a
// lower bound on makespan). Pure.

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
