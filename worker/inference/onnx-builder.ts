// A small typed builder for ONNX graphs, serialized with the ts-proto code generated from
// proto/onnx/onnx.proto. Shoal builds its own models (imagegen-tiny, test fixtures) instead of
// downloading them, so this is all the "export" machinery it needs: values are named strings,
// nodes are appended in topological order, initializers are written as little-endian raw_data.

import {
  AttributeProto,
  AttributeProto_AttributeType,
  ModelProto,
  TensorProto,
  TensorProto_DataType,
  type GraphProto,
  type NodeProto,
  type ValueInfoProto,
} from "../../proto/gen/onnx/onnx.js";

export const ONNX_IR_VERSION = 8;
export const ONNX_OPSET = 17;

export type DType = "float32" | "int64" | "int32" | "uint8" | "bool";
/** A fixed size, or a symbolic name such as "height" that the runtime fills in. */
export type Dim = number | string;

const DATA_TYPE: Record<DType, TensorProto_DataType> = {
  float32: TensorProto_DataType.FLOAT,
  int64: TensorProto_DataType.INT64,
  int32: TensorProto_DataType.INT32,
  uint8: TensorProto_DataType.UINT8,
  bool: TensorProto_DataType.BOOL,
};

/**
 * An attribute value. JS numbers cannot tell 1 from 1.0, so the ONNX type is always explicit:
 * build values with `int`, `float`, `ints`, `floats` and `str`.
 */
export type AttributeValue =
  | { kind: "int"; value: number }
  | { kind: "float"; value: number }
  | { kind: "ints"; value: readonly number[] }
  | { kind: "floats"; value: readonly number[] }
  | { kind: "string"; value: string };

export const int = (value: number): AttributeValue => ({ kind: "int", value });
export const float = (value: number): AttributeValue => ({ kind: "float", value });
export const ints = (value: readonly number[]): AttributeValue => ({ kind: "ints", value });
export const floats = (value: readonly number[]): AttributeValue => ({ kind: "floats", value });
export const str = (value: string): AttributeValue => ({ kind: "string", value });

export type TensorData = Float32Array | BigInt64Array | Int32Array | Uint8Array | readonly number[];

export interface ModelMeta {
  producerName?: string;
  producerVersion?: string;
  docString?: string;
  /** Stored as metadata_props; handy for recording how a model was made. */
  metadata?: Record<string, string>;
}

export class GraphBuilder {
  private readonly nodes: NodeProto[] = [];
  private readonly initializers: TensorProto[] = [];
  private readonly inputs: ValueInfoProto[] = [];
  private readonly outputs: ValueInfoProto[] = [];
  private readonly names = new Set<string>();
  private counter = 0;

  constructor(readonly name: string) {}

  /** Declares a graph input and returns its value name. */
  input(name: string, dtype: DType, dims: readonly Dim[]): string {
    this.claim(name);
    this.inputs.push(valueInfo(name, dtype, dims));
    return name;
  }

  /** Declares an existing value as a graph output. */
  output(value: string, dtype: DType, dims: readonly Dim[]): void {
    this.outputs.push(valueInfo(value, dtype, dims));
  }

  /** Adds a constant tensor (weights, shapes, scalars) and returns its value name. */
  initializer(name: string, dtype: DType, dims: readonly number[], data: TensorData): string {
    const count = dims.reduce((a, b) => a * b, 1);
    if (data.length !== count) {
      throw new Error(`initializer ${name}: ${data.length} values for dims [${dims.join(", ")}]`);
    }
    this.claim(name);
    this.initializers.push({
      ...TensorProto.fromPartial({}),
      name,
      dims: [...dims],
      dataType: DATA_TYPE[dtype],
      rawData: rawBytes(dtype, data),
    });
    return name;
  }

  /** A float32 constant with a generated name. */
  constF(dims: readonly number[], data: TensorData, hint = "const"): string {
    return this.initializer(this.fresh(hint), "float32", dims, data);
  }

  /** An int64 constant with a generated name (shapes, axes, sizes). */
  constI64(dims: readonly number[], data: readonly number[], hint = "const"): string {
    return this.initializer(this.fresh(hint), "int64", dims, BigInt64Array.from(data, (v) => BigInt(v)));
  }

  /**
   * Appends a node with `outputs` outputs (names generated) and returns their names. Pass ""
   * as an input to leave an optional input out, as ONNX does.
   */
  node(
    opType: string,
    inputs: readonly string[],
    attributes: Record<string, AttributeValue> = {},
    outputs: number | readonly string[] = 1,
  ): string[] {
    const outNames =
      typeof outputs === "number"
        ? Array.from({ length: outputs }, () => this.fresh(opType.toLowerCase()))
        : [...outputs];
    for (const n of outNames) this.claim(n);
    this.nodes.push({
      input: [...inputs],
      output: outNames,
      name: `${opType}_${this.nodes.length}`,
      opType,
      domain: "",
      attribute: Object.entries(attributes).map(([name, value]) => attribute(name, value)),
      docString: "",
    });
    return outNames;
  }

  /** A node with exactly one output; returns its name. */
  op(opType: string, inputs: readonly string[], attributes: Record<string, AttributeValue> = {}, output?: string): string {
    return this.node(opType, inputs, attributes, output === undefined ? 1 : [output])[0]!;
  }

  toGraph(): GraphProto {
    return {
      node: this.nodes,
      name: this.name,
      initializer: this.initializers,
      docString: "",
      input: this.inputs,
      output: this.outputs,
      valueInfo: [],
    };
  }

  toModel(meta: ModelMeta = {}): ModelProto {
    return {
      irVersion: ONNX_IR_VERSION,
      opsetImport: [{ domain: "", version: ONNX_OPSET }],
      producerName: meta.producerName ?? "shoal",
      producerVersion: meta.producerVersion ?? "",
      domain: "",
      modelVersion: 1,
      docString: meta.docString ?? "",
      graph: this.toGraph(),
      metadataProps: Object.entries(meta.metadata ?? {}).map(([key, value]) => ({ key, value })),
    };
  }

  /** The model as .onnx file bytes. */
  serialize(meta: ModelMeta = {}): Uint8Array {
    return ModelProto.encode(this.toModel(meta)).finish();
  }

  private fresh(hint: string): string {
    let name: string;
    do name = `${hint}_${this.counter++}`;
    while (this.names.has(name));
    return name;
  }

  private claim(name: string): void {
    if (this.names.has(name)) throw new Error(`value ${name} is defined twice in graph ${this.name}`);
    this.names.add(name);
  }
}

function valueInfo(name: string, dtype: DType, dims: readonly Dim[]): ValueInfoProto {
  return {
    name,
    docString: "",
    type: {
      value: {
        $case: "tensorType",
        tensorType: {
          elemType: DATA_TYPE[dtype],
          shape: {
            dim: dims.map((d) => ({
              value: typeof d === "number" ? { $case: "dimValue", dimValue: d } : { $case: "dimParam", dimParam: d },
            })),
          },
        },
      },
    },
  };
}

function attribute(name: string, v: AttributeValue): AttributeProto {
  // The generated encoder leaves out scalar fields equal to their proto default (0, 0.0), so
  // an INT attribute of value 0 is written with only its `type`. That is fine: ONNX readers
  // treat `type` as the discriminator and read the missing scalar as its default, exactly as
  // they must for proto3 writers.
  const base = { ...AttributeProto.fromPartial({}), name };
  switch (v.kind) {
    case "int":
      if (!Number.isSafeInteger(v.value)) throw new Error(`attribute ${name}: ${v.value} is not an integer`);
      return { ...base, type: AttributeProto_AttributeType.INT, i: v.value };
    case "float":
      return { ...base, type: AttributeProto_AttributeType.FLOAT, f: v.value };
    case "ints":
      return { ...base, type: AttributeProto_AttributeType.INTS, ints: [...v.value] };
    case "floats":
      return { ...base, type: AttributeProto_AttributeType.FLOATS, floats: [...v.value] };
    case "string":
      return { ...base, type: AttributeProto_AttributeType.STRING, s: Buffer.from(v.value, "utf8") };
  }
}

function rawBytes(dtype: DType, data: TensorData): Buffer {
  switch (dtype) {
    case "float32": {
      const a = data instanceof Float32Array ? data : Float32Array.from(data as ArrayLike<number>);
      return littleEndian(a);
    }
    case "int64": {
      const a = data instanceof BigInt64Array ? data : BigInt64Array.from(data as ArrayLike<number>, (v) => BigInt(v));
      return littleEndian(a);
    }
    case "int32": {
      const a = data instanceof Int32Array ? data : Int32Array.from(data as ArrayLike<number>);
      return littleEndian(a);
    }
    case "uint8":
    case "bool": {
      const a = data instanceof Uint8Array ? data : Uint8Array.from(data as ArrayLike<number>);
      return Buffer.from(a);
    }
  }
}

// Typed arrays use the platform's byte order; ONNX raw_data is little-endian. Every platform
// Node runs on today is little-endian, but the check costs nothing and keeps files portable.
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function littleEndian(a: Float32Array | BigInt64Array | Int32Array): Buffer {
  const bytes = Buffer.from(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength));
  if (!LITTLE_ENDIAN) {
    if (a.BYTES_PER_ELEMENT === 8) bytes.swap64();
    else bytes.swap32();
  }
  return bytes;
}
