import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ContentPolicy, PolicyFileError } from "../../coordinator/content-policy.js";
import { ContentPolicyStage } from "../../coordinator/content-policy-stage.js";
import { IMAGEGEN_TINY } from "../../shared/builtin-models.js";
import { ConfigError } from "../../shared/errors.js";
import { createLogger } from "../../shared/logger.js";
import { checkManifest, screenedTexts } from "../../shared/manifest.js";

const policy = (rules: unknown[]) => ContentPolicy.parse(JSON.stringify({ rules }), "policy.json");
const one = (text: string, param = "prompt") => [{ param, text }];

function problemsOf(value: unknown): string[] {
  try {
    ContentPolicy.parse(typeof value === "string" ? value : JSON.stringify(value), "p.json");
  } catch (err) {
    assert.ok(err instanceof PolicyFileError, String(err));
    return err.problems;
  }
  assert.fail("the policy was accepted");
}

test("content policy - terms match whole words, case-insensitively, across any whitespace", () => {
  const p = policy([{ name: "weapons", reason: "weapons are not allowed", terms: ["pipe bomb", "Grenade"] }]);
  assert.deepEqual(p.match("", one("How to build a PIPE   BOMB at home")), { rule: "weapons", reason: "weapons are not allowed", param: "prompt" });
  assert.equal(p.match("", one("a grenade launcher"))?.rule, "weapons");
  assert.equal(p.match("", one("GRENADE"))?.rule, "weapons");
  assert.equal(p.match("", one("pipe\nbomb"))?.rule, "weapons");
  // Not inside longer words: no Scunthorpe problem.
  assert.equal(p.match("", one("grenades")), undefined);
  assert.equal(p.match("", one("pipebomb")), undefined);
  assert.equal(p.match("", one("a pipe, a bomber jacket")), undefined);
  assert.equal(p.match("", one("a lighthouse at dusk")), undefined);
});

test("content policy - terms are literal text, not regular expressions; text is NFKC-normalized", () => {
  const p = policy([{ name: "lit", reason: "r", terms: ["c++ (v2)", "a.b"] }]);
  assert.equal(p.match("", one("learn c++ (v2) today"))?.rule, "lit");
  assert.equal(p.match("", one("axb")), undefined, "the dot is literal");
  assert.equal(p.match("", one("a.b"))?.rule, "lit");
  // Fullwidth letters are the same word after NFKC.
  const q = policy([{ name: "w", reason: "r", terms: ["bomb"] }]);
  assert.equal(q.match("", one("ｂｏｍｂ"))?.rule, "w");
  assert.equal(q.match("", one("Bombe")), undefined);
  // Unicode letters count as word characters: "bombé" is another word.
  assert.equal(q.match("", one("bombé")), undefined);
});

test("content policy - patterns are case-insensitive regular expressions", () => {
  const p = policy([{ name: "card", reason: "looks like a payment card number", patterns: ["\\b(?:\\d[ -]?){13,16}\\b", "^secret:"] }]);
  assert.equal(p.match("", one("card 4111 1111 1111 1111 please"))?.rule, "card");
  assert.equal(p.match("", one("SECRET: x"))?.rule, "card");
  assert.equal(p.match("", one("call 555-1234")), undefined);
});

test("content policy - the first matching rule in file order wins; every screened param is checked", () => {
  const p = policy([
    { name: "first", reason: "one", terms: ["alpha"] },
    { name: "second", reason: "two", terms: ["alpha", "beta"] },
  ]);
  assert.equal(p.match("", one("alpha beta"))?.rule, "first");
  assert.deepEqual(p.match("", [{ param: "prompt", text: "fine" }, { param: "style", text: "beta" }]), { rule: "second", reason: "two", param: "style" });
});

test("content policy - a rule with tenants applies to those tenants only", () => {
  const p = policy([
    { name: "acme-only", reason: "a competitor", terms: ["globex"], tenants: ["acme"] },
    { name: "everyone", reason: "r", terms: ["forbidden"] },
  ]);
  assert.equal(p.match("acme", one("globex logo"))?.rule, "acme-only");
  assert.equal(p.match("initech", one("globex logo")), undefined);
  assert.equal(p.match("", one("globex logo")), undefined, "no API keys: tenant \"\" gets only the rules for every tenant");
  assert.equal(p.match("initech", one("forbidden"))?.rule, "everyone");
});

test("content policy - the example policy file is valid and does what its rules say", () => {
  const p = ContentPolicy.parse(readFileSync(new URL("../../../examples/content-policy.json", import.meta.url), "utf8"), "examples/content-policy.json");
  assert.equal(p.match("", one("a Molotov  cocktail on a table"))?.rule, "weapons");
  assert.equal(p.match("", one("card 4111 1111 1111 1111"))?.rule, "payment-card-numbers");
  assert.equal(p.match("acme", one("a Globex mug"))?.rule, "acme-competitor-brands");
  assert.equal(p.match("other", one("a Globex mug")), undefined);
  assert.equal(p.match("acme", one("a lighthouse at dusk")), undefined);
});

test("content policy - an empty rule list blocks nothing", () => {
  assert.equal(policy([]).match("", one("anything at all")), undefined);
  assert.equal(ContentPolicy.EMPTY.match("", one("anything")), undefined);
});

test("content policy file - a bad regular expression is refused, naming the rule", () => {
  const problems = problemsOf({ rules: [{ name: "ok", reason: "r", terms: ["x"] }, { name: "card", reason: "r", patterns: ["fine", "(unclosed"] }] });
  assert.equal(problems.length, 1, problems.join("\n"));
  assert.match(problems[0]!, /^rules\[1\] \("card"\)\.patterns\[1\]: invalid regular expression: /);
});

test("content policy file - every problem is reported, each at its path", () => {
  const problems = problemsOf({
    rules: [
      { name: "", reason: "r", terms: ["x"] },
      { name: "no-reason", terms: ["x"] },
      { name: "nothing", reason: "r" },
      { name: "typo", reason: "r", pattern: ["x"] },
      { name: "bad-lists", reason: "r", terms: "x", patterns: [""], tenants: [] },
      { name: "dup", reason: "r", terms: ["x"] },
      { name: "dup", reason: "r", terms: ["y"] },
      "a string",
    ],
    extra: true,
  });
  const expect = [
    "extra: unknown field",
    "rules[0].name: required",
    'rules[1] ("no-reason").reason: required',
    'rules[2] ("nothing"): needs at least one of terms or patterns',
    'rules[3] ("typo").pattern: unknown field',
    'rules[4] ("bad-lists").terms: must be an array of strings',
    'rules[4] ("bad-lists").patterns[0]: must be a non-empty string',
    'rules[4] ("bad-lists").tenants: leave it out',
    'rules[6] ("dup").name: another rule has this name',
    "rules[7]: must be an object",
  ];
  for (const e of expect) assert.ok(problems.some((p) => p.startsWith(e)), `missing "${e}" in:\n${problems.join("\n")}`);
  assert.deepEqual(problemsOf("{not json"), [problemsOf("{not json")[0]!]);
  assert.match(problemsOf("{not json")[0]!, /^not valid JSON/);
  assert.deepEqual(problemsOf([]), ['must be a JSON object {"rules": [...]}']);
  assert.deepEqual(problemsOf({}), ["rules: must be an array of rules"]);
});

test("content policy - imagegen-tiny screens its prompt and style; other params are not text to screen", () => {
  assert.deepEqual(IMAGEGEN_TINY.screened_params, ["prompt", "style"]);
  assert.deepEqual(screenedTexts(IMAGEGEN_TINY.screened_params, { prompt: "a cat", width: 256, style: "noir" }), [
    { param: "prompt", text: "a cat" },
    { param: "style", text: "noir" },
  ]);
  assert.deepEqual(screenedTexts(undefined, { prompt: "a cat" }), [], "a model without screened_params is not screened");
  assert.deepEqual(checkManifest({ ...IMAGEGEN_TINY, screened_params: ["width", "nope"] }), [
    'screened_params[0]: "width" has type integer; only string params hold text to screen',
    'screened_params[1]: "nope" is not a declared param',
  ]);
});

test("content policy stage - refuses a bad file at start with a ConfigError naming the option and the rule; SIGHUP reload keeps the old policy on a bad file", () => {
  const dir = mkdtempSync(join(tmpdir(), "shoal-policy-"));
  try {
    const file = join(dir, "policy.json");
    const log = createLogger({ level: "silent", format: "json", component: "test" });
    writeFileSync(file, JSON.stringify({ rules: [{ name: "bad-re", reason: "r", patterns: ["[z-a]"] }] }));
    assert.throws(
      () => new ContentPolicyStage(file, log),
      (e: unknown) => e instanceof ConfigError && /^--content-policy: .*rules\[0\] \("bad-re"\)\.patterns\[0\]: invalid regular expression/.test(e.message),
    );
    assert.throws(() => new ContentPolicyStage(join(dir, "missing.json"), log), (e: unknown) => e instanceof ConfigError && /cannot be read/.test(e.message));

    const loads: string[] = [];
    writeFileSync(file, JSON.stringify({ rules: [{ name: "v1", reason: "first", terms: ["apple"] }] }));
    const stage = new ContentPolicyStage(file, log, (rules, outcome) => loads.push(`${outcome}:${rules}`));
    const items = [{ model: IMAGEGEN_TINY, params: { prompt: "an apple" } }, { model: IMAGEGEN_TINY, params: { prompt: "a pear", style: "apple" } }, { model: IMAGEGEN_TINY, params: { prompt: "a plum" } }];
    assert.deepEqual(stage.screen("", items), [
      { index: 0, rule: "v1", message: "blocked by the content policy: first (rule v1, params.prompt)" },
      { index: 1, rule: "v1", message: "blocked by the content policy: first (rule v1, params.style)" },
    ]);
    writeFileSync(file, "{ broken");
    assert.equal(stage.reload(), false);
    assert.equal(stage.screen("", items).length, 2, "the previous policy stays in force");
    writeFileSync(file, JSON.stringify({ rules: [{ name: "v2", reason: "second", terms: ["plum"] }] }));
    assert.equal(stage.reload(), true);
    assert.deepEqual(stage.screen("", items).map((b) => [b.index, b.rule]), [[2, "v2"]]);
    assert.deepEqual(loads, ["loaded:1", "refused:1", "loaded:1"]);
    assert.deepEqual(new ContentPolicyStage(undefined, log).screen("", items), [], "no file: nothing is screened");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
