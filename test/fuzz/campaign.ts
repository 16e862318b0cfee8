// A fuzzing campaign against a live coordinator and worker: a fixed number of cases per kind,
// interleaved, with many in flight, every one reproducible from its replay token
// (`kind:chunkSeed:index`). Used by the CI test (test/integration/fuzz.test.ts) and by the long
// run (`npm run fuzz`, test/fuzz/main.ts).

import fc from "fast-check";
import { status } from "@grpc/grpc-js";
import { SubmitBatchRequest } from "../../proto/gen/shoal/v1/shoal.js";
import { hugeRequest, metadataCase, natsCase, rawCase, submitRequest, type GrpcMethodName, type MetadataCase, type NatsCase, type RawCase } from "./arbitraries.js";
import { acceptedBatchId, statusName, judge, type GrpcTarget } from "./grpc-target.js";
import type { NatsTarget } from "./nats-target.js";

export const CASE_KINDS = ["submit", "huge", "raw", "metadata", "nats"] as const;
export type CaseKind = (typeof CASE_KINDS)[number];

export type FuzzCase =
  | { kind: "submit" | "huge"; method: "SubmitBatch" | "RunBatch"; request: SubmitBatchRequest }
  | ({ kind: "raw" } & RawCase)
  | ({ kind: "metadata" } & MetadataCase)
  | ({ kind: "nats" } & NatsCase);

const ARBITRARIES: Record<CaseKind, fc.Arbitrary<FuzzCase>> = {
  // One in twenty goes to RunBatch, which also waits for an accepted batch to end.
  submit: fc.tuple(submitRequest, fc.integer({ min: 0, max: 19 })).map(([request, r]) => ({ kind: "submit", method: r === 0 ? "RunBatch" : "SubmitBatch", request })),
  huge: hugeRequest.map((request) => ({ kind: "huge", method: "SubmitBatch", request })),
  raw: rawCase.map((c) => ({ kind: "raw", ...c })),
  metadata: metadataCase.map((c) => ({ kind: "metadata", ...c })),
  nats: natsCase.map((c) => ({ kind: "nats", ...c })),
};

/** Shares of each kind in a run of N cases (the CI test uses the same mix, scaled). */
export const MIX: Record<CaseKind, number> = { submit: 0.8, huge: 0.0005, raw: 0.1, metadata: 0.03, nats: 0.07 };

export function countsFor(total: number): Record<CaseKind, number> {
  const counts = { submit: 0, huge: 0, raw: 0, metadata: 0, nats: 0 };
  for (const k of CASE_KINDS) counts[k] = Math.floor(total * MIX[k]);
  counts.huge = Math.max(counts.huge, 1);
  counts.submit = total - CASE_KINDS.reduce((s, k) => s + (k === "submit" ? 0 : counts[k]), 0);
  return counts;
}

/** Cases are drawn in chunks, each from its own seed, so any one case can be drawn again alone. */
const CHUNK = 64;

export function chunkSeed(seed: number, kind: CaseKind, chunk: number): number {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  h = Math.imul(h ^ (CASE_KINDS.indexOf(kind) + 1), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ chunk, 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) | 0;
}

/** The case a replay token names. */
export function replayCase(token: string): FuzzCase {
  const m = /^(submit|huge|raw|metadata|nats):(-?\d+):(\d+)$/.exec(token);
  if (!m) throw new Error(`replay token "${token}": expected kind:seed:index, e.g. submit:-12345:7`);
  const index = Number(m[3]);
  return fc.sample(ARBITRARIES[m[1] as CaseKind], { seed: Number(m[2]), numRuns: index + 1 })[index]!;
}

export interface Finding {
  replay: string;
  kind: CaseKind;
  problem: string;
  /** When the answer came, in ms since the campaign started. */
  atMs: number;
  /** The start of the case, for the report; the replay token gives all of it. */
  sample: string;
}

export interface Report {
  cases: Record<CaseKind, number>;
  /** gRPC answers by status name. */
  codes: Record<string, number>;
  /** NATS cases our own client or nats-server refused before Shoal saw them. */
  natsRefused: number;
  /** Ids of batches the coordinator accepted (they must all end). */
  accepted: string[];
  findings: Finding[];
  hangs: number;
  /** The slowest gRPC answers: how long the longest calls took and how big they were. */
  slowest: { replay: string; ms: number; bytes: number; code: string }[];
  /** Set when a coordinator or worker process died: which one, and the cases in flight. */
  crash: string | undefined;
  durationMs: number;
}

/**
 * The deadline of one call: past it the call counts as a hang. Requests of more than 256 KiB get
 * four times as long: on a saturated 2-core machine their HTTP/2 transfer shares the connection
 * with 31 other calls and has been seen to take over 10 s, while nothing was stuck.
 */
export function deadlineFor(baseMs: number, bytes: number): number {
  return bytes > 256 * 1024 ? baseMs * 4 : baseMs;
}

export interface CampaignOptions {
  grpc: GrpcTarget;
  nats: NatsTarget;
  /** Deadline of a call of up to 256 KiB (see deadlineFor). */
  deadlineMs: number;
  seed: number;
  counts: Record<CaseKind, number>;
  concurrency: number;
  /** Undefined while every process lives; otherwise which one died and how. */
  deadProcess(): string | undefined;
  /** Only these cases (replay tokens), instead of `counts`. */
  replay?: string[];
  onProgress?(report: Report): void;
  progressEveryMs?: number;
  /** Stop at the first finding (the long run keeps going and reports them all). */
  stopOnFinding?: boolean;
}

function summary(c: FuzzCase): string {
  const limit = 300;
  try {
    if (c.kind === "raw") return `${c.method} ${c.bytes.length} bytes: ${Buffer.from(c.bytes.subarray(0, 48)).toString("hex")}`;
    if (c.kind === "nats") return `${c.target} ${c.token ?? "<worker>"} reply=${c.reply} ${c.payload.length} bytes: ${Buffer.from(c.payload.subarray(0, 48)).toString("hex")}`;
    return JSON.stringify(c, (_k, v: unknown) => (typeof v === "string" && v.length > 80 ? `${v.slice(0, 80)}…(${v.length})` : v)).slice(0, limit);
  } catch {
    return `${c.kind} (not printable)`;
  }
}

/**
 * The order of the cases: every kind interleaved evenly, then the huge ones, one at a time. A
 * request of megabytes sharing the HTTP/2 connection with 31 small calls advances one 64 KiB
 * flow-control window per event-loop turn of a saturated coordinator and took minutes on a loaded
 * 2-core machine, while alone it takes a second or two: sent alone, its deadline still means
 * "hang", not "slow transport".
 */
function* schedule(counts: Record<CaseKind, number>): Generator<[CaseKind, number]> {
  yield* interleaved({ ...counts, huge: 0 });
  for (let n = 0; n < counts.huge; n++) yield ["huge", n];
}

function* interleaved(counts: Record<CaseKind, number>): Generator<[CaseKind, number]> {
  const total = CASE_KINDS.reduce((s, k) => s + counts[k], 0);
  const done: Record<CaseKind, number> = { submit: 0, huge: 0, raw: 0, metadata: 0, nats: 0 };
  for (let i = 0; i < total; i++) {
    // The kind furthest behind its share goes next, so kinds interleave evenly.
    let best: CaseKind | undefined;
    let bestDeficit = -Infinity;
    for (const k of CASE_KINDS) {
      if (done[k] >= counts[k]) continue;
      const deficit = (counts[k] * (i + 1)) / total - done[k];
      if (deficit > bestDeficit) [best, bestDeficit] = [k, deficit];
    }
    yield [best!, done[best!]++];
  }
}

export async function runCampaign(o: CampaignOptions): Promise<Report> {
  const started = performance.now();
  const report: Report = { cases: { submit: 0, huge: 0, raw: 0, metadata: 0, nats: 0 }, codes: {}, natsRefused: 0, accepted: [], findings: [], hangs: 0, slowest: [], crash: undefined, durationMs: 0 };
  const chunks = new Map<CaseKind, { index: number; seed: number; values: FuzzCase[] }>();
  const inFlight = new Set<string>();
  let stop = false;
  let natsSinceFlush = 0;

  const draw = (kind: CaseKind, n: number): { c: FuzzCase; replay: string } => {
    const chunk = Math.floor(n / CHUNK);
    let cached = chunks.get(kind);
    if (!cached || cached.index !== chunk) {
      const seed = chunkSeed(o.seed, kind, chunk);
      cached = { index: chunk, seed, values: fc.sample(ARBITRARIES[kind], { seed, numRuns: CHUNK }) };
      chunks.set(kind, cached);
    }
    return { c: cached.values[n % CHUNK]!, replay: `${kind}:${cached.seed}:${n % CHUNK}` };
  };

  const found = (replay: string, c: FuzzCase, problem: string) => {
    report.findings.push({ replay, kind: c.kind, problem, atMs: Math.round(performance.now() - started), sample: summary(c) });
    if (o.stopOnFinding) stop = true;
  };

  const checkAlive = () => {
    const dead = o.deadProcess();
    if (dead && !report.crash) {
      report.crash = `${dead}; cases in flight: ${[...inFlight].join(", ") || "none"}`;
      stop = true;
    }
  };

  const grpcCase = async (replay: string, c: FuzzCase, method: GrpcMethodName, bytes: Uint8Array, allowed?: readonly number[], md?: ReturnType<GrpcTarget["authorized"]>) => {
    const sent = performance.now();
    const a = await o.grpc.call(method, bytes, md, deadlineFor(o.deadlineMs, bytes.length));
    const ms = performance.now() - sent;
    const name = statusName(a.code);
    if (report.slowest.length < 5 || ms > report.slowest[report.slowest.length - 1]!.ms) {
      report.slowest.push({ replay, ms: Math.round(ms), bytes: bytes.length, code: name });
      report.slowest.sort((x, y) => y.ms - x.ms).splice(5);
    }
    report.codes[name] = (report.codes[name] ?? 0) + 1;
    if (a.code === status.UNAVAILABLE) checkAlive();
    // After a crash every call fails; the crash is the finding, not each of those.
    if (report.crash) return;
    const problem = judge(method, bytes, a, allowed);
    if (problem) {
      if (a.code === status.DEADLINE_EXCEEDED) report.hangs++;
      found(replay, c, problem);
    }
    const id = acceptedBatchId(method, a);
    if (id) report.accepted.push(id);
  };

  const runOne = async (replay: string, c: FuzzCase): Promise<void> => {
    switch (c.kind) {
      case "submit":
      case "huge": {
        let bytes: Uint8Array;
        try {
          bytes = SubmitBatchRequest.encode(c.request).finish();
        } catch (err) {
          found(replay, c, `fuzzer: the generated request does not encode: ${(err as Error).message}`);
          return;
        }
        return grpcCase(replay, c, c.method, bytes);
      }
      case "raw":
        return grpcCase(replay, c, c.method, c.bytes);
      case "metadata": {
        let md;
        try {
          md = o.grpc.metadataOf(c);
        } catch (err) {
          found(replay, c, `fuzzer: grpc-js refuses the generated metadata: ${(err as Error).message}`);
          return;
        }
        const normal = c.method === "ListModels" ? status.OK : status.INVALID_ARGUMENT;
        const verdict = o.grpc.authVerdict(c);
        const allowed = verdict === "accept" ? [normal] : verdict === "refuse" ? [status.UNAUTHENTICATED] : [normal, status.UNAUTHENTICATED];
        // Both requests are the empty message: ListModels takes none, SubmitBatch with no items.
        return grpcCase(replay, c, c.method, new Uint8Array(), allowed, md);
      }
      case "nats": {
        if ((await o.nats.send(c, report.cases.nats)) === "refused") report.natsRefused++;
        if (++natsSinceFlush >= 50) {
          natsSinceFlush = 0;
          await o.nats.flush();
        }
        return;
      }
    }
  };

  const work: Iterator<[CaseKind, number]> | undefined = o.replay ? undefined : schedule(o.counts);
  const replays = [...(o.replay ?? [])];
  const next = (): { c: FuzzCase; replay: string } | undefined => {
    if (replays.length > 0) {
      const token = replays.shift()!;
      return { c: replayCase(token), replay: token };
    }
    const n = work?.next();
    return n && !n.done ? draw(n.value[0], n.value[1]) : undefined;
  };

  let sinceCheck = 0;
  const deferred: { c: FuzzCase; replay: string }[] = [];
  const loop = async (alone: boolean) => {
    while (!stop) {
      const item = alone ? deferred.shift() : next();
      if (!item) return;
      if (item.c.kind === "huge" && !alone && !o.replay) {
        deferred.push(item); // sent alone, once the other loops have ended
        continue;
      }
      inFlight.add(item.replay);
      try {
        await runOne(item.replay, item.c);
      } catch (err) {
        found(item.replay, item.c, `fuzzer: ${(err as Error).stack ?? String(err)}`);
      } finally {
        inFlight.delete(item.replay);
      }
      report.cases[item.c.kind]++;
      if (++sinceCheck >= 200) {
        sinceCheck = 0;
        checkAlive();
      }
    }
  };

  const timer = o.onProgress ? setInterval(() => o.onProgress!({ ...report, durationMs: performance.now() - started }), o.progressEveryMs ?? 5000) : undefined;
  try {
    await Promise.all(Array.from({ length: Math.max(1, o.concurrency) }, () => loop(false)));
    await loop(true);
    await o.nats.flush();
    checkAlive();
  } finally {
    if (timer) clearInterval(timer);
  }
  report.durationMs = performance.now() - started;
  return report;
}

/** The final table: cases per kind, answers per status code, findings, crashes, hangs. */
export function formatReport(r: Report): string {
  const lines: string[] = [];
  const row = (a: string, b: string | number) => lines.push(`  ${a.padEnd(28)} ${String(b).padStart(10)}`);
  lines.push("cases");
  for (const k of CASE_KINDS) row(k, r.cases[k]);
  row("total", CASE_KINDS.reduce((s, k) => s + r.cases[k], 0));
  lines.push("gRPC answers");
  for (const [code, n] of Object.entries(r.codes).sort((a, b) => b[1] - a[1])) row(code, n);
  lines.push("outcome");
  row("batches accepted", r.accepted.length);
  row("NATS refused before Shoal", r.natsRefused);
  row("findings", r.findings.length);
  row("hangs", r.hangs);
  row("crashes", r.crash ? 1 : 0);
  row("duration (s)", (r.durationMs / 1000).toFixed(1));
  row("cases/s", Math.round(CASE_KINDS.reduce((s, k) => s + r.cases[k], 0) / (r.durationMs / 1000)));
  lines.push("slowest answers");
  for (const x of r.slowest) row(`${x.replay} ${x.code}`, `${x.ms} ms, ${x.bytes} bytes`);
  if (r.crash) lines.push(`crash: ${r.crash}`);
  for (const f of r.findings.slice(0, 20)) lines.push(`finding at ${(f.atMs / 1000).toFixed(1)} s [${f.replay}] ${f.problem}\n    ${f.sample}`);
  if (r.findings.length > 20) lines.push(`… and ${r.findings.length - 20} more findings`);
  return lines.join("\n");
}
