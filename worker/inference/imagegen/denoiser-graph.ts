// The denoiser: the network a diffusion pipeline calls once per step. Given the noisy latent,
// the timestep and two conditionings (the prompt's and the empty prompt's), it predicts the
// clean latent, mixing the two predictions by the guidance scale as classifier-free guidance
// does (with the "guidance rescale" that keeps large scales from blowing up the latent).
//
// Its insides are a caricature of a UNet that is guaranteed to draw something: it reads the
// latent's low frequencies at two coarse scales (the "down" path), normalises them, turns
// conditioning-weighted mixtures of them into soft masks, paints conditioning-coloured layers
// over a conditioning-coloured gradient (the "up" path), then refines both branches with
// residual convolutions at latent resolution (where most of a step's cost lies). So the seed
// decides where the shapes are, the prompt their colours, sizes and mix, and every step pulls
// the latent towards a clean picture.

import { TensorProto_DataType } from "../../../proto/gen/onnx/onnx.js";
import { float, GraphBuilder, int, ints, str } from "../onnx-builder.js";
import { COND_DIM, LATENT_CHANNELS as L, SHAPE_LAYERS as K } from "./shapes.js";
import { edgePad } from "./layers.js";
import { normalWeights, randomInitializer } from "./weights.js";

/** Coarse grids (cells per side) of the two "down" scales: big forms and smaller detail. */
const COARSE = 3;
const FINE = 6;
const FINE_WEIGHT = 0.25;
const TIME_FREQS = 8;
/** Colour vectors per image: background base, vertical and horizontal gradient, then a fill and a shade per layer. */
const COLOR_HEADS = 3 + 2 * K;
const COLOR_AMPLITUDE = 1.8;
const BASE_MIX = [
  [0.5, 0.5, 0.5, 0.5],
  [0.5, -0.5, 0.5, -0.5],
  [0.5, 0.5, -0.5, -0.5],
  [0.5, -0.5, -0.5, 0.5],
];

export function buildDenoiserGraph(): Uint8Array {
  const g = new GraphBuilder("imagegen_tiny_denoiser");
  // B images at once (dynamic batching): every per-image input has a leading batch dim. The
  // empty prompt's conditioning and the timestep are shared by the whole batch.
  const latent = g.input("latent", "float32", ["batch", L, "height", "width"]);
  const cond = g.input("conditioning", "float32", ["batch", COND_DIM]);
  const uncond = g.input("unconditioning", "float32", [1, COND_DIM]);
  const timestep = g.input("timestep", "float32", [1]);
  const guidance = g.input("guidance_scale", "float32", ["batch"]);

  // One batch of 2B: the B prompt branches first, then the B unconditional ones, as pipelines
  // do for classifier-free guidance. Every op below works per sample (no op mixes samples),
  // so an image does not depend on what else is in its batch.
  const x = g.op("Concat", [latent, latent], { axis: int(0) });
  const c = g.op("Concat", [cond, g.op("Expand", [uncond, g.op("Shape", [cond])])], { axis: int(0) });

  // Sinusoidal timestep embedding projected into the conditioning space.
  const freqs = Float32Array.from({ length: TIME_FREQS }, (_, i) => Math.PI * 0.5 * Math.pow(2, i * 0.75));
  const arg = g.op("Mul", [g.op("Reshape", [timestep, g.constI64([2], [1, 1])]), g.constF([1, TIME_FREQS], freqs)]);
  const temb = g.op("Concat", [g.op("Sin", [arg]), g.op("Cos", [arg])], { axis: int(1) });
  const tproj = g.op("MatMul", [temb, randomInitializer(g, "denoiser.time.weight", [2 * TIME_FREQS, COND_DIM], 0.25 / Math.sqrt(TIME_FREQS))]);
  const h = g.op("Add", [c, tproj]); // [2B, C]

  // Conditioning heads: colours, how each layer mixes the latent channels, layer thresholds
  // and edge sharpness.
  // Colours are read from the conditioning's offset from the empty prompt, so the
  // unconditional branch paints in muted near-greys and guidance pushes away from grey
  // (more saturated with larger scales) instead of away from some arbitrary colour.
  const offset = g.op("Sub", [h, uncond]);
  const colorLin = g.op("Add", [
    g.op("MatMul", [offset, randomInitializer(g, "denoiser.color.weight", [COND_DIM, COLOR_HEADS * L], 1.3 / Math.sqrt(COND_DIM))]),
    randomInitializer(g, "denoiser.color.bias", [COLOR_HEADS * L], 0.15),
  ]);
  const colors = g.op("Mul", [g.op("Tanh", [colorLin]), g.constF([1], [COLOR_AMPLITUDE])]);
  const colors4d = g.op("Reshape", [colors, g.constI64([4], [-1, COLOR_HEADS * L, 1, 1])]);
  const heads = g.node("Split", [colors4d, g.constI64([COLOR_HEADS], Array(COLOR_HEADS).fill(L))], { axis: int(1) }, COLOR_HEADS);
  const [bgBase, bgVertical, bgHorizontal] = heads as [string, string, string];
  const fills = heads.slice(3, 3 + K);
  const shades = heads.slice(3 + K);

  const mixCond = g.op("Reshape", [
    g.op("MatMul", [h, randomInitializer(g, "denoiser.mix.weight", [COND_DIM, K * L], 0.6 / Math.sqrt(COND_DIM))]),
    g.constI64([3], [-1, K, L]),
  ]);
  // Orthogonal base mixes: layers follow independent parts of the noise, rather than nesting
  // inside each other as rings.
  const mixRaw = g.op("Add", [mixCond, g.initializer("denoiser.mix.base", "float32", [K, L], BASE_MIX.slice(0, K).flat())]);
  const mix = g.op("Div", [mixRaw, g.op("ReduceL2", [mixRaw], { axes: ints([2]), keepdims: int(1) })]); // [2B, K, L]

  const thresholds = g.op("Add", [
    g.op("Mul", [
      g.op("Tanh", [g.op("MatMul", [h, randomInitializer(g, "denoiser.threshold.weight", [COND_DIM, K], 1 / Math.sqrt(COND_DIM))])]),
      g.constF([1], [0.6]),
    ]),
    // Later layers start with higher thresholds: fewer, smaller shapes on top.
    g.constF([K], Array.from({ length: K }, (_, k) => 0.55 + 0.3 * k)),
  ]);
  const bias = g.op("Reshape", [thresholds, g.constI64([4], [-1, K, 1, 1])]);
  const sharpness = g.op("Add", [
    g.op("Mul", [
      g.op("Sigmoid", [g.op("MatMul", [h, randomInitializer(g, "denoiser.sharpness.weight", [COND_DIM, 1], 2 / Math.sqrt(COND_DIM))])]),
      g.constF([1], [10]),
    ]),
    g.constF([1], [7]),
  ]);
  // The field varies over a fixed number of coarse cells whatever the size, so its slope per
  // latent cell falls as images grow; steepen the threshold to match, keeping edges a few
  // pixels wide at 1024 as at 256.
  const hwF = g.op("Cast", [g.op("Shape", [latent], { start: int(2) })], { to: int(TensorProto_DataType.FLOAT) });
  const sizeScale = g.op("Max", [g.op("Div", [g.op("Sqrt", [g.op("ReduceProd", [hwF], { keepdims: int(0) })]), g.constF([], [32])]), g.constF([], [1])]);
  const sharp = g.op("Mul", [g.op("Reshape", [sharpness, g.constI64([4], [-1, 1, 1, 1])]), sizeScale]);

  // The "down" path: the latent's low frequencies at two scales, each normalised per channel
  // so the masks always have contrast, whatever the step.
  const hw = g.op("Shape", [latent], { start: int(2) });
  const latentSizes = g.op("Shape", [x]); // [2B, L, h, w]
  const doubleBatch = g.op("Shape", [x], { end: int(1) }); // [2B]
  const lowFrequencies = (cells: number): string => {
    const coarseSizes = g.op("Concat", [doubleBatch, g.constI64([3], [L, cells, cells])], { axis: int(0) });
    const coarse = g.op("Resize", [x, "", "", coarseSizes], { mode: str("linear") });
    const norm = g.op("InstanceNormalization", [coarse, g.constF([L], Array(L).fill(1)), g.constF([L], Array(L).fill(0))], {
      epsilon: float(1e-4),
    });
    return g.op("Resize", [norm, "", "", latentSizes], { mode: str("cubic") });
  };
  const field = g.op("Add", [lowFrequencies(COARSE), g.op("Mul", [lowFrequencies(FINE), g.constF([1], [FINE_WEIGHT])])]);

  // Masks: per layer a conditioning-weighted mix of the field's channels, thresholded softly.
  const flat = g.op("Reshape", [field, g.constI64([3], [0, L, -1])]);
  const layerFlat = g.op("MatMul", [mix, flat]); // [2B, K, h·w]
  const layerField = g.op("Add", [
    g.op("Reshape", [layerFlat, g.op("Concat", [doubleBatch, g.constI64([1], [K]), hw], { axis: int(0) })]),
    g.op("Neg", [bias]),
  ]);
  const masks = g.node("Split", [g.op("Sigmoid", [g.op("Mul", [layerField, sharp])]), g.constI64([K], Array(K).fill(1))], { axis: int(1) }, K);
  // Inside a shape the field keeps rising; tanh of it shades the shape like a lit surface.
  const relief = g.node("Split", [g.op("Tanh", [g.op("Mul", [layerField, g.constF([1], [0.8])])]), g.constI64([K], Array(K).fill(1))], { axis: int(1) }, K);

  // Background: a base colour plus vertical and horizontal gradients.
  const grid = g.constF([1, 2, 2, 2], [-0.5, -0.5, 0.5, 0.5, -0.5, 0.5, -0.5, 0.5]);
  const gridSizes = g.op("Concat", [g.constI64([2], [1, 2]), hw], { axis: int(0) });
  const coords = g.op("Resize", [grid, "", "", gridSizes], { mode: str("linear"), coordinate_transformation_mode: str("align_corners") });
  const [v, u] = g.node("Split", [coords, g.constI64([2], [1, 1])], { axis: int(1) }, 2) as [string, string];
  let canvas = g.op("Add", [g.op("Add", [bgBase, g.op("Mul", [v, bgVertical])]), g.op("Mul", [u, bgHorizontal])]);
  for (let k = 0; k < K; k++) {
    const paint = g.op("Add", [fills[k]!, g.op("Mul", [relief[k]!, shades[k]!])]);
    canvas = g.op("Add", [canvas, g.op("Mul", [masks[k]!, g.op("Sub", [paint, canvas])])]);
  }

  // Refinement at latent resolution on both branches, as a UNet's residual blocks: the bulk of
  // each step's cost, growing with pixels (and, over the run, with steps).
  const refined = g.op("Add", [canvas, refine(g, canvas)]);

  // Classifier-free guidance, then rescale to the prompt branch's RMS (Lin et al., 2023).
  const [pc, pu] = g.node("Split", [refined], { axis: int(0) }, 2) as [string, string]; // two halves of B
  const scale = g.op("Reshape", [guidance, g.constI64([4], [-1, 1, 1, 1])]);
  const guided = g.op("Add", [pu, g.op("Mul", [scale, g.op("Sub", [pc, pu])])]);
  const rms = (z: string): string =>
    g.op("Sqrt", [g.op("Add", [g.op("ReduceMean", [g.op("Mul", [z, z])], { axes: ints([1, 2, 3]), keepdims: int(1) }), g.constF([1], [1e-6])])]);
  const out = g.op("Mul", [guided, g.op("Div", [rms(pc), rms(guided)])], {}, "denoised");
  g.output(out, "float32", ["batch", L, "height", "width"]);
  return g.serialize({ docString: "imagegen-tiny denoiser: (latent, conditioning, unconditioning, timestep, guidance) → predicted clean latent" });
}


const REFINE_WIDTH = 64;

/** Three 3×3 convolutions (L → W → W → L) with tanh between; a small residual correction. */
function refine(g: GraphBuilder, x: string): string {
  const conv = (input: string, name: string, out: number, inp: number, std: number): string =>
    g.op("Conv", [
      edgePad(g, input),
      randomInitializer(g, `denoiser.${name}.weight`, [out, inp, 3, 3], std / Math.sqrt(inp * 9)),
      g.constF([out], normalWeights(`denoiser.${name}.bias`, out, 0.05)),
    ]);
  const h1 = g.op("Tanh", [conv(x, "refine1", REFINE_WIDTH, L, 0.5)]);
  const h2 = g.op("Tanh", [conv(h1, "refine2", REFINE_WIDTH, REFINE_WIDTH, 1)]);
  return g.op("Mul", [conv(h2, "refine3", L, REFINE_WIDTH, 1), g.constF([1], [0.15])]);
}
