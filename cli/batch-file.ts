// Reads a batch file into items and batch options. Four shapes are accepted, so people can
// bring what they already have:
//   (a) a JSON array of items:            [{"model": "imagegen-tiny", "params": {...}}, ...]
//   (b) a JSON object with options:       {"items": [...], "priority": 5, "labels": {...}, ...}
//   (c) the batch image API request body: {"requests": [{"prompt": "...", "width": 1024}, ...],
//                                          "webhook_url": "...", "webhook_events": [...]}
//   (d) JSONL: one item per line, {"model", "params"} or a flat request; blank lines and
//       lines starting with # are skipped.
// Every item may be given either as {"model", "params"} or flat (its fields are the params, an
// optional "model" field picks the model). Params are not checked against model manifests
// here: the server does that and answers with item paths, which the CLI maps back to lines.

import { readFile } from "node:fs/promises";
import { extname } from "node:path";
import type { Item, Webhook } from "../proto/gen/shoal/v1/shoal.js";
import { quoteInput } from "../shared/param-limits.js";
import { BatchFileError } from "./errors.js";

export const DEFAULT_MODEL = "imagegen-tiny";

export type BatchFileShape = "array" | "items" | "requests" | "jsonl";

export interface BatchFile {
  file: string;
  shape: BatchFileShape;
  items: Item[];
  /** Where item i was written ("batch.jsonl:5", "batch.json: requests[3]"), for messages. */
  sources: string[];
  priority?: number;
  labels?: Record<string, string>;
  idempotencyKey?: string;
  webhook?: Webhook;
}

export interface BatchFileOptions {
  /** The model of items that name none; `--model` sets it. */
  defaultModel?: string;
}

/** Reads and parses `path`; "-" reads standard input. */
export async function readBatchFile(path: string, options: BatchFileOptions = {}): Promise<BatchFile> {
  const name = path === "-" ? "<stdin>" : path;
  let text: string;
  try {
    text = path === "-" ? await readStdin() : await readFile(path, "utf8");
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (err as Error).message;
    throw new BatchFileError(name, [`${name}: cannot read: ${reason}`], { cause: err });
  }
  return parseBatchFile(text, name, options);
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

/** Parses the text of a batch file; `file` is only used in messages and to spot `.jsonl`. */
export function parseBatchFile(text: string, file: string, options: BatchFileOptions = {}): BatchFile {
  const defaultModel = options.defaultModel ?? DEFAULT_MODEL;
  const problems = new Problems(file);
  const body = text.replace(/^\uFEFF/, "");
  const ext = extname(file).toLowerCase();

  let result: BatchFile;
  if (body.trim() === "") {
    problems.add(`${file}: the file is empty`);
    result = emptyResult(file, "jsonl");
  } else if (ext === ".jsonl" || ext === ".ndjson") {
    result = parseJsonl(body, file, defaultModel, problems);
  } else {
    let value: unknown;
    let jsonError: Error | undefined;
    try {
      value = JSON.parse(body);
    } catch (err) {
      jsonError = err as Error;
    }
    if (jsonError) {
      // Not one JSON document: JSONL under another extension, or a broken JSON file. The
      // first real line decides, so a typo in a .json file is reported as a JSON typo.
      if (looksLikeJsonl(body)) result = parseJsonl(body, file, defaultModel, problems);
      else {
        problems.add(`${file}${jsonErrorLocation(jsonError, body)}: not valid JSON: ${jsonErrorReason(jsonError)}`);
        result = emptyResult(file, "array");
      }
    } else if (Array.isArray(value)) {
      result = emptyResult(file, "array");
      parseItemList(value, "items", result, defaultModel, problems);
    } else if (isPlainObject(value) && ("items" in value || "requests" in value)) {
      result = parseBatchObject(value, file, defaultModel, problems);
    } else if (isPlainObject(value) && !body.trim().includes("\n") && ext !== ".json") {
      // A single-line file holding one item is a one-line JSONL file.
      result = parseJsonl(body, file, defaultModel, problems);
    } else {
      problems.add(
        `${file}: expected a JSON array of items, an object with "items" or "requests", ` +
          `or JSONL (one item per line)`,
      );
      result = emptyResult(file, "array");
    }
  }

  if (problems.count === 0 && result.items.length === 0) problems.add(`${file}: no items`);
  problems.throwIfAny();
  return result;
}

function emptyResult(file: string, shape: BatchFileShape): BatchFile {
  return { file, shape, items: [], sources: [] };
}

function looksLikeJsonl(body: string): boolean {
  const first = body.split(/\r?\n/).find((l) => l.trim() !== "" && !l.trim().startsWith("#"));
  if (first === undefined) return true;
  try {
    return isPlainObject(JSON.parse(first));
  } catch {
    return false;
  }
}

function parseJsonl(body: string, file: string, defaultModel: string, problems: Problems): BatchFile {
  const result = emptyResult(file, "jsonl");
  const lines = body.split(/\r?\n/);
  lines.forEach((raw, i) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const where = `${file}:${i + 1}`;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (err) {
      problems.add(`${where}: not valid JSON: ${jsonErrorReason(err as Error, true)}`);
      return;
    }
    const item = toItem(value, (field) => (field ? `${where}: ${field}` : where), defaultModel, problems);
    if (item) {
      result.items.push(item);
      result.sources.push(where);
    }
  });
  return result;
}

const COMMON_KEYS = ["priority", "labels", "idempotency_key", "webhook", "webhook_url", "webhook_events", "webhook_secret"];

function parseBatchObject(
  value: Record<string, unknown>,
  file: string,
  defaultModel: string,
  problems: Problems,
): BatchFile {
  const listKey = "items" in value ? "items" : "requests";
  const result = emptyResult(file, listKey);
  const at = (path: string): string => `${file}: ${path}`;

  if ("items" in value && "requests" in value) {
    problems.add(`${file}: has both "items" and "requests"; use one of them`);
  }
  for (const key of Object.keys(value)) {
    if (key !== "items" && key !== "requests" && !COMMON_KEYS.includes(key)) {
      problems.add(`${at(fieldPath("", key))}: unknown field (expected ${[listKey, ...COMMON_KEYS].join(", ")})`);
    }
  }

  const list = value[listKey];
  if (!Array.isArray(list)) problems.add(`${at(listKey)}: must be an array`);
  else parseItemList(list, listKey, result, defaultModel, problems);

  if (value.priority !== undefined) {
    const p = value.priority;
    if (typeof p === "number" && Number.isInteger(p) && Math.abs(p) <= 2 ** 31 - 1) result.priority = p;
    else problems.add(`${at("priority")}: must be an integer`);
  }
  if (value.labels !== undefined) {
    const labels = stringMap(value.labels, "labels", at, problems);
    if (labels) result.labels = labels;
  }
  if (value.idempotency_key !== undefined) {
    if (typeof value.idempotency_key === "string") result.idempotencyKey = value.idempotency_key;
    else problems.add(`${at("idempotency_key")}: must be a string`);
  }
  const webhook = parseWebhook(value, at, problems);
  if (webhook) result.webhook = webhook;
  return result;
}

function parseItemList(
  list: unknown[],
  path: string,
  result: BatchFile,
  defaultModel: string,
  problems: Problems,
): void {
  list.forEach((value, i) => {
    const itemPath = `${path}[${i}]`;
    const item = toItem(value, (field) => `${result.file}: ${field ? `${itemPath}${field.startsWith("[") ? "" : "."}${field}` : itemPath}`, defaultModel, problems);
    if (item) {
      result.items.push(item);
      result.sources.push(`${result.file}: ${itemPath}`);
    }
  });
}

/**
 * One item, either {"model", "params"} or flat. `at(field)` names the place for messages;
 * returns undefined (after reporting) when the item is unusable.
 */
function toItem(
  value: unknown,
  at: (field?: string) => string,
  defaultModel: string,
  problems: Problems,
): Item | undefined {
  if (!isPlainObject(value)) {
    problems.add(`${at()}: must be an object, {"model": ..., "params": {...}} or a flat request {"prompt": ...}`);
    return undefined;
  }
  const before = problems.count;
  let model = defaultModel;
  if (value.model !== undefined) {
    if (typeof value.model === "string" && value.model.trim() !== "") model = value.model;
    else problems.add(`${at("model")}: must be a non-empty string`);
  }

  let params: Record<string, unknown>;
  if ("params" in value) {
    for (const key of Object.keys(value)) {
      if (key !== "model" && key !== "params") {
        problems.add(
          `${at(fieldPath("", key))}: unknown field; an item with "params" has only "model" and "params" ` +
            `(put model params inside "params")`,
        );
      }
    }
    if (!isPlainObject(value.params)) {
      problems.add(`${at("params")}: must be an object`);
      return undefined;
    }
    params = value.params;
  } else {
    const { model: _model, ...rest } = value;
    params = rest;
  }
  return problems.count === before ? { model, params } : undefined;
}

function parseWebhook(
  value: Record<string, unknown>,
  at: (path: string) => string,
  problems: Problems,
): Webhook | undefined {
  const flat = value.webhook_url !== undefined || value.webhook_events !== undefined || value.webhook_secret !== undefined;
  if (value.webhook !== undefined && flat) {
    problems.add(`${at("webhook")}: give either "webhook" or "webhook_url"/"webhook_events", not both`);
    return undefined;
  }
  let url: unknown, events: unknown, secret: unknown;
  let path: (field: string) => string;
  if (value.webhook !== undefined) {
    const w = value.webhook;
    if (!isPlainObject(w)) {
      problems.add(`${at("webhook")}: must be an object {"url", "events", "secret"}`);
      return undefined;
    }
    for (const key of Object.keys(w)) {
      if (!["url", "events", "secret"].includes(key)) {
        problems.add(`${at(fieldPath("webhook", key))}: unknown field (expected url, events, secret)`);
      }
    }
    ({ url, events, secret } = w);
    path = (field) => at(`webhook.${field}`);
  } else if (flat) {
    url = value.webhook_url;
    events = value.webhook_events;
    secret = value.webhook_secret;
    path = (field) => at(`webhook_${field}`);
  } else {
    return undefined;
  }

  const before = problems.count;
  if (typeof url !== "string" || url === "") problems.add(`${path("url")}: must be a non-empty string`);
  if (events !== undefined && !(Array.isArray(events) && events.every((e) => typeof e === "string"))) {
    problems.add(`${path("events")}: must be an array of strings`);
  }
  if (secret !== undefined && typeof secret !== "string") problems.add(`${path("secret")}: must be a string`);
  if (problems.count !== before) return undefined;
  return {
    url: url as string,
    events: ((events as string[] | undefined) ?? []).map(webhookEventName),
    secret: (secret as string | undefined) ?? "",
  };
}

/** The batch image API says "batch.complete"; Shoal's event is "batch.completed". */
function webhookEventName(event: string): string {
  return event === "batch.complete" ? "batch.completed" : event;
}

function stringMap(
  value: unknown,
  path: string,
  at: (path: string) => string,
  problems: Problems,
): Record<string, string> | undefined {
  if (!isPlainObject(value)) {
    problems.add(`${at(path)}: must be an object of strings`);
    return undefined;
  }
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(value)) {
    if (typeof v === "string") out[k] = v;
    else problems.add(`${at(fieldPath(path, k))}: must be a string`);
  }
  return out;
}

const IDENTIFIER = /^[A-Za-z_$][\w$]{0,63}$/;

/**
 * `labels.team`, or `labels["odd key"]` for a key that is not a short identifier: quoted, and
 * cut to 64 characters, so a megabyte key makes a one-line message (the server's paths look the same).
 */
function fieldPath(base: string, key: string): string {
  if (IDENTIFIER.test(key)) return base ? `${base}.${key}` : key;
  return `${base}[${quoteInput(key)}]`;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

// V8 says "... in JSON at position 42" (Node 20) and adds "(line 3 column 5)" (Node 22). We
// report "file:line:column" like a compiler, so the reason is the message without either.
function jsonErrorReason(err: Error, withColumn = false): string {
  const position = /at position (\d+)/.exec(err.message);
  const reason = err.message
    .replace(/\s*\(line \d+ column \d+\)/, "")
    .replace(/\s*in JSON at position \d+/, "")
    .replace(/\s*at position \d+/, "");
  return withColumn && position ? `${reason} (column ${Number(position[1]) + 1})` : reason;
}

function jsonErrorLocation(err: Error, body: string): string {
  const position = /at position (\d+)/.exec(err.message);
  if (position) {
    const before = body.slice(0, Number(position[1]));
    const line = before.split("\n").length;
    const column = before.length - before.lastIndexOf("\n");
    return `:${line}:${column}`;
  }
  // "Unexpected end of JSON input" has no position: the problem is at the end.
  if (/end of JSON/i.test(err.message)) return `:${body.trimEnd().split("\n").length}`;
  return "";
}

const MAX_PROBLEMS = 20;

/** Collects every problem, so one run of `shoal submit` shows all of them, not the first. */
class Problems {
  private readonly list: string[] = [];
  constructor(private readonly file: string) {}

  get count(): number {
    return this.list.length;
  }

  add(problem: string): void {
    this.list.push(problem);
  }

  throwIfAny(): void {
    if (this.list.length === 0) return;
    const shown = this.list.slice(0, MAX_PROBLEMS);
    if (this.list.length > MAX_PROBLEMS) shown.push(`… and ${this.list.length - MAX_PROBLEMS} more problems`);
    throw new BatchFileError(this.file, shown);
  }
}
