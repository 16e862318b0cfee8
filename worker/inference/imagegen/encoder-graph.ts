// The prompt encoder: token ids → embedding lookup → mean over tokens → a two-layer MLP → the
// conditioning vector. A stand-in for CLIP's text tower with the same interface (ids in, one
// vector per prompt out) and the property that matters downstream: different words give
// different, stable conditionings. The batch dim is dynamic: B prompts of the same token count
// are encoded at once, each on its own row.

import { GraphBuilder, int, ints } from "../onnx-builder.js";
import { COND_DIM, EMBED_DIM, VOCAB_SIZE } from "./shapes.js";
import { randomInitializer } from "./weights.js";

export function buildEncoderGraph(): Uint8Array {
  const g = new GraphBuilder("imagegen_tiny_text_encoder");
  const tokens = g.input("tokens", "int64", ["batch", "tokens"]);
  const table = randomInitializer(g, "encoder.embedding", [VOCAB_SIZE, EMBED_DIM], 1);
  // Tokens first ([T, B, E]): a mean over the leading axis adds the token rows one after another
  // for every column, so a prompt's conditioning has the same bits in a batch of any size. (A
  // mean over axis 1 of [B, T, E] does not: onnxruntime sums a lone row in another order than
  // B > 1 rows, and graph optimisation folds a Transpose of the embeddings back into that.)
  const embedded = g.op("Gather", [table, g.op("Transpose", [tokens], { perm: ints([1, 0]) })], { axis: int(0) }); // [T, B, E]
  const pooled = g.op("ReduceMean", [embedded], { axes: ints([0]), keepdims: int(0) }); // [B, E]
  // Mean pooling shrinks with prompt length (averages of random rows); normalising keeps a
  // long prompt as decisive as a short one.
  const unit = g.op("LpNormalization", [pooled], { axis: int(-1), p: int(2) });
  const scaled = g.op("Mul", [unit, g.constF([1], [Math.sqrt(EMBED_DIM)])]);
  const w1 = randomInitializer(g, "encoder.fc1.weight", [EMBED_DIM, COND_DIM], 1 / Math.sqrt(EMBED_DIM));
  const b1 = randomInitializer(g, "encoder.fc1.bias", [COND_DIM], 0.1);
  const h1 = g.op("Tanh", [g.op("Add", [g.op("MatMul", [scaled, w1]), b1])]);
  const w2 = randomInitializer(g, "encoder.fc2.weight", [COND_DIM, COND_DIM], 1.6 / Math.sqrt(COND_DIM));
  const b2 = randomInitializer(g, "encoder.fc2.bias", [COND_DIM], 0.1);
  const cond = g.op("Tanh", [g.op("Add", [g.op("MatMul", [h1, w2]), b2])], {}, "conditioning");
  g.output(cond, "float32", ["batch", COND_DIM]);
  return g.serialize({ docString: "imagegen-tiny prompt encoder: token ids [B,T] → conditioning [B,C]" });
}
