// The sampler that drives the denoiser: DDIM (Song et al., 2020), deterministic, over a cosine
// noise schedule. As in real pipelines it lives outside the network, in plain code; the
// network only predicts the clean latent.

/** Signal fraction ᾱ(t) of the cosine schedule; t = 1 is pure noise, t = 0 a clean latent. */
export function alphaBar(t: number): number {
  const c = Math.cos((Math.PI / 2) * t);
  return Math.min(1, Math.max(0, c * c));
}

/** The timesteps the denoiser is called at, from 1 (noise) down, `steps` of them. */
export function timesteps(steps: number): number[] {
  return Array.from({ length: steps }, (_, i) => 1 - i / steps);
}

/**
 * One DDIM step, in place: from x_t and the predicted clean latent x0 to x_{tPrev}. The noise
 * direction implied by (x_t, x0) is kept, so the initial noise keeps steering later steps.
 */
export function ddimStep(xt: Float32Array, x0: Float32Array, t: number, tPrev: number): void {
  const a = alphaBar(t);
  const aPrev = alphaBar(tPrev);
  const sa = Math.sqrt(a);
  const sn = Math.sqrt(Math.max(1e-8, 1 - a));
  const saPrev = Math.sqrt(aPrev);
  const snPrev = Math.sqrt(Math.max(0, 1 - aPrev));
  for (let i = 0; i < xt.length; i++) {
    const eps = (xt[i]! - sa * x0[i]!) / sn;
    xt[i] = saPrev * x0[i]! + snPrev * eps;
  }
}
