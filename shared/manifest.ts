// Model manifests: what a model accepts (params), what it needs (VRAM) and how its tensors map
// to params and artifacts. The coordinator validates every item against the manifest before a
// batch is accepted, so a worker only ever sees params that already passed these checks.

import { paramPath, quoteInput } from "./param-limits.js";

export type ParamType = "string" | "integer" | "number" | "boolean" | "tensor";

export interface ParamSpec {
  type: ParamType;
  required?: boolean;
  description?: string;
  default?: unknown;
  minimum?: number;
  maximum?: number;
  multipleOf?: number;
  minLength?: number;
  maxLength?: number;
  /**
   * For `string` params: the only values accepted, e.g. `["png", "jpeg", "webp"]`. A value
   * outside the list is refused with `must be one of png, jpeg, webp`.
   */
  enum?: readonly string[];
  /** For `tensor` params: the element count limits of the flat array. */
  maxElements?: number;
}

export interface VramSpec {
  /** Bytes of the loaded weights; paid once per GPU where the model is resident. */
  weights_bytes: number;
  /** Bytes one running item needs on top of the weights. */
  activation_bytes: number;
  /** Extra bytes per output pixel (width × height) for image models. */
  activation_bytes_per_pixel?: number;
}

/** How a tensor input of a generic ONNX model is fed from an item's params. */
export interface TensorInputSpec {
  name: string;
  param: string;
  dtype: "float32" | "int64" | "int32";
  /** Use -1 for the one dimension inferred from the param's length. */
  shape: number[];
}

export interface TensorOutputSpec {
  name: string;
  /** The artifact name the tensor is written to, as JSON {dims, type, data}. */
  artifact: string;
}

export interface ModelManifest {
  name: string;
  version: string;
  description?: string;
  params: Record<string, ParamSpec>;
  vram: VramSpec;
  /** Generic ONNX models: the model file relative to the manifest. */
  file?: string;
  inputs?: TensorInputSpec[];
  outputs?: TensorOutputSpec[];
  /**
   * Dynamic batching on the worker: how many queued items of this model with the same shape may
   * run as one inference call with a batch dimension. Default 1: every item runs alone.
   */
  max_batch?: number;
  /**
   * Image models: the most output pixels (width × height summed over the items) one batch may
   * hold, so large images run in smaller groups or alone where a batch of max_batch is slower
   * than one at a time (docs/performance.md). Absent: only max_batch bounds a batch.
   */
  max_batch_pixels?: number;
  builtin?: boolean;
  /**
   * The string params whose text the content policy screens (docs/content-policy.md): the
   * coordinator's rules (--content-policy) before an item is queued, and a prompt-policy
   * classifier on the worker before the model runs. A model without it is not screened.
   */
  screened_params?: string[];
  /** Declares this model a prompt-policy classifier (see PromptPolicySpec). */
  prompt_policy?: PromptPolicySpec;
}

/** The one tokenizer a prompt-policy classifier may declare: imagegen-tiny's hashed words. */
export const PROMPT_POLICY_TOKENIZERS = ["shoal-words-4096"] as const;

/**
 * A text classifier that screens the items of other models on the worker, before they run: the
 * worker tokenizes the item's screened params, runs this model on the tokens like any model
 * from the model directory, and an item whose score reaches `threshold` ends FAILED with
 * CONTENT_POLICY without its own model running (worker/prompt-policy.ts).
 */
export interface PromptPolicySpec {
  /** Models whose items this classifier screens; "*" for every model that declares screened_params. */
  applies_to: string[];
  /** An item is blocked when the score is at least this. */
  threshold: number;
  /** How text becomes token ids; only "shoal-words-4096" (see PROMPT_POLICY_TOKENIZERS). */
  tokenizer: (typeof PROMPT_POLICY_TOKENIZERS)[number];
  /** The tensor param the token ids are fed to (an int64 input of the model). */
  input_param: string;
  /** The output artifact holding the score: its first value is read. */
  output: string;
  /** The reason an item's error message gives; default "flagged by the prompt classifier <name>". */
  reason?: string;
}

export interface ParamProblem {
  /** Path relative to the item, e.g. `params.width`. */
  path: string;
  message: string;
}

const MODEL_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;

/** Checks a manifest read from disk or from the wire; returns the problems, empty when valid. */
export function checkManifest(value: unknown): string[] {
  const problems: string[] = [];
  if (!isRecord(value)) return ["manifest: must be a JSON object"];
  const m = value as Partial<ModelManifest>;
  if (typeof m.name !== "string" || !MODEL_NAME.test(m.name)) {
    problems.push("name: must match " + MODEL_NAME.source);
  }
  if (typeof m.version !== "string" || m.version.length === 0) problems.push("version: required string");
  if (!isRecord(m.params)) problems.push("params: must be an object of param specs");
  else {
    for (const [name, spec] of Object.entries(m.params)) {
      if (!isRecord(spec)) {
        problems.push(`params.${name}: must be an object`);
        continue;
      }
      const t = (spec as ParamSpec).type;
      if (!["string", "integer", "number", "boolean", "tensor"].includes(t)) {
        problems.push(`params.${name}.type: must be string, integer, number, boolean or tensor`);
      }
      const choices = (spec as ParamSpec).enum;
      if (choices !== undefined) {
        if (t !== "string") problems.push(`params.${name}.enum: only string params take a list of values`);
        else if (!Array.isArray(choices) || choices.length === 0 || !choices.every((c) => typeof c === "string")) {
          problems.push(`params.${name}.enum: must be a non-empty array of strings`);
        } else {
          const def = (spec as ParamSpec).default;
          if (def !== undefined && !choices.includes(def as string)) {
            problems.push(`params.${name}.default: must be one of ${choices.join(", ")}`);
          }
        }
      }
    }
  }
  if (!isRecord(m.vram)) problems.push("vram: required object");
  else {
    for (const key of ["weights_bytes", "activation_bytes"] as const) {
      const v = (m.vram as VramSpec)[key];
      if (!Number.isSafeInteger(v) || v < 0) problems.push(`vram.${key}: must be a non-negative integer`);
    }
    const pp = (m.vram as VramSpec).activation_bytes_per_pixel;
    if (pp !== undefined && (!Number.isFinite(pp) || pp < 0)) {
      problems.push("vram.activation_bytes_per_pixel: must be a non-negative number");
    }
  }
  if (m.max_batch !== undefined && (!Number.isSafeInteger(m.max_batch) || m.max_batch < 1)) {
    problems.push("max_batch: must be an integer ≥ 1");
  }
  if (m.max_batch_pixels !== undefined && (!Number.isSafeInteger(m.max_batch_pixels) || m.max_batch_pixels < 1)) {
    problems.push("max_batch_pixels: must be an integer ≥ 1");
  }
  problems.push(...screeningProblems(m));
  if (m.inputs !== undefined) {
    if (!Array.isArray(m.inputs)) problems.push("inputs: must be an array");
    else
      m.inputs.forEach((input, i) => {
        if (!isRecord(input) || typeof input.name !== "string" || typeof input.param !== "string") {
          problems.push(`inputs[${i}]: needs name and param`);
        } else if (!isRecord(m.params) || !(input.param in m.params)) {
          problems.push(`inputs[${i}].param: "${input.param}" is not a declared param`);
        }
        if (isRecord(input) && !["float32", "int64", "int32"].includes(input.dtype as string)) {
          problems.push(`inputs[${i}].dtype: must be float32, int64 or int32`);
        }
        if (isRecord(input) && (!Array.isArray(input.shape) || !input.shape.every(Number.isInteger))) {
          problems.push(`inputs[${i}].shape: must be an array of integers`);
        }
      });
  }
  if (m.outputs !== undefined) {
    if (!Array.isArray(m.outputs)) problems.push("outputs: must be an array");
    else
      m.outputs.forEach((output, i) => {
        if (!isRecord(output) || typeof output.name !== "string" || typeof output.artifact !== "string") {
          problems.push(`outputs[${i}]: needs name and artifact`);
        }
      });
  }
  return problems;
}

/** Checks `screened_params` and `prompt_policy` (docs/content-policy.md). */
function screeningProblems(m: Partial<ModelManifest>): string[] {
  const problems: string[] = [];
  const params = isRecord(m.params) ? (m.params as Record<string, ParamSpec>) : {};
  if (m.screened_params !== undefined) {
    if (!Array.isArray(m.screened_params)) problems.push("screened_params: must be an array of param names");
    else
      m.screened_params.forEach((p, i) => {
        if (typeof p !== "string" || !Object.hasOwn(params, p)) problems.push(`screened_params[${i}]: ${JSON.stringify(p)} is not a declared param`);
        else if (params[p]!.type !== "string") problems.push(`screened_params[${i}]: "${p}" has type ${params[p]!.type}; only string params hold text to screen`);
      });
  }
  const pp = m.prompt_policy as Partial<PromptPolicySpec> | undefined;
  if (pp === undefined) return problems;
  if (!isRecord(pp)) return [...problems, "prompt_policy: must be an object"];
  if (!Array.isArray(pp.applies_to) || pp.applies_to.length === 0 || !pp.applies_to.every((a) => typeof a === "string" && (a === "*" || MODEL_NAME.test(a)))) {
    problems.push('prompt_policy.applies_to: must be a non-empty array of model names, or ["*"]');
  } else if (typeof m.name === "string" && pp.applies_to.includes(m.name)) {
    problems.push("prompt_policy.applies_to: a classifier cannot screen its own items");
  }
  if (typeof pp.threshold !== "number" || !Number.isFinite(pp.threshold)) problems.push("prompt_policy.threshold: must be a number");
  if (!PROMPT_POLICY_TOKENIZERS.includes(pp.tokenizer as never)) problems.push(`prompt_policy.tokenizer: must be one of ${PROMPT_POLICY_TOKENIZERS.join(", ")}`);
  if (typeof pp.input_param !== "string" || params[pp.input_param]?.type !== "tensor") problems.push("prompt_policy.input_param: must name a declared tensor param");
  if (typeof pp.output !== "string" || !Array.isArray(m.outputs) || !m.outputs.some((o) => isRecord(o) && o.artifact === pp.output)) {
    problems.push("prompt_policy.output: must name an artifact of outputs");
  }
  if (pp.reason !== undefined && (typeof pp.reason !== "string" || pp.reason.length === 0 || pp.reason.length > 200)) {
    problems.push("prompt_policy.reason: must be a string of 1..200 characters");
  }
  return problems;
}

/**
 * Validates one item's params against a manifest and returns them with defaults applied.
 * Unknown params are refused: a typo like `widht` must not silently give a 256px image.
 */
export function validateParams(
  manifest: ModelManifest,
  params: Record<string, unknown> | undefined,
): { params: Record<string, unknown>; problems: ParamProblem[] } {
  const problems: ParamProblem[] = [];
  const input = params ?? {};
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(input)) {
    // Own properties only: "constructor" or "toString" must not pass as declared params.
    if (!Object.hasOwn(manifest.params, key)) {
      problems.push({ path: paramPath([key]), message: `unknown param for model ${manifest.name}` });
    }
  }
  for (const [name, spec] of Object.entries(manifest.params)) {
    const path = paramPath([name]);
    const raw = Object.hasOwn(input, name) ? input[name] : undefined;
    if (raw === undefined || raw === null) {
      if (spec.required) problems.push({ path, message: "is required" });
      else if (spec.default !== undefined) out[name] = spec.default;
      continue;
    }
    const problem = checkValue(spec, raw);
    if (problem) problems.push({ path, message: problem });
    else out[name] = raw;
  }
  return { params: out, problems };
}

function checkValue(spec: ParamSpec, value: unknown): string | undefined {
  switch (spec.type) {
    case "string": {
      if (typeof value !== "string") return "must be a string";
      if (spec.enum !== undefined) {
        return spec.enum.includes(value) ? undefined : `must be one of ${spec.enum.join(", ")} (got ${quoteInput(value)})`;
      }
      const min = spec.minLength ?? 0;
      const max = spec.maxLength ?? Number.MAX_SAFE_INTEGER;
      if (value.length < min || value.length > max) {
        return `must be a string of ${min}..${max} characters (got ${value.length})`;
      }
      return undefined;
    }
    case "boolean":
      return typeof value === "boolean" ? undefined : "must be true or false";
    case "integer":
    case "number": {
      if (typeof value !== "number" || !Number.isFinite(value)) return `must be ${spec.type === "integer" ? "an integer" : "a number"}`;
      if (spec.type === "integer" && !Number.isSafeInteger(value)) return "must be an integer";
      return rangeProblem(spec, value);
    }
    case "tensor": {
      if (!Array.isArray(value) || !value.every((v) => typeof v === "number" && Number.isFinite(v))) {
        return "must be an array of numbers";
      }
      if (value.length === 0) return "must not be empty";
      if (spec.maxElements !== undefined && value.length > spec.maxElements) {
        return `must have at most ${spec.maxElements} elements (got ${value.length})`;
      }
      return undefined;
    }
  }
}

function rangeProblem(spec: ParamSpec, value: number): string | undefined {
  const { minimum, maximum, multipleOf } = spec;
  const outOfRange = (minimum !== undefined && value < minimum) || (maximum !== undefined && value > maximum);
  const notMultiple = multipleOf !== undefined && value % multipleOf !== 0;
  if (!outOfRange && !notMultiple) return undefined;
  const range = minimum !== undefined || maximum !== undefined ? ` between ${minimum ?? "-∞"} and ${maximum ?? "∞"}` : "";
  if (multipleOf !== undefined) return `must be a multiple of ${multipleOf}${range} (got ${value})`;
  return `must be${range} (got ${value})`;
}

/** The screened params of one item that hold text, in the manifest's order (docs/content-policy.md). */
export function screenedTexts(screened: readonly string[] | undefined, params: Record<string, unknown>): { param: string; text: string }[] {
  const out: { param: string; text: string }[] = [];
  for (const param of screened ?? []) {
    const v = params[param];
    if (typeof v === "string" && v !== "") out.push({ param, text: v });
  }
  return out;
}

/** VRAM one item of this model needs, excluding the weights (paid once per resident GPU). */
export function activationBytes(manifest: ModelManifest, params: Record<string, unknown>): number {
  const { activation_bytes, activation_bytes_per_pixel } = manifest.vram;
  let need = activation_bytes;
  if (activation_bytes_per_pixel) {
    const w = typeof params.width === "number" ? params.width : 0;
    const h = typeof params.height === "number" ? params.height : 0;
    need += Math.ceil(activation_bytes_per_pixel * w * h);
  }
  return need;
}

/** Everything an item needs on a GPU where its model is not yet loaded. */
export function vramNeed(manifest: ModelManifest, params: Record<string, unknown>): number {
  return manifest.vram.weights_bytes + activationBytes(manifest, params);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
