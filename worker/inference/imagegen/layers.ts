// Small graph fragments shared by the imagegen-tiny graphs.

import { str, type GraphBuilder } from "../onnx-builder.js";

/** Pads H and W by one cell repeating the border, so 3×3 convolutions leave no seam at the edges. */
export function edgePad(g: GraphBuilder, x: string): string {
  return g.op("Pad", [x, g.constI64([8], [0, 0, 1, 1, 0, 0, 1, 1])], { mode: str("edge") });
}
