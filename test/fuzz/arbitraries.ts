// fast-check generators of everything a hostile or broken client can send Shoal: SubmitBatch
// requests with arbitrary unicode, sizes and nesting; raw bytes and malformed protobuf for every
// gRPC method; metadata; and garbage or absurd wire messages for every NATS subject the
// coordinator and a worker listen on. Mostly invalid on purpose, with a trickle of valid, cheap
// imagegen-tiny items (64×64, one step) so the accepting paths run too.

import fc from "fast-check";
import { ItemStatus, type Item, type SubmitBatchRequest, type Webhook } from "../../proto/gen/shoal/v1/shoal.js";
import {
  Assignment,
  CancelItems,
  EvictRequest,
  Heartbeat,
  ModelRegistration,
  ResultLogEntry,
  type GpuStatus,
  type ItemOutcome,
  type LeaseRef,
} from "../../proto/gen/shoal/v1/wire.js";
import { IMAGEGEN_TINY } from "../../shared/builtin-models.js";
import * as pb from "./raw-protobuf.js";

// ---------------------------------------------------------------------------------------------
// Strings

const SPECIALS = [
  "\0", "\n", "\r", "\r\n", "\t", "\u2028", "\u2029", "\uFEFF", "\u202E", "\u200D", "\uFFFD", "\uFFFF",
  "\u{10FFFF}", "\u{1F600}", "\u{1F468}\u200D\u{1F469}", "é", "e\u0301", "İ", "ß", "ﬃ", "\\", '"', "'", "%", "%s", "%n",
  "${x}", "{{x}}", "../", "<", ">", "&", ".", "*", " ", "\x7f", "\x1b[31m", "__proto__", "constructor", "toString",
];

/**
 * One character, weighted towards the ones that break things: surrogate halves, NUL, controls,
 * line ends. Drawn from integers: fast-check's own unicode units never yield a lone surrogate,
 * and their reverse mappings (a million entries) cost seconds per run.
 */
export const nastyChar: fc.Arbitrary<string> = fc.oneof(
  { weight: 5, arbitrary: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)) },
  { weight: 3, arbitrary: fc.integer({ min: 0, max: 0x10ffff }).map((c) => String.fromCodePoint(c)) },
  { weight: 1, arbitrary: fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c)) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 0x1f }).map((c) => String.fromCharCode(c)) },
  { weight: 2, arbitrary: fc.constantFrom(...SPECIALS) },
);

export function nastyString(maxLength = 40, minLength = 0): fc.Arbitrary<string> {
  return fc.string({ unit: nastyChar, minLength, maxLength });
}

/**
 * A long string: a short nasty seed repeated, so a megabyte costs no more to generate than a
 * few characters. Cut at an arbitrary UTF-16 unit, which may split a surrogate pair.
 */
export function longString(min: number, max: number | fc.Arbitrary<number>): fc.Arbitrary<string> {
  return fc
    .tuple(nastyString(8, 1), typeof max === "number" ? fc.integer({ min, max }) : max)
    .map(([seed, n]) => seed.repeat(Math.ceil(n / seed.length)).slice(0, n));
}

/** Sizes of one generated request's strings and params. */
interface Profile {
  str: fc.Arbitrary<string>;
  key: fc.Arbitrary<string>;
  width: number;
  depth: "xsmall" | "small" | "medium";
}

const SMALL: Profile = { str: nastyString(40), key: nastyString(12), width: 4, depth: "small" };

/** Lengths spread evenly over powers of two (1 KiB .. `max`), so most big strings are not huge. */
function bigLength(maxLog2: number): fc.Arbitrary<number> {
  return fc.tuple(fc.integer({ min: 10, max: maxLog2 }), fc.double({ min: 0, max: 1, noNaN: true })).map(([e, f]) => Math.floor(2 ** (e + f)));
}

// ---------------------------------------------------------------------------------------------
// google.protobuf.Struct values (item params)

const number = fc.oneof(
  fc.integer(),
  fc.double(), // includes NaN, ±Infinity and -0: a double field carries them all
  fc.constantFrom(64, 1024, 2 ** 53, -(2 ** 53), 2 ** 64, 1e308, 5e-324, 0.5, 63.99999999999999),
);

function jsonValue(p: Profile): fc.Arbitrary<unknown> {
  const leaf = fc.oneof(fc.constant(null), fc.boolean(), number, p.str);
  return fc.letrec((tie) => ({
    value: fc.oneof({ depthSize: p.depth, withCrossShrink: true }, leaf, tie("list"), tie("struct")),
    list: fc.array(tie("value"), { maxLength: p.width }),
    struct: fc.dictionary(p.key, tie("value"), { maxKeys: p.width }),
  })).value;
}

/**
 * A value nested `depth` levels deep, built in a loop. Around 30 levels the generated decoder's
 * recursion limit is reached (100 message levels, three per Struct level), so depths on both
 * sides of it are drawn.
 */
export function deepValue(minDepth: number, maxDepth: number): fc.Arbitrary<unknown> {
  return fc
    .tuple(fc.integer({ min: minDepth, max: maxDepth }), fc.array(fc.boolean(), { minLength: 1, maxLength: 4 }), fc.oneof(number, nastyString(8), fc.constant(null)))
    .map(([depth, shape, leaf]) => {
      let v: unknown = leaf;
      for (let i = 0; i < depth; i++) v = shape[i % shape.length] ? [v] : { k: v };
      return v;
    });
}

/** Wide: thousands of keys or a long list of numbers. */
const wideValue = fc.oneof(
  fc.integer({ min: 500, max: 5000 }).map((n) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, i]))),
  fc.integer({ min: 1000, max: 20_000 }).map((n) => Array.from({ length: n }, (_, i) => i * 0.5)),
);

// ---------------------------------------------------------------------------------------------
// Items and requests

/** The only items that should run: imagegen-tiny at its cheapest (64×64, one step). */
export const validItem: fc.Arbitrary<Item> = fc
  .record(
    {
      prompt: nastyString(60, 1),
      seed: fc.integer({ min: 0, max: 2 ** 32 - 1 }),
      guidance_scale: fc.double({ min: 0, max: 20, noNaN: true }),
      style: nastyString(20, 1),
    },
    { requiredKeys: ["prompt"] },
  )
  .map((p) => ({ model: IMAGEGEN_TINY.name, params: { ...p, width: 64, height: 64, steps: 1 } }));

const PARAM_NAMES = Object.keys(IMAGEGEN_TINY.params);

function invalidItem(p: Profile): fc.Arbitrary<Item> {
  const anyValue = fc.oneof({ weight: 8, arbitrary: jsonValue(p) }, { weight: 1, arbitrary: deepValue(2, 60) });
  return fc.oneof(
    // A valid item with one param replaced by anything (often still valid: a width of 64).
    fc.tuple(validItem, fc.oneof(fc.constantFrom(...PARAM_NAMES), p.key), anyValue).map(([item, k, v]) => ({ ...item, params: { ...item.params, [k]: v } })),
    fc.record({ model: fc.oneof(p.str, fc.constantFrom("", IMAGEGEN_TINY.name, "IMAGEGEN-TINY", "imagegen-tiny\0", " imagegen-tiny")), params: fc.option(fc.dictionary(p.key, anyValue, { maxKeys: p.width }), { nil: undefined }) }),
    fc.record({ model: fc.constant(IMAGEGEN_TINY.name), params: fc.record({ prompt: fc.oneof(p.str, longString(1990, 2010)), width: number, height: number, steps: number }, { requiredKeys: [] }) }),
  ) as fc.Arbitrary<Item>;
}

const LABEL_KEY = fc.stringMatching(/^[a-zA-Z0-9_.\/-]{1,63}$/);

function webhook(p: Profile): fc.Arbitrary<Webhook | undefined> {
  // Valid URLs point at the discard port of this host: the fuzzer must not post to the world.
  const url = fc.oneof(
    p.str,
    fc.constantFrom("http://127.0.0.1:9/hook", "https://127.0.0.1:9/h?x=1", "ftp://127.0.0.1/x", "javascript:alert(1)", "http://", "http://[::1", "file:///etc/passwd"),
    fc.webPath().map((path) => `http://127.0.0.1:9${path}`),
  );
  const event = fc.oneof(fc.constantFrom("batch.completed", "batch.failed", "batch.cancelled"), p.str);
  const secret = fc.oneof(p.str, fc.base64String({ minLength: 16, maxLength: 64 }).map((s) => `whsec_${s}`));
  return fc.option(fc.record({ url, events: fc.array(event, { maxLength: 5 }), secret }), { nil: undefined, freq: 2 });
}

function request(p: Profile, item: fc.Arbitrary<Item>): fc.Arbitrary<SubmitBatchRequest> {
  const items = fc.oneof(
    { weight: 20, arbitrary: fc.array(fc.oneof({ weight: 1, arbitrary: validItem }, { weight: 4, arbitrary: item }), { maxLength: 4 }) },
    { weight: 4, arbitrary: fc.array(validItem, { minLength: 1, maxLength: 3 }) },
    { weight: 1, arbitrary: fc.constant([] as Item[]) },
    // Around the 50-item limit (RESOURCE_EXHAUSTED above it); items are invalid so none run.
    { weight: 1, arbitrary: fc.integer({ min: 48, max: 200 }).map((n) => Array.from({ length: n }, () => ({ model: "no-such-model", params: {} }))) },
  );
  return fc.record({
    items,
    idempotencyKey: fc.oneof({ weight: 3, arbitrary: fc.constant("") }, { weight: 2, arbitrary: p.str }, { weight: 1, arbitrary: longString(250, 300) }),
    webhook: webhook(p),
    priority: fc.oneof({ weight: 3, arbitrary: fc.integer({ min: -100, max: 100 }) }, { weight: 1, arbitrary: fc.integer() }),
    labels: fc.oneof(
      { weight: 3, arbitrary: fc.constant({}) },
      { weight: 2, arbitrary: fc.dictionary(LABEL_KEY, nastyString(20), { maxKeys: 4 }) },
      { weight: 1, arbitrary: fc.dictionary(p.key, p.str, { maxKeys: 40 }) },
    ),
  });
}

/** Where a big string goes in an otherwise small request. */
const BIG_PLACES = ["model", "paramKey", "paramValue", "prompt", "labelKey", "labelValue", "idempotencyKey", "webhookUrl", "webhookSecret", "webhookEvent"] as const;

/** One field of the request replaced by a long string: sizes grow one field at a time. */
function withBigString(base: fc.Arbitrary<SubmitBatchRequest>, length: fc.Arbitrary<number>): fc.Arbitrary<SubmitBatchRequest> {
  return fc.tuple(base, longString(1, length), fc.constantFrom(...BIG_PLACES)).map(([r, big, place]) => {
    const req: SubmitBatchRequest = { ...r, items: r.items.length > 0 ? [...r.items] : [{ model: IMAGEGEN_TINY.name, params: { prompt: "p" } }], labels: { ...r.labels } };
    const item = { ...req.items[0]!, params: { ...req.items[0]!.params } };
    req.items[0] = item;
    const webhook = { url: "http://127.0.0.1:9/h", events: [], secret: "", ...req.webhook };
    if (place === "model") item.model = big;
    else if (place === "paramKey") item.params![big] = 1;
    else if (place === "paramValue") item.params!.style = big;
    else if (place === "prompt") item.params!.prompt = big;
    else if (place === "labelKey") req.labels[big] = "v";
    else if (place === "labelValue") req.labels.big = big;
    else if (place === "idempotencyKey") req.idempotencyKey = big;
    else if (place === "webhookUrl") req.webhook = { ...webhook, url: big };
    else if (place === "webhookSecret") req.webhook = { ...webhook, secret: big };
    else req.webhook = { ...webhook, events: [big] };
    return req;
  });
}

const smallRequest = request(SMALL, invalidItem(SMALL));

/**
 * SubmitBatch requests: mostly invalid and small; some with a big string (1 Ki..128 Ki
 * characters), deep or wide params; some valid. Megabytes are `hugeRequest`'s.
 */
export const submitRequest: fc.Arbitrary<SubmitBatchRequest> = fc.oneof(
  { weight: 900, arbitrary: smallRequest },
  { weight: 40, arbitrary: withBigString(smallRequest, bigLength(17)) },
  {
    weight: 40,
    arbitrary: request(
      SMALL,
      fc.record({ model: fc.constant(IMAGEGEN_TINY.name), params: fc.tuple(fc.constantFrom(...PARAM_NAMES, "deep"), fc.oneof(deepValue(20, 60), deepValue(100, 400))).map(([k, v]) => ({ prompt: "p", [k]: v })) }),
    ),
  },
  { weight: 20, arbitrary: request(SMALL, fc.record({ model: fc.constant(IMAGEGEN_TINY.name), params: wideValue.map((v) => (Array.isArray(v) ? { prompt: "p", width: v } : { prompt: "p", ...v })) })) },
);

/**
 * Requests of megabytes (1 to 8 Mi characters in one field, up to 32 MB of UTF-8): a kind of
 * their own, because each costs every process real time; the CI run sends a few, nights more.
 */
export const hugeRequest: fc.Arbitrary<SubmitBatchRequest> = withBigString(smallRequest, fc.integer({ min: 2 ** 20, max: 2 ** 23 }));

// ---------------------------------------------------------------------------------------------
// Raw bytes for gRPC methods

export const GRPC_METHODS = [
  { service: "shoal.v1.BatchService", name: "SubmitBatch", stream: false },
  { service: "shoal.v1.BatchService", name: "RunBatch", stream: false },
  { service: "shoal.v1.BatchService", name: "GetBatch", stream: false },
  { service: "shoal.v1.BatchService", name: "WatchBatch", stream: true },
  { service: "shoal.v1.BatchService", name: "CancelBatch", stream: false },
  { service: "shoal.v1.BatchService", name: "RetryBatch", stream: false },
  { service: "shoal.v1.BatchService", name: "ListBatches", stream: false },
  { service: "shoal.v1.BatchService", name: "GetArtifact", stream: true },
  { service: "shoal.v1.FleetService", name: "ListWorkers", stream: false },
  { service: "shoal.v1.FleetService", name: "DrainWorker", stream: false },
  { service: "shoal.v1.FleetService", name: "ListModels", stream: false },
] as const;

export type GrpcMethodName = (typeof GRPC_METHODS)[number]["name"];

const bytes = (maxLength: number) => fc.uint8Array({ maxLength });

/**
 * Many random bytes: fast-check draws a uint8Array element by element (milliseconds for 64 KiB),
 * so long ones come from a seeded xorshift instead; still reproducible from the case's seed.
 */
function bulkBytes(maxLength: number): fc.Arbitrary<Uint8Array> {
  return fc.tuple(fc.integer(), fc.nat({ max: maxLength })).map(([seed, n]) => {
    const out = new Uint8Array(n);
    let x = seed | 1;
    for (let i = 0; i < n; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      out[i] = x & 0xff;
    }
    return out;
  });
}

/** Byte-level damage to an encoding: flips, cuts, inserts and copies. */
function mutate(base: fc.Arbitrary<Uint8Array>): fc.Arbitrary<Uint8Array> {
  const op = fc.oneof(
    fc.record({ op: fc.constant("flip" as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
    fc.record({ op: fc.constant("cut" as const), at: fc.nat() }),
    fc.record({ op: fc.constant("insert" as const), at: fc.nat(), data: bytes(16) }),
    fc.record({ op: fc.constant("set" as const), at: fc.nat(), value: fc.constantFrom(0x00, 0x7f, 0x80, 0xff, 0x0a, 0x12, 0x1a, 0x22) }),
    fc.record({ op: fc.constant("copy" as const), from: fc.nat(), to: fc.nat(), len: fc.integer({ min: 1, max: 64 }) }),
  );
  return fc.tuple(base, fc.array(op, { minLength: 1, maxLength: 4 })).map(([b, ops]) => {
    let out: Uint8Array = Uint8Array.from(b);
    for (const o of ops) {
      const n = out.length;
      if (o.op === "flip" && n > 0) out[o.at % n]! ^= 1 << o.bit;
      else if (o.op === "cut") out = out.slice(0, n === 0 ? 0 : o.at % n);
      else if (o.op === "insert") out = pb.concat([out.slice(0, o.at % (n + 1)), o.data, out.slice(o.at % (n + 1))]);
      else if (o.op === "set" && n > 0) out[o.at % n] = o.value;
      else if (o.op === "copy" && n > 0) {
        const from = o.from % n;
        out = pb.concat([out.slice(0, o.to % (n + 1)), out.slice(from, from + o.len), out.slice(o.to % (n + 1))]);
      }
    }
    return out;
  });
}

const utf8 = (s: string) => new TextEncoder().encode(s);
/** Bytes that are not UTF-8: lone continuation bytes, overlong forms, encoded surrogates. */
const badUtf8 = fc.oneof(
  bytes(40),
  fc.constantFrom(Uint8Array.of(0x80), Uint8Array.of(0xc0, 0xaf), Uint8Array.of(0xed, 0xa0, 0x80), Uint8Array.of(0xf4, 0x90, 0x80, 0x80), Uint8Array.of(0xff, 0xfe)),
  fc.tuple(nastyString(10), bytes(3), nastyString(10)).map(([a, b, c]) => pb.concat([utf8(a), b, utf8(c)])),
);

/** Hand-written protobuf that no generated encoder would produce. */
const craftedProtobuf: fc.Arbitrary<Uint8Array> = fc.oneof(
  // Params nested far past any sane depth, up to hundreds of thousands of levels.
  fc
    .tuple(fc.oneof(fc.integer({ min: 20, max: 200 }), fc.integer({ min: 1000, max: 20_000 })), fc.array(fc.constantFrom("struct" as const, "list" as const), { minLength: 1, maxLength: 3 }))
    .map(([depth, shape]) => pb.submitWithParam(utf8("imagegen-tiny"), utf8("prompt"), pb.nestedValue(depth, shape, pb.numberValue(1)))),
  // Strings that are not UTF-8 in the model name, a param key and a param value.
  fc.tuple(badUtf8, badUtf8, badUtf8).map(([m, k, v]) => pb.submitWithParam(m, k, pb.stringValue(v))),
  fc.tuple(badUtf8, badUtf8).map(([k, v]) => pb.submitWithParam(utf8("imagegen-tiny"), k, pb.stringValue(v))),
  // A string field whose length points past the end of the message.
  fc.tuple(fc.integer({ min: 1, max: 30 }), fc.constantFrom(2 ** 31 - 1, 2 ** 32 - 1, 2 ** 40, 100)).map(([f, len]) => pb.concat([pb.tag(f, pb.WIRE.LEN), pb.varint(len), utf8("short")])),
  // Known field numbers with the wrong wire type, groups, field number 0, overlong varints.
  fc.array(fc.tuple(fc.integer({ min: 0, max: 6 }), fc.integer({ min: 0, max: 7 }), bytes(12)), { maxLength: 8 }).map((fields) =>
    pb.concat(fields.map(([f, wt, b]) => pb.concat([pb.tag(f, wt), b]))),
  ),
  fc.tuple(fc.integer({ min: 1, max: 6 }), fc.integer({ min: 10, max: 20 })).map(([f, n]) => pb.concat([pb.tag(f, pb.WIRE.VARINT), pb.overlongVarint(1, n)])),
  fc.integer({ min: 1, max: 5000 }).map((n) => pb.concat([pb.repeat(pb.tag(1, pb.WIRE.SGROUP), n), pb.repeat(pb.tag(1, pb.WIRE.EGROUP), n)])),
  // A map entry with a key that names an Object.prototype member.
  fc.constantFrom("__proto__", "constructor", "toString", "hasOwnProperty", "valueOf").map((k) => pb.submitWithParam(utf8("imagegen-tiny"), utf8(k), pb.stringValue(utf8("x")))),
  // Many items, each tiny: a large repeated field.
  fc.integer({ min: 1000, max: 50_000 }).map((n) => pb.repeat(pb.lenField(1, pb.stringField(1, "m")), n)),
);

export interface RawCase {
  method: GrpcMethodName;
  bytes: Uint8Array;
}

export const rawCase: fc.Arbitrary<RawCase> = fc.record({
  method: fc.constantFrom(...GRPC_METHODS.map((m) => m.name)),
  bytes: fc.oneof(
    { weight: 4, arbitrary: bytes(64) },
    { weight: 2, arbitrary: bulkBytes(4096) },
    { weight: 4, arbitrary: craftedProtobuf },
    { weight: 4, arbitrary: mutate(fc.oneof(craftedProtobuf, bytes(64))) },
    // Short strings where the lookups expect ids, so the NOT_FOUND and argument paths run.
    { weight: 3, arbitrary: fc.oneof(nastyString(40), fc.constantFrom("", "b_", "b_00000000000000000000", "shoal://artifacts/", "shoal://artifacts/b_x/0/image", "worker")).map((s) => pb.stringField(1, s)) },
    { weight: 1, arbitrary: fc.tuple(fc.nat(), nastyString(40)).map(([n, s]) => pb.concat([pb.varintField(1, n), pb.stringField(2, s)])) },
  ),
});

// ---------------------------------------------------------------------------------------------
// Metadata

export interface MetadataCase {
  method: "ListModels" | "SubmitBatch";
  /** The value of `authorization`; undefined sends none; "$KEY" stands for the right key. */
  authorization: string | undefined;
  apiKeyHeader: string | undefined;
  extra: [string, string | Uint8Array][];
}

const HEADER_VALUE = fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), maxLength: 200 });
const HEADER_KEY = fc.stringMatching(/^[a-z0-9_.-]{1,30}$/).filter((k) => !k.startsWith("grpc-") && !k.endsWith("-bin") && k !== "authorization" && k !== "x-api-key" && k !== "te" && k !== "content-type" && k !== "user-agent");

export const metadataCase: fc.Arbitrary<MetadataCase> = fc.record({
  method: fc.constantFrom("ListModels" as const, "SubmitBatch" as const),
  authorization: fc.option(
    fc.oneof(
      fc.constantFrom("Bearer $KEY", "bearer $KEY", "BEARER $KEY", "Bearer  $KEY", "$KEY", "Bearer $KEY ", "Bearer", "Bearer ", "", "Basic Zm9vOmJhcg==", "Bearer $KEY$KEY"),
      HEADER_VALUE,
      HEADER_VALUE.map((v) => `Bearer ${v}`),
      fc.integer({ min: 1000, max: 6000 }).map((n) => `Bearer ${"k".repeat(n)}`),
    ),
    { nil: undefined },
  ),
  apiKeyHeader: fc.option(fc.oneof(fc.constant("$KEY"), HEADER_VALUE), { nil: undefined, freq: 3 }),
  extra: fc.array(
    fc.oneof(
      fc.tuple(HEADER_KEY, HEADER_VALUE) as fc.Arbitrary<[string, string | Uint8Array]>,
      fc.tuple(HEADER_KEY.map((k) => `${k}-bin`), bytes(200)) as fc.Arbitrary<[string, string | Uint8Array]>,
    ),
    { maxLength: 6 },
  ),
});

// ---------------------------------------------------------------------------------------------
// NATS

export type NatsTarget = "hb" | "hello" | "assign" | "cancel" | "drain" | "evict" | "results" | "models";

export interface NatsCase {
  target: NatsTarget;
  /**
   * The worker id (hb, assign, cancel, drain, evict), batch id (results) or model name (models) in the
   * subject or key; undefined means the real worker's id.
   */
  token: string | undefined;
  payload: Uint8Array;
  reply: boolean;
  headers: [string, string][];
  /** results only: a Nats-Msg-Id for JetStream's de-duplication. */
  msgId: string | undefined;
}

const u32 = fc.oneof(fc.constantFrom(0, 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1), fc.nat());
// forceLong=number: uint64 fields are JS numbers; the largest double below 2^64 still encodes.
const u64 = fc.oneof(fc.constantFrom(0, 1, 2 ** 53 - 1, 2 ** 53, 2 ** 63, 2 ** 64 - 2048), fc.nat(), fc.double({ min: 0, max: 2 ** 64 - 2048, noNaN: true }).map(Math.floor));
const batchIdLike = fc.oneof(fc.stringMatching(/^b_[0-9a-v]{20}$/), nastyString(30), fc.constant(""));
const leaseRef: fc.Arbitrary<LeaseRef> = fc.record({
  batchId: batchIdLike,
  index: u32,
  token: fc.oneof(fc.stringMatching(/^[0-9]{1,3}\.[0-9a-v]{6,12}$/), nastyString(80), fc.constant("")),
});
const gpu: fc.Arbitrary<GpuStatus> = fc.record({ index: u32, name: nastyString(20), vramTotalBytes: u64, vramFreeBytes: u64, source: fc.oneof(fc.constantFrom("budget", "nvidia-smi"), nastyString(10)) });
const workerIdLike = fc.oneof(fc.stringMatching(/^[A-Za-z0-9_-]{1,20}$/), nastyString(20));
/** A repeated field: a few entries, or thousands of copies of one (cheap to draw, costly to take). */
const repeated = <T>(a: fc.Arbitrary<T>) =>
  fc.oneof({ weight: 6, arbitrary: fc.array(a, { maxLength: 4 }) }, { weight: 1, arbitrary: fc.tuple(a, fc.integer({ min: 100, max: 5000 })).map(([x, n]) => Array.from({ length: n }, () => x)) });

const heartbeat = fc.record({
  workerId: workerIdLike,
  seq: u64,
  incarnation: fc.oneof(nastyString(12), fc.constant("")),
  state: fc.integer({ min: -1, max: 8 }),
  gpus: repeated(gpu),
  residentModels: fc.array(nastyString(20), { maxLength: 4 }),
  inFlight: repeated(leaseRef),
  itemsDone: u64,
  maxInFlight: u32,
  hostname: nastyString(30),
  models: fc.array(fc.oneof(fc.constant(IMAGEGEN_TINY.name), nastyString(20)), { maxLength: 4 }),
  heartbeatIntervalMs: u32,
});

const assignedItem = fc.record({
  lease: fc.option(leaseRef, { nil: undefined }),
  model: fc.oneof(fc.constant(IMAGEGEN_TINY.name), nastyString(20)),
  params: fc.oneof(validItem.map((i) => i.params), invalidItem(SMALL).map((i) => i.params)),
  // This version's form of the params (JSON bytes; empty: read params); valid, invalid, garbage.
  paramsJson: fc.oneof(
    fc.constant(Buffer.alloc(0)),
    fc.oneof(validItem.map((i) => i.params), invalidItem(SMALL).map((i) => i.params)).map((p) => Buffer.from(JSON.stringify(p ?? null))),
    bytes(64).map((b) => Buffer.from(b)),
  ),
  gpuIndex: fc.oneof(fc.constant(0), u32),
  vramBytes: u64,
  attempt: u32,
  timeoutMs: u64,
});

const itemOutcome: fc.Arbitrary<ItemOutcome> = fc.record({
  lease: fc.option(leaseRef, { nil: undefined }),
  status: fc.integer({ min: -1, max: 6 }) as fc.Arbitrary<ItemStatus>,
  error: fc.option(fc.record({ code: fc.oneof(fc.constantFrom("INVALID_PARAMS", "WORKER_LOST", "OUT_OF_MEMORY", "CANCELLED"), nastyString(20)), message: nastyString(60), retryable: fc.boolean() }), { nil: undefined }),
  artifacts: fc.array(fc.record({ name: nastyString(10), contentType: nastyString(10), sizeBytes: u64, sha256: fc.oneof(fc.stringMatching(/^[0-9a-f]{64}$/), nastyString(64)), uri: nastyString(60) }), { maxLength: 3 }),
  runMs: u64,
  vramUsedBytes: u64,
});

const resultEntry = fc.oneof(
  fc.record({ workerId: workerIdLike, outcomes: repeated(itemOutcome) }).map((results) => ({ entry: { $case: "results" as const, results } })),
  fc.record({ lease: fc.option(leaseRef, { nil: undefined }), reason: nastyString(40) }).map((revoked) => ({ entry: { $case: "revoked" as const, revoked } })),
  fc.constant({ entry: undefined }),
);

const manifestJson = fc.oneof(
  fc.json(),
  nastyString(40),
  fc.tuple(fc.stringMatching(/^[a-z0-9][a-z0-9._-]{0,20}$/), fc.dictionary(fc.constantFrom(...PARAM_NAMES, "x"), fc.record({ type: fc.oneof(fc.constantFrom("string", "integer", "number", "boolean", "tensor"), nastyString(8)), minimum: number, maximum: number, multipleOf: number }, { requiredKeys: ["type"] })), fc.record({ weights_bytes: number, activation_bytes: number, activation_bytes_per_pixel: number }, { requiredKeys: [] }))
    .map(([name, params, vram]) => JSON.stringify({ name, version: "1", params, vram }, (_k, v: unknown) => (typeof v === "number" && !Number.isFinite(v) ? String(v) : v))),
);

/** Encodes with the generated encoder; a value it refuses becomes random bytes instead. */
function encoded<T>(type: { encode(m: T): { finish(): Uint8Array }; fromPartial(o: any): T }, a: fc.Arbitrary<unknown>): fc.Arbitrary<Uint8Array> {
  return fc.tuple(a, bytes(32)).map(([v, fallback]) => {
    try {
      return type.encode(type.fromPartial(v)).finish();
    } catch {
      return fallback;
    }
  });
}

function payloadFor(target: NatsTarget): fc.Arbitrary<Uint8Array> {
  const wire: Record<NatsTarget, fc.Arbitrary<Uint8Array>> = {
    hb: encoded(Heartbeat, heartbeat),
    hello: bytes(64),
    assign: encoded(Assignment, fc.record({ items: repeated(assignedItem) })),
    cancel: encoded(CancelItems, fc.record({ leases: repeated(leaseRef) })),
    // An empty payload is the legitimate "drain" command (authorization is a later issue);
    // the worker must refuse everything else.
    drain: bytes(64).filter((b) => b.length > 0),
    evict: encoded(EvictRequest, fc.record({ gpuIndex: u32, models: fc.array(fc.oneof(nastyString(20), fc.constant(IMAGEGEN_TINY.name)), { maxLength: 70 }), reason: nastyString(80) })),
    results: encoded(ResultLogEntry, resultEntry),
    models: encoded(ModelRegistration, fc.record({ manifestJson, servedBy: fc.array(nastyString(10), { maxLength: 3 }) })),
  };
  let p = fc.oneof({ weight: 3, arbitrary: wire[target] }, { weight: 2, arbitrary: bytes(256) }, { weight: 2, arbitrary: mutate(wire[target]) }, { weight: 1, arbitrary: bulkBytes(64 * 1024) });
  if (target === "drain") p = p.filter((b) => b.length > 0);
  return p;
}

const natsToken = fc.stringMatching(/^[A-Za-z0-9_\-=+!@#$%^&()\[\]{}~]{1,24}$/);
const headerToken = fc.stringMatching(/^[A-Za-z][A-Za-z0-9-]{0,20}$/);
const kvKey = fc.stringMatching(/^[A-Za-z0-9_-]{1,30}$/);

function natsCaseFor(target: NatsTarget): fc.Arbitrary<NatsCase> {
  const token: fc.Arbitrary<string | undefined> =
    target === "results"
      ? fc.oneof(batchIdLike.filter((s) => /^[^\s.*>]+$/.test(s)), fc.tuple(natsToken, natsToken).map(([a, b]) => `${a}.${b}`))
      : target === "models"
        ? fc.oneof(kvKey, fc.constant(IMAGEGEN_TINY.name))
        : fc.option(natsToken, { nil: undefined, freq: 3 });
  return fc.record({
    target: fc.constant(target),
    token,
    payload: payloadFor(target),
    reply: fc.boolean(),
    headers: fc.array(fc.tuple(headerToken, HEADER_VALUE), { maxLength: 3 }),
    msgId: fc.option(fc.oneof(natsToken, HEADER_VALUE.filter((s) => s.trim() !== "")), { nil: undefined }),
  });
}

const NATS_WEIGHTS: Record<NatsTarget, number> = { hb: 2, hello: 1, assign: 2, cancel: 1, drain: 1, evict: 1, results: 2, models: 1 };

export const natsCase: fc.Arbitrary<NatsCase> = fc.oneof(
  ...Object.entries(NATS_WEIGHTS).map(([target, weight]) => ({ weight, arbitrary: natsCaseFor(target as NatsTarget) })),
);
