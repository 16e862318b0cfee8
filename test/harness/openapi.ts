// Checks HTTP responses against the committed OpenAPI document (docs/openapi.json): the
// operation must exist, the status must be one it declares, the content type one it lists and
// a JSON body must match its schema. Throws an AssertionError naming the mismatch.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Ajv2020, type ValidateFunction } from "ajv/dist/2020.js";
import { ROOT } from "./processes.js";

interface MediaType {
  schema?: Record<string, unknown>;
}
interface Operation {
  responses: Record<string, { content?: Record<string, MediaType> }>;
}
interface Doc {
  paths: Record<string, Record<string, Operation>>;
  components: { schemas: Record<string, unknown> };
}

export const OPENAPI_DOC = JSON.parse(readFileSync(join(ROOT, "docs/openapi.json"), "utf8")) as Doc;
const BASE = "https://shoal.invalid/openapi.json";
const ajv = new Ajv2020({ strict: false, allErrors: true });
ajv.addSchema({ $id: BASE, components: OPENAPI_DOC.components });
const compiled = new Map<string, ValidateFunction>();

function validator(schema: Record<string, unknown>): ValidateFunction {
  const key = JSON.stringify(schema);
  let v = compiled.get(key);
  if (!v) {
    // Refs in the document are local (#/components/...): resolve them against the base.
    const ref = typeof schema.$ref === "string" ? `${BASE}${schema.$ref}` : undefined;
    v = ref ? ajv.getSchema(ref)! : ajv.compile({ ...schema, $id: `${BASE}-${compiled.size}` });
    assert.ok(v, `no schema ${key}`);
    compiled.set(key, v);
  }
  return v;
}

/** The schema of a component, e.g. "Result", for checking SSE event data. */
export function checkSchema(component: string, value: unknown, what = component): void {
  const v = validator({ $ref: `#/components/schemas/${component}` });
  assert.ok(v(value), `${what} does not match ${component}: ${ajv.errorsText(v.errors)}\n${JSON.stringify(value).slice(0, 2000)}`);
}

function templateFor(path: string): string {
  const p = path.split("?")[0]!;
  for (const t of Object.keys(OPENAPI_DOC.paths)) {
    const re = new RegExp(`^${t.replace(/\{[^}]+\}/g, "[^/]+")}$`);
    if (re.test(p)) return t;
  }
  assert.fail(`no path in the OpenAPI document matches ${p}`);
}

/**
 * Checks one response. `body` is the parsed JSON (or undefined for bodies that are not JSON);
 * returns the status so tests can chain.
 */
export function checkResponse(method: string, url: string, res: Response, body: unknown): void {
  const path = new URL(url).pathname;
  const op = OPENAPI_DOC.paths[templateFor(path)]![method.toLowerCase()];
  assert.ok(op, `${method} ${path}: not in the OpenAPI document`);
  const declared = op.responses[String(res.status)];
  assert.ok(declared, `${method} ${path}: status ${res.status} is not declared (declared: ${Object.keys(op.responses).join(", ")}); body: ${JSON.stringify(body)?.slice(0, 500)}`);
  if (!declared.content) return;
  const type = (res.headers.get("content-type") ?? "").split(";")[0]!.trim();
  const media = declared.content[type];
  assert.ok(media, `${method} ${path} ${res.status}: content type ${type} is not declared (${Object.keys(declared.content).join(", ")})`);
  if (type === "application/json" && media.schema) {
    const v = validator(media.schema);
    assert.ok(v(body), `${method} ${path} ${res.status}: body does not match the document: ${ajv.errorsText(v.errors)}\n${JSON.stringify(body).slice(0, 2000)}`);
  }
}
