// Request decoding that cannot fail the call with INTERNAL. grpc-js answers a request its
// deserializer throws on with INTERNAL "Error deserializing request" before any handler runs, so
// random bytes, truncated messages and params nested past the decoder's recursion limit (100
// message levels, about 32 levels of JSON in a Struct) would all look like server bugs. Here the
// deserializer never throws: a failure becomes a value the RPC edge answers with
// INVALID_ARGUMENT, naming the too-deep field's path where there is one.

import type { ServiceDefinition } from "@grpc/grpc-js";
import { errorMessage } from "../../shared/errors.js";
import { invalidArgument, type ServerError } from "../errors.js";
import { MAX_PARAM_DEPTH, tooDeepViolation, paramPath } from "../../shared/param-limits.js";

const FAILED = Symbol("request-decode-failure");

interface DecodeFailure {
  [FAILED]: ServerError;
}

/** The error to answer with when the request did not decode; undefined for a decoded request. */
export function decodeFailure(request: unknown): ServerError | undefined {
  return typeof request === "object" && request !== null && FAILED in request ? (request as DecodeFailure)[FAILED] : undefined;
}

/** The same service with deserializers that return a DecodeFailure instead of throwing. */
export function lenientService<T extends ServiceDefinition>(service: T): T {
  const out: Record<string, unknown> = {};
  for (const [name, method] of Object.entries(service)) {
    const typeName = method.path.split("/")[2] + "Request";
    const submits = method.path.endsWith("/SubmitBatch") || method.path.endsWith("/RunBatch");
    out[name] = {
      ...method,
      requestDeserialize: (buf: Buffer) => {
        try {
          return method.requestDeserialize(buf);
        } catch (err) {
          const deep = submits ? findTooDeepParam(buf) : undefined;
          const failure: DecodeFailure = {
            [FAILED]: deep
              ? invalidArgument([deep])
              : invalidArgument([`request: not a valid ${typeName} message (${errorMessage(err)})`], "the request could not be decoded"),
          };
          return failure;
        }
      },
    };
  }
  return out as T;
}

// --- A minimal protobuf wire walker over SubmitBatchRequest → Item → Struct/Value/ListValue,
// enough to name the first param nested deeper than the limit when the generated decoder gave
// up. It reads only lengths and keys; any malformed input ends the walk with no finding.

class Wire {
  pos: number;
  constructor(
    readonly buf: Uint8Array,
    start: number,
    readonly end: number,
  ) {
    this.pos = start;
  }
  get done(): boolean {
    return this.pos >= this.end;
  }
  varint(): number {
    let result = 0;
    let shift = 0;
    for (;;) {
      if (this.pos >= this.end || shift > 49) throw new RangeError("bad varint");
      const b = this.buf[this.pos++]!;
      result += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) return result;
      shift += 7;
    }
  }
  /** Reads a field key; returns [field number, wire type]. */
  key(): [number, number] {
    const k = this.varint();
    return [Math.floor(k / 8), k & 7];
  }
  /** Returns the [start, end) of a length-delimited field. */
  bytes(): [number, number] {
    const len = this.varint();
    const start = this.pos;
    if (start + len > this.end) throw new RangeError("truncated");
    this.pos += len;
    return [start, start + len];
  }
  skip(wireType: number): void {
    if (wireType === 0) this.varint();
    else if (wireType === 1) this.pos += 8;
    else if (wireType === 2) this.bytes();
    else if (wireType === 5) this.pos += 4;
    else throw new RangeError(`wire type ${wireType}`);
    if (this.pos > this.end) throw new RangeError("truncated");
  }
}

type Path = (string | number)[];

/** The violation for the first param nested deeper than MAX_PARAM_DEPTH, if any. */
export function findTooDeepParam(buf: Uint8Array): string | undefined {
  try {
    const req = new Wire(buf, 0, buf.length);
    let itemIndex = 0;
    while (!req.done) {
      const [field, wt] = req.key();
      if (field !== 1 || wt !== 2) {
        req.skip(wt);
        continue;
      }
      const [s, e] = req.bytes();
      const item = new Wire(buf, s, e);
      while (!item.done) {
        const [f, w] = item.key();
        if (f !== 2 || w !== 2) {
          item.skip(w);
          continue;
        }
        const [ps, pe] = item.bytes();
        const found = walkStruct(buf, ps, pe, [], 1);
        if (found) return tooDeepViolation(`items[${itemIndex}].${paramPath(found)}`);
      }
      itemIndex++;
    }
  } catch {
    /* malformed: nothing to name */
  }
  return undefined;
}

/** A Struct whose keys are at JSON depth `depth`; returns the path of the first too-deep value. */
function walkStruct(buf: Uint8Array, start: number, end: number, path: Path, depth: number): Path | undefined {
  const w = new Wire(buf, start, end);
  while (!w.done) {
    const [f, wt] = w.key();
    if (f !== 1 || wt !== 2) {
      w.skip(wt);
      continue;
    }
    const [es, ee] = w.bytes();
    const entry = new Wire(buf, es, ee);
    let key = "";
    let value: [number, number] | undefined;
    while (!entry.done) {
      const [ef, ewt] = entry.key();
      if (ef === 1 && ewt === 2) {
        const [ks, ke] = entry.bytes();
        key = Buffer.from(buf.subarray(ks, ke)).toString("utf8");
      } else if (ef === 2 && ewt === 2) value = entry.bytes();
      else entry.skip(ewt);
    }
    if (value) {
      const found = walkValue(buf, value[0], value[1], [...path, key], depth);
      if (found) return found;
    }
  }
  return undefined;
}

/** A Value at JSON depth `depth` (a scalar is depth 1 inside params). */
function walkValue(buf: Uint8Array, start: number, end: number, path: Path, depth: number): Path | undefined {
  if (depth > MAX_PARAM_DEPTH) return path;
  const w = new Wire(buf, start, end);
  while (!w.done) {
    const [f, wt] = w.key();
    if (wt === 2 && (f === 5 || f === 6)) {
      const [s, e] = w.bytes();
      if (f === 5) {
        const found = walkStruct(buf, s, e, path, depth + 1);
        if (found) return found;
      } else {
        const list = new Wire(buf, s, e);
        let i = 0;
        while (!list.done) {
          const [lf, lwt] = list.key();
          if (lf === 1 && lwt === 2) {
            const [vs, ve] = list.bytes();
            const found = walkValue(buf, vs, ve, [...path, i], depth + 1);
            if (found) return found;
            i++;
          } else list.skip(lwt);
        }
      }
    } else w.skip(wt);
  }
  return undefined;
}
