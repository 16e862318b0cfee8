// The model directory: any ONNX model is served by dropping `<dir>/<name>/manifest.json` and the
// `.onnx` file its `file` field names. A bad model must not take the worker down with it, so
// each one is checked on its own and skipped with the list of what is wrong, for the caller to
// log; the good ones are served.

import { readdir, readFile, stat } from "node:fs/promises";
import { isAbsolute, join, relative, resolve } from "node:path";
import { checkManifest, type ModelManifest } from "../../shared/manifest.js";

export interface LocalModel {
  manifest: ModelManifest;
  /** Absolute path of the .onnx file. */
  modelPath: string;
  manifestPath: string;
}

export interface ManifestProblem {
  /** The manifest (or directory) the problems are about. */
  file: string;
  problems: string[];
}

export interface ModelDirScan {
  models: LocalModel[];
  problems: ManifestProblem[];
}

export const MANIFEST_FILE = "manifest.json";

/**
 * Reads every `<dir>/<name>/manifest.json`. `reservedNames` (the built-in models) cannot be
 * replaced from the directory. Files directly in `dir` are ignored (a README, say).
 */
export async function loadModelDir(dir: string, reservedNames: readonly string[] = []): Promise<ModelDirScan> {
  const scan: ModelDirScan = { models: [], problems: [] };
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch (err) {
    scan.problems.push({ file: dir, problems: [`model directory cannot be read: ${(err as Error).message}`] });
    return scan;
  }
  const taken = new Map<string, string>(reservedNames.map((n) => [n, "a built-in model"]));
  for (const entry of entries.filter((e) => e.isDirectory()).sort((a, b) => a.name.localeCompare(b.name))) {
    const manifestPath = resolve(dir, entry.name, MANIFEST_FILE);
    const result = await loadModel(resolve(dir, entry.name), manifestPath);
    if ("problems" in result) {
      scan.problems.push({ file: manifestPath, problems: result.problems });
      continue;
    }
    const owner = taken.get(result.manifest.name);
    if (owner !== undefined) {
      scan.problems.push({ file: manifestPath, problems: [`name: "${result.manifest.name}" is already used by ${owner}`] });
      continue;
    }
    taken.set(result.manifest.name, manifestPath);
    scan.models.push(result);
  }
  return scan;
}

async function loadModel(modelDir: string, manifestPath: string): Promise<LocalModel | { problems: string[] }> {
  let text: string;
  try {
    text = await readFile(manifestPath, "utf8");
  } catch (err) {
    const missing = (err as NodeJS.ErrnoException).code === "ENOENT";
    return { problems: [missing ? `${MANIFEST_FILE} is missing` : `cannot read: ${(err as Error).message}`] };
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return { problems: [`not valid JSON: ${(err as Error).message}`] };
  }
  const problems = checkManifest(value);
  if (problems.length > 0) return { problems };
  const manifest = { ...(value as ModelManifest), builtin: false };
  problems.push(...genericProblems(manifest));
  let modelPath = "";
  if (typeof manifest.file === "string" && manifest.file.length > 0) {
    modelPath = resolve(modelDir, manifest.file);
    const rel = relative(modelDir, modelPath);
    if (isAbsolute(manifest.file) || rel.startsWith("..") || isAbsolute(rel)) {
      problems.push(`file: "${manifest.file}" must be a path inside the model's directory`);
    } else {
      try {
        if (!(await stat(modelPath)).isFile()) problems.push(`file: ${join(modelDir, manifest.file)} is not a file`);
      } catch {
        problems.push(`file: ${join(modelDir, manifest.file)} does not exist`);
      }
    }
  }
  if (problems.length > 0) return { problems };
  return { manifest, modelPath, manifestPath };
}

/** What a model served from the directory needs beyond a valid manifest. */
function genericProblems(m: ModelManifest): string[] {
  const problems: string[] = [];
  if (typeof m.file !== "string" || m.file.length === 0) problems.push("file: required: the .onnx file, relative to the manifest");
  if (!Array.isArray(m.inputs) || m.inputs.length === 0) {
    problems.push("inputs: required: at least one tensor input fed from a param");
  } else {
    m.inputs.forEach((input, i) => {
      if (!Array.isArray(input.shape)) return;
      const inferred = input.shape.filter((d) => d === -1).length;
      if (inferred > 1) problems.push(`inputs[${i}].shape: at most one dimension may be -1`);
      if (input.shape.some((d) => d !== -1 && d < 1)) problems.push(`inputs[${i}].shape: dimensions must be positive, or -1`);
    });
  }
  if ((m.max_batch ?? 1) > 1 && Array.isArray(m.inputs)) {
    // Batches stack items along dim 0, so each item must be a batch of one there.
    m.inputs.forEach((input, i) => {
      if (Array.isArray(input.shape) && input.shape[0] !== 1) {
        problems.push(`max_batch: ${m.max_batch} needs every input's first dimension to be the batch dimension, 1; inputs[${i}].shape is [${input.shape.join(", ")}]`);
      }
    });
  }
  if (m.max_batch_pixels !== undefined) {
    problems.push("max_batch_pixels: only image models (imagegen-tiny) have pixels; bound a generic model's batches with max_batch");
  }
  const artifacts = (m.outputs ?? []).map((o) => o.artifact);
  if (new Set(artifacts).size !== artifacts.length) problems.push("outputs: artifact names must be distinct");
  return problems;
}
