// The content policy's rules: the policy file (`--content-policy`, JSON) parsed and checked, and
// the matcher the coordinator runs on each item's screened text before the item is queued.
// Pure: no I/O, no logging (content-policy-stage.ts loads, reloads and applies it), so every
// rule of the file format is unit-tested here.
//
// File format (docs/content-policy.md):
//   {"rules": [{"name": "weapons", "reason": "weapons", "terms": ["pipe bomb"], "patterns": ["\\bgrenades?\\b"],
//               "tenants": ["acme"]}]}
// A term matches as whole words (not inside a longer word: "ass" does not match "class"), any
// run of whitespace in a term matching any run in the text; a pattern is a JavaScript regular
// expression. Both are case-insensitive, on NFKC-normalized text. A rule with `tenants` applies
// to those tenants only; without, to every tenant.

export interface PolicyRule {
  name: string;
  reason: string;
  terms: string[];
  patterns: string[];
  /** Undefined: every tenant. */
  tenants: string[] | undefined;
}

/** What matched: the rule (never the matched text) and the param it was found in. */
export interface PolicyMatch {
  rule: string;
  reason: string;
  param: string;
}

/** A policy file that cannot be used; each problem names the rule (by position and name). */
export class PolicyFileError extends Error {
  override readonly name = "PolicyFileError";
  readonly code = "CONTENT_POLICY_FILE_INVALID";
  constructor(
    readonly source: string,
    readonly problems: string[],
  ) {
    super(`${source}: ${problems.join("; ")}`);
  }
}

const RULE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const MAX_REASON = 200;
const MAX_TERM = 200;
const MAX_PATTERN = 1000;
const MAX_RULES = 10_000;
const RULE_KEYS = new Set(["name", "reason", "terms", "patterns", "tenants"]);
const FILE_KEYS = new Set(["rules"]);
/** A letter or digit: what a term may not continue into. */
const WORD_CHAR = "[\\p{L}\\p{N}\\p{M}]";

interface CompiledRule extends PolicyRule {
  /** Every term of the rule in one expression; undefined without terms. */
  termsRe: RegExp | undefined;
  patternsRe: RegExp[];
  tenantSet: Set<string> | undefined;
}

export class ContentPolicy {
  private constructor(private readonly compiled: CompiledRule[]) {}

  /** The policy that blocks nothing (no file given). */
  static readonly EMPTY = new ContentPolicy([]);

  /** Parses and checks a policy file's text; throws PolicyFileError listing every problem. */
  static parse(text: string, source: string): ContentPolicy {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (err) {
      throw new PolicyFileError(source, [`not valid JSON: ${(err as Error).message}`]);
    }
    const problems: string[] = [];
    const rules = checkFile(value, problems);
    if (problems.length > 0) throw new PolicyFileError(source, problems);
    return new ContentPolicy(rules);
  }

  get rules(): readonly PolicyRule[] {
    return this.compiled;
  }

  /**
   * The first rule (in file order) that matches any of the texts, for this tenant; undefined
   * when none does. `texts` are an item's screened params, by name.
   */
  match(tenant: string, texts: readonly { param: string; text: string }[]): PolicyMatch | undefined {
    if (this.compiled.length === 0 || texts.length === 0) return undefined;
    const normalized = texts.map((t) => ({ param: t.param, text: t.text.normalize("NFKC") }));
    for (const rule of this.compiled) {
      if (rule.tenantSet && !rule.tenantSet.has(tenant)) continue;
      for (const { param, text } of normalized) {
        if (rule.termsRe?.test(text) || rule.patternsRe.some((re) => re.test(text))) return { rule: rule.name, reason: rule.reason, param };
      }
    }
    return undefined;
  }
}

function checkFile(value: unknown, problems: string[]): CompiledRule[] {
  if (!isRecord(value)) {
    problems.push('must be a JSON object {"rules": [...]}');
    return [];
  }
  for (const key of Object.keys(value)) if (!FILE_KEYS.has(key)) problems.push(`${key}: unknown field (expected "rules")`);
  if (!Array.isArray(value.rules)) {
    problems.push("rules: must be an array of rules");
    return [];
  }
  if (value.rules.length > MAX_RULES) problems.push(`rules: at most ${MAX_RULES} rules (got ${value.rules.length})`);
  const seen = new Set<string>();
  const out: CompiledRule[] = [];
  value.rules.forEach((raw: unknown, i: number) => {
    const rule = checkRule(raw, i, problems);
    if (!rule) return;
    if (seen.has(rule.name)) problems.push(`${ruleLabel(i, rule.name)}.name: another rule has this name`);
    seen.add(rule.name);
    out.push(rule);
  });
  return out;
}

function checkRule(raw: unknown, i: number, problems: string[]): CompiledRule | undefined {
  if (!isRecord(raw)) {
    problems.push(`rules[${i}]: must be an object`);
    return undefined;
  }
  const name = typeof raw.name === "string" ? raw.name : "";
  const at = ruleLabel(i, name);
  const before = problems.length;
  if (!RULE_NAME.test(name)) problems.push(`${at}.name: required, 1-64 of A-Z a-z 0-9 . _ - (starting with a letter or digit)`);
  // A misspelt key ("pattern") would silently check nothing: refuse it.
  for (const key of Object.keys(raw)) if (!RULE_KEYS.has(key)) problems.push(`${at}.${key}: unknown field (expected one of ${[...RULE_KEYS].join(", ")})`);
  const reason = raw.reason;
  if (typeof reason !== "string" || reason.trim() === "" || reason.length > MAX_REASON) problems.push(`${at}.reason: required, a string of 1..${MAX_REASON} characters`);
  const listed = problems.length;
  const terms = stringList(raw.terms, `${at}.terms`, MAX_TERM, problems);
  const patterns = stringList(raw.patterns, `${at}.patterns`, MAX_PATTERN, problems);
  if (terms.length === 0 && patterns.length === 0 && problems.length === listed) problems.push(`${at}: needs at least one of terms or patterns`);
  let tenants: string[] | undefined;
  if (raw.tenants !== undefined) {
    tenants = stringList(raw.tenants, `${at}.tenants`, 256, problems);
    if (Array.isArray(raw.tenants) && raw.tenants.length === 0) problems.push(`${at}.tenants: leave it out to apply the rule to every tenant; an empty list would apply it to none`);
  }
  const patternsRe: RegExp[] = [];
  patterns.forEach((p, k) => {
    try {
      patternsRe.push(new RegExp(p, "iu"));
    } catch (err) {
      problems.push(`${at}.patterns[${k}]: invalid regular expression: ${(err as Error).message.replace(/^Invalid regular expression: /, "")}`);
    }
  });
  if (problems.length > before) return undefined;
  const termsRe = terms.length > 0 ? new RegExp(`(?<!${WORD_CHAR})(?:${terms.map(termSource).join("|")})(?!${WORD_CHAR})`, "iu") : undefined;
  return { name, reason: (reason as string).trim(), terms, patterns, tenants, termsRe, patternsRe, tenantSet: tenants ? new Set(tenants) : undefined };
}

/** A term as a regular expression: literal characters, any whitespace run for a space. */
function termSource(term: string): string {
  return term
    .normalize("NFKC")
    .trim()
    .split(/\s+/u)
    .map((w) => w.replace(/[\\^$.*+?()[\]{}|/]/g, "\\$&"))
    .join("\\s+");
}

function stringList(v: unknown, at: string, maxLength: number, problems: string[]): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) {
    problems.push(`${at}: must be an array of strings`);
    return [];
  }
  const out: string[] = [];
  v.forEach((s, k) => {
    if (typeof s !== "string" || s.trim() === "" || s.length > maxLength) problems.push(`${at}[${k}]: must be a non-empty string of at most ${maxLength} characters`);
    else out.push(s);
  });
  return out;
}

/** How a problem names its rule: by position, and by name where it has one. */
function ruleLabel(i: number, name: string): string {
  return name ? `rules[${i}] (${JSON.stringify(name.slice(0, 64))})` : `rules[${i}]`;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
