// The decoder: latent → pixels, standing in for a VAE decoder. It upsamples ×8, mixes the four
// latent channels into RGB (a fixed opponent-colour matrix as the main path, so every hue is
// reachable, plus a small convolutional detail path) and squashes the result to bytes. Output
// is uint8 [B, 3, H, W], planar; the batch dim is dynamic and each image is decoded on its own.

import { TensorProto_DataType } from "../../../proto/gen/onnx/onnx.js";
import { float, GraphBuilder, int, str } from "../onnx-builder.js";
import { LATENT_CHANNELS as L, LATENT_SCALE } from "./shapes.js";
import { edgePad } from "./layers.js";
import { randomInitializer } from "./weights.js";

// Rows: latent channels; columns: R, G, B.
// Channel 0 carries lightness, 1 red–green, 2 yellow–blue, 3 a teal–magenta tint.
const LATENT_TO_RGB = [
  [0.6, 0.6, 0.6],
  [0.55, -0.4, -0.08],
  [0.28, 0.2, -0.6],
  [-0.28, 0.24, 0.28],
];
const GAIN = 1.8;
const DETAIL = 8;

export function buildDecoderGraph(): Uint8Array {
  const g = new GraphBuilder("imagegen_tiny_decoder");
  const latent = g.input("latent", "float32", ["batch", L, "height", "width"]);
  const up = g.op("Resize", [latent, "", g.constF([4], [1, 1, LATENT_SCALE, LATENT_SCALE])], {
    mode: str("cubic"),
    // Keys' a = -0.5 overshoots less than onnx's default -0.75: no halos around shape edges.
    cubic_coeff_a: float(-0.5),
  });

  const rgbWeight = new Float32Array(3 * L);
  for (let o = 0; o < 3; o++) for (let i = 0; i < L; i++) rgbWeight[o * L + i] = GAIN * LATENT_TO_RGB[i]![o]!;
  const colour = g.op("Conv", [up, g.initializer("decoder.rgb.weight", "float32", [3, L, 1, 1], rgbWeight), g.constF([3], [0, 0, 0])]);

  const detail1 = g.op(
    "Conv",
    [edgePad(g, up), randomInitializer(g, "decoder.detail1.weight", [DETAIL, L, 3, 3], 1 / Math.sqrt(L * 9)), g.constF([DETAIL], Array(DETAIL).fill(0))],
  );
  const detail = g.op("Conv", [g.op("Tanh", [detail1]), randomInitializer(g, "decoder.detail2.weight", [3, DETAIL, 1, 1], 0.1 / Math.sqrt(DETAIL))]);

  const unit = g.op("Sigmoid", [g.op("Add", [colour, detail])]);
  const scaled = g.op("Add", [g.op("Mul", [unit, g.constF([1], [255])]), g.constF([1], [0.5])]);
  const clipped = g.op("Clip", [scaled, g.constF([], [0]), g.constF([], [255])]);
  const pixels = g.op("Cast", [clipped], { to: int(TensorProto_DataType.UINT8) }, "pixels");
  g.output(pixels, "uint8", ["batch", 3, "pixel_height", "pixel_width"]);
  return g.serialize({ docString: "imagegen-tiny decoder: latent [B,4,h,w] → pixels uint8 [B,3,8h,8w]" });
}
