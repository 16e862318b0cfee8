// Offline checks of Kubernetes objects (rendered Helm charts) against the Kubernetes API
// schemas that the `kubernetes-models` package ships: its validate() checks types, required
// fields and enums, but lets unknown field names through (a misspelt `readinessProbes` would
// be silently dropped by a real API server), so `unknownFields` walks each object against the
// field lists of the package's type declarations and reports every name the type lacks.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { ROOT } from "./processes.js";

const require = createRequire(join(ROOT, "package.json"));
const MODELS_DIR = dirname(require.resolve("kubernetes-models/package.json"));
const APIMACHINERY_DIR = dirname(require.resolve("@kubernetes-models/apimachinery/package.json"));

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata?: { name?: string; [k: string]: unknown };
  [k: string]: unknown;
}

/** kubernetes-models' module path of a built-in kind, e.g. apps/v1 Deployment → "apps/v1/Deployment". */
function modulePath(apiVersion: string, kind: string): string {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  return group === "" ? `${version}/${kind}` : `${group}/${version}/${kind}`;
}

/** Throws with the schema's complaints when `obj` is not a valid object of its built-in kind. */
export async function validateBuiltin(obj: K8sObject): Promise<void> {
  const path = modulePath(obj.apiVersion, obj.kind);
  let mod: Record<string, unknown>;
  try {
    mod = (await import(`kubernetes-models/${path}`)) as Record<string, unknown>;
  } catch {
    throw new Error(`${obj.kind} ${obj.apiVersion}: not a kind the Kubernetes API knows (no kubernetes-models/${path})`);
  }
  const Model = mod[obj.kind] as new (data: unknown) => { validate(): void };
  new Model(obj).validate();
}

// ---- field names, from the .d.ts files ----------------------------------------------------

/** A field's type: an object type (by file and interface), a map of one, a list of one, or a leaf. */
type FieldType = { kind: "ref"; ref: TypeRef } | { kind: "map"; of: FieldType } | { kind: "array"; of: FieldType } | { kind: "leaf" };
interface TypeRef {
  file: string;
  name: string;
}
/** Field name → type; undefined for a type that is not an object with known fields (a free-form or scalar alias). */
type Fields = Map<string, FieldType> | undefined;

const cache = new Map<string, Fields>();

function stripComments(text: string): string {
  // …and the blank lines they leave, so members follow each other line by line.
  return text.replace(/\/\*[\s\S]*?\*\//g, "").replace(/^[ \t]*\n/gm, "");
}

function resolveImport(fromFile: string, spec: string): string {
  if (spec.startsWith(".")) return resolve(dirname(fromFile), spec.replace(/\.js$/, ".d.ts"));
  if (spec.startsWith("@kubernetes-models/apimachinery/")) return join(APIMACHINERY_DIR, spec.slice("@kubernetes-models/apimachinery/".length) + ".d.ts");
  if (spec.startsWith("kubernetes-models/")) return join(MODELS_DIR, spec.slice("kubernetes-models/".length) + ".d.ts");
  return ""; // @kubernetes-models/base and friends: no API fields
}

function parseType(text: string, imports: Map<string, string>): FieldType {
  const t = text.trim();
  const arr = /^Array<(.+)>$/s.exec(t);
  if (arr) return { kind: "array", of: parseType(arr[1]!, imports) };
  const map = /^\{\s*\[key: string\]: (.+?);?\s*\}$/s.exec(t);
  if (map) return { kind: "map", of: parseType(map[1]!, imports) };
  const file = imports.get(t);
  if (file) return { kind: "ref", ref: { file, name: t } };
  return { kind: "leaf" };
}

/** The fields of the interface `name` (an I… type name imported or declared in `file`). */
function fieldsOf(ref: TypeRef): Fields {
  const key = `${ref.file}#${ref.name}`;
  if (cache.has(key)) return cache.get(key);
  cache.set(key, undefined); // recursion guard (JSONSchemaProps refers to itself)
  const text = stripComments(readFileSync(ref.file, "utf8"));
  const imports = new Map<string, string>();
  for (const m of text.matchAll(/import \{([^}]+)\} from "([^"]+)";/g)) {
    const file = resolveImport(ref.file, m[2]!);
    for (const n of m[1]!.split(",").map((s) => s.trim())) if (n && file) imports.set(n, file);
  }
  // The interface of this file: `export interface IThing extends … {` up to the `}` at line start.
  const decl = /^export interface (\w+)(?: extends [^{]+)? \{\n([\s\S]*?)^\}/m.exec(text);
  let fields: Fields;
  if (decl) {
    fields = new Map();
    const body = decl[2]!;
    // Top-level members only: `    "name"?: Type;`, where Type may span lines ({ [key: string]: T; }).
    const re = /^ {4}"([^"]+)"\??: ([\s\S]*?);\n(?= {4}"|$)/gm;
    for (const m of body.matchAll(re)) fields.set(m[1]!, parseType(m[2]!, imports));
    // Open-ended (an index signature of its own) or without declared fields (raw JSON): anything goes.
    if (/^ {4}\[key: string\]/m.test(body) || fields.size === 0) fields = undefined;
  }
  cache.set(key, fields);
  return fields;
}

function rootRef(apiVersion: string, kind: string): TypeRef {
  return { file: join(MODELS_DIR, modulePath(apiVersion, kind) + ".d.ts"), name: `I${kind}` };
}

/** Paths of every field name in `obj` that its Kubernetes type does not have. */
export function unknownFields(obj: K8sObject): string[] {
  const out: string[] = [];
  const walk = (value: unknown, type: FieldType, path: string): void => {
    if (value === null || value === undefined) return;
    if (type.kind === "array") {
      if (Array.isArray(value)) value.forEach((v, i) => walk(v, type.of, `${path}[${i}]`));
      return;
    }
    if (type.kind === "map") {
      if (typeof value === "object" && !Array.isArray(value)) for (const [k, v] of Object.entries(value)) walk(v, type.of, `${path}[${JSON.stringify(k)}]`);
      return;
    }
    if (type.kind !== "ref" || typeof value !== "object" || Array.isArray(value)) return;
    const fields = fieldsOf(type.ref);
    if (fields === undefined) return;
    for (const [k, v] of Object.entries(value)) {
      const t = fields.get(k);
      if (t === undefined) out.push(`${path}.${k}`);
      else walk(v, t, `${path}.${k}`);
    }
  };
  walk(obj, { kind: "ref", ref: rootRef(obj.apiVersion, obj.kind) }, obj.kind);
  return out;
}

// ---- custom resources, checked by hand ---------------------------------------------------

/** The parts of a CRD's schema Shoal's chart uses: allowed fields per path, and required ones. */
interface Shape {
  fields: Record<string, Shape | "string" | "integer" | "boolean" | "map" | "list" | "any">;
  required?: string[];
  /** For "list" fields, the shape of each element. */
  items?: Record<string, Shape>;
}

const metadataShape: Shape = { fields: { name: "string", namespace: "string", labels: "map", annotations: "map" }, required: ["name"] };

/**
 * The custom resources the chart renders, as their CRDs define them (KEDA 2.x ScaledObject,
 * Prometheus Operator v1 ServiceMonitor and PrometheusRule), limited to the fields a chart may
 * set. Written from those projects' CRD references; not downloaded.
 */
export const CRD_SHAPES: Record<string, Shape> = {
  "keda.sh/v1alpha1/ScaledObject": {
    fields: {
      metadata: metadataShape,
      spec: {
        fields: {
          scaleTargetRef: { fields: { apiVersion: "string", kind: "string", name: "string", envSourceContainerName: "string" }, required: ["name"] },
          pollingInterval: "integer",
          cooldownPeriod: "integer",
          idleReplicaCount: "integer",
          minReplicaCount: "integer",
          maxReplicaCount: "integer",
          fallback: "any",
          advanced: "any",
          triggers: "list",
        },
        required: ["scaleTargetRef", "triggers"],
        items: {
          triggers: { fields: { type: "string", name: "string", metadata: "map", authenticationRef: "any", metricType: "string", useCachedMetrics: "boolean" }, required: ["type", "metadata"] },
        },
      },
    },
    required: ["metadata", "spec"],
  },
  "monitoring.coreos.com/v1/ServiceMonitor": {
    fields: {
      metadata: metadataShape,
      spec: {
        fields: {
          jobLabel: "string",
          targetLabels: "list",
          podTargetLabels: "list",
          endpoints: "list",
          selector: { fields: { matchLabels: "map", matchExpressions: "list" } },
          namespaceSelector: { fields: { any: "boolean", matchNames: "list" } },
          sampleLimit: "integer",
        },
        required: ["selector", "endpoints"],
        items: {
          endpoints: {
            fields: { port: "string", targetPort: "any", path: "string", scheme: "string", interval: "string", scrapeTimeout: "string", honorLabels: "boolean", relabelings: "list", metricRelabelings: "list", params: "map" },
          },
        },
      },
    },
    required: ["metadata", "spec"],
  },
  "monitoring.coreos.com/v1/PrometheusRule": {
    fields: {
      metadata: metadataShape,
      spec: {
        fields: { groups: "list" },
        required: ["groups"],
        items: { groups: { fields: { name: "string", interval: "string", rules: "list", limit: "integer", partial_response_strategy: "string" }, required: ["name", "rules"] } },
      },
    },
    required: ["metadata", "spec"],
  },
};

const RULE_SHAPE: Shape = { fields: { alert: "string", record: "string", expr: "string", for: "string", keep_firing_for: "string", labels: "map", annotations: "map" }, required: ["expr"] };

/** Problems of a custom resource against CRD_SHAPES (unknown kind, unknown or missing fields, wrong types). */
export function checkCustomResource(obj: K8sObject): string[] {
  const key = `${obj.apiVersion}/${obj.kind}`;
  const shape = CRD_SHAPES[key];
  if (!shape) return [`${key}: not a custom resource this check knows`];
  const problems: string[] = [];
  const check = (value: unknown, s: Shape, path: string): void => {
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      problems.push(`${path}: must be an object`);
      return;
    }
    const v = value as Record<string, unknown>;
    for (const r of s.required ?? []) if (v[r] === undefined) problems.push(`${path}.${r}: required`);
    for (const [k, val] of Object.entries(v)) {
      if (k === "apiVersion" || k === "kind") continue;
      const t = s.fields[k];
      const p = `${path}.${k}`;
      if (t === undefined) problems.push(`${p}: unknown field`);
      else if (t === "any") continue;
      else if (typeof t === "object") check(val, t, p);
      else if (t === "string" && typeof val !== "string") problems.push(`${p}: must be a string`);
      else if (t === "integer" && !Number.isInteger(val)) problems.push(`${p}: must be an integer`);
      else if (t === "boolean" && typeof val !== "boolean") problems.push(`${p}: must be a boolean`);
      else if (t === "map" && (typeof val !== "object" || val === null || Array.isArray(val) || Object.values(val).some((x) => typeof x !== "string"))) problems.push(`${p}: must be a map of strings`);
      else if (t === "list") {
        if (!Array.isArray(val)) problems.push(`${p}: must be a list`);
        else {
          const item = k === "rules" ? RULE_SHAPE : s.items?.[k];
          if (item) val.forEach((x, i) => check(x, item, `${p}[${i}]`));
        }
      }
    }
  };
  check(obj, shape, obj.kind);
  return problems;
}
