// A tiny hand-rolled protobuf writer for the fuzzer. The generated encoders only write what the
// schema allows; this one also writes what a hostile peer would: invalid UTF-8 in string fields,
// wrong wire types, lengths that point past the end, overlong varints, groups, and nesting far
// deeper than any encoder would recurse. Nesting is built inside-out in a loop, so the fuzzer
// itself never overflows its stack producing a message a million levels deep.

export const WIRE = { VARINT: 0, I64: 1, LEN: 2, SGROUP: 3, EGROUP: 4, I32: 5 } as const;

export function varint(n: number | bigint): Uint8Array {
  if (typeof n === "number" && Number.isSafeInteger(n) && n >= 0) {
    const out: number[] = [];
    while (n >= 0x80) {
      out.push((n % 0x80) | 0x80);
      n = Math.floor(n / 0x80);
    }
    out.push(n);
    return Uint8Array.from(out);
  }
  let v = BigInt.asUintN(64, BigInt(n));
  const out: number[] = [];
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) b |= 0x80;
    out.push(b);
  } while (v > 0n);
  return Uint8Array.from(out);
}

/** A varint padded with continuation bytes: legal up to 10 bytes, malformed beyond. */
export function overlongVarint(n: number, totalBytes: number): Uint8Array {
  const out = new Uint8Array(totalBytes);
  let v = n >>> 0;
  for (let i = 0; i < totalBytes; i++) {
    out[i] = (v & 0x7f) | (i < totalBytes - 1 ? 0x80 : 0);
    v >>>= 7;
  }
  return out;
}

export function tag(field: number, wireType: number): Uint8Array {
  return varint(field * 8 + wireType);
}

/** `bytes` written `n` times in one allocation. */
export function repeat(bytes: Uint8Array, n: number): Uint8Array {
  const out = new Uint8Array(bytes.length * n);
  for (let i = 0; i < n; i++) out.set(bytes, i * bytes.length);
  return out;
}

export function concat(parts: readonly Uint8Array[]): Uint8Array {
  let len = 0;
  for (const p of parts) len += p.length;
  const out = new Uint8Array(len);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function lenField(field: number, body: Uint8Array): Uint8Array {
  return concat([tag(field, WIRE.LEN), varint(body.length), body]);
}

export function stringField(field: number, text: string): Uint8Array {
  return lenField(field, new TextEncoder().encode(text));
}

export function varintField(field: number, n: number | bigint): Uint8Array {
  return concat([tag(field, WIRE.VARINT), varint(n)]);
}

export function doubleField(field: number, x: number): Uint8Array {
  const b = new Uint8Array(9);
  b.set(tag(field, WIRE.I64));
  new DataView(b.buffer).setFloat64(1, x, true);
  return b;
}

// google.protobuf.Struct { map<string, Value> fields = 1 }; a map entry is { key = 1; value = 2 }.
// Value { null_value = 1; number_value = 2; string_value = 3; bool_value = 4; struct_value = 5;
// list_value = 6 }; ListValue { repeated Value values = 1 }.

export function structEntry(key: Uint8Array, value: Uint8Array): Uint8Array {
  return lenField(1, concat([lenField(1, key), lenField(2, value)]));
}

export function numberValue(x: number): Uint8Array {
  return doubleField(2, x);
}

export function stringValue(bytes: Uint8Array): Uint8Array {
  return lenField(3, bytes);
}

/**
 * A Value nested `depth` levels deep (struct and list levels as `shape` says, cycling). Every
 * level only adds bytes in front of the one below (tags and lengths; a struct level also its
 * key), so the prefixes are computed from the inside out and joined once: linear in the depth,
 * where wrapping level by level would copy the message once per level.
 */
export function nestedValue(depth: number, shape: readonly ("struct" | "list")[], leaf: Uint8Array): Uint8Array {
  const key = lenField(1, new TextEncoder().encode("k"));
  const prefixes: Uint8Array[] = new Array(depth);
  let size = leaf.length;
  for (let i = depth - 1; i >= 0; i--) {
    const kind = shape.length > 0 ? shape[i % shape.length]! : "struct";
    let prefix: Uint8Array;
    if (kind === "struct") {
      // Value.struct_value(5) { Struct.fields(1) { entry.key(1) "k", entry.value(2) <inner> } }
      const entry = key.length + 1 + varint(size).length + size;
      const fields = 1 + varint(entry).length + entry;
      prefix = concat([tag(5, WIRE.LEN), varint(fields), tag(1, WIRE.LEN), varint(entry), key, tag(2, WIRE.LEN), varint(size)]);
    } else {
      // Value.list_value(6) { ListValue.values(1) <inner> }
      const list = 1 + varint(size).length + size;
      prefix = concat([tag(6, WIRE.LEN), varint(list), tag(1, WIRE.LEN), varint(size)]);
    }
    prefixes[i] = prefix;
    size += prefix.length;
  }
  return concat([...prefixes, leaf]);
}

/** A SubmitBatchRequest of one item whose params hold `value` under `key`, written by hand. */
export function submitWithParam(model: Uint8Array, key: Uint8Array, value: Uint8Array): Uint8Array {
  const params = structEntry(key, value);
  const item = concat([lenField(1, model), lenField(2, params)]);
  return lenField(1, item);
}
