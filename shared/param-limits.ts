// Shape limits on an item's params that hold for every model, checked before its manifest is:
// how deep values nest and how large they are. Manifests describe flat params (scalars and
// tensors as flat arrays), so these limits refuse only input no model reads, and they keep
// pathological requests (thousands of levels, megabytes of keys) from costing more than a
// refusal. Paths into params are written so any key, however odd, prints on one line.

/** Levels of nesting allowed inside an item's params: a scalar param is at level 1. */
export const MAX_PARAM_DEPTH = 16;
/** JSON size of one item's params. Tensor params of generic models fit comfortably. */
export const MAX_PARAMS_BYTES = 1024 * 1024;
/** Characters of a key or of an echoed value shown in an error message. */
const MAX_SHOWN = 64;

const IDENTIFIER = /^[A-Za-z_$][\w$]*$/;

/** Shows text from a request inside an error message: quoted, escaped, at most 64 chars. */
export function quoteInput(s: string): string {
  // Only the first code points are read: a refused field may be megabytes long.
  let shown = "";
  let n = 0;
  for (const ch of s) {
    if (n++ === MAX_SHOWN) {
      shown += "…";
      break;
    }
    shown += ch;
  }
  return JSON.stringify(shown);
}

/** `params.width`, `params.style.colors[2]`, `params["odd key\n"]`. */
export function paramPath(path: readonly (string | number)[]): string {
  let out = "params";
  for (const p of path) {
    if (typeof p === "number") out += `[${p}]`;
    else if (IDENTIFIER.test(p) && p.length <= MAX_SHOWN) out += `.${p}`;
    else out += `[${quoteInput(p)}]`;
  }
  return out;
}

export function tooDeepViolation(at: string): string {
  return `${at}: nested deeper than ${MAX_PARAM_DEPTH} levels`;
}

/**
 * Problems with the shape of `params` (from a decoded request), each as `<itemPath>.<param
 * path>: problem`; empty when the params are within limits.
 */
export function paramShapeProblems(itemPath: string, params: Record<string, unknown> | undefined): string[] {
  if (params === undefined) return [];
  const deep = firstTooDeep(params, [], 0);
  if (deep) return [tooDeepViolation(`${itemPath}.${paramPath(deep)}`)];
  const size = JSON.stringify(params).length;
  if (size > MAX_PARAMS_BYTES) return [`${itemPath}.params: ${size} bytes of params exceed the limit of ${MAX_PARAMS_BYTES}`];
  return [];
}

function firstTooDeep(value: unknown, path: (string | number)[], depth: number): (string | number)[] | undefined {
  if (depth > MAX_PARAM_DEPTH) return path;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const v = value[i];
      if (v !== null && typeof v === "object") {
        const found = firstTooDeep(v, [...path, i], depth + 1);
        if (found) return found;
      } else if (depth + 1 > MAX_PARAM_DEPTH) return [...path, i];
    }
    return undefined;
  }
  if (value !== null && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) {
      if (v !== null && typeof v === "object") {
        const found = firstTooDeep(v, [...path, k], depth + 1);
        if (found) return found;
      } else if (depth + 1 > MAX_PARAM_DEPTH) return [...path, k];
    }
  }
  return undefined;
}
