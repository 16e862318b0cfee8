// Runs the compiled test suites with node:test: unit tests and every integration file in
// parallel (each integration file starts its own nats-server on its own port).
//
//   node scripts/run-tests.mjs [substring ...]     every test file, or those whose path has one
//
// The run fails (exit 1) not only when a test fails but also when the suite did not really run:
// a test/**/*.test.ts without its compiled file (build first), a file that reported nothing or
// did not load, or a file in which no test ran. A file whose tests were all skipped fails in CI
// (CI set) and is listed as a warning elsewhere. Node's closing summary (ℹ tests / ℹ pass /
// ℹ fail ...) is printed as usual; these checks follow it.

import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(fileURLToPath(new URL("..", import.meta.url)));
const REPORTER = fileURLToPath(new URL("./test-files-reporter.mjs", import.meta.url));

/** Every file under `dir` (relative to ROOT) whose name ends with `suffix`. */
function walk(dir, suffix) {
  const abs = join(ROOT, dir);
  if (!existsSync(abs)) return [];
  return readdirSync(abs).flatMap((name) => {
    const rel = join(dir, name);
    if (statSync(join(ROOT, rel)).isDirectory()) return walk(rel, suffix);
    return name.endsWith(suffix) ? [rel] : [];
  });
}

/** node --test-timeout exists from 20.11 and 21.2. */
function hasTestTimeout() {
  const [major, minor] = process.versions.node.split(".").map(Number);
  return major > 21 || (major === 21 && minor >= 2) || (major === 20 && minor >= 11);
}

const compiledOf = (source) => join("dist", source.replace(/\.ts$/, ".js"));
const sourceOf = (compiled) => relative("dist", compiled).replace(/\.js$/, ".ts");

const only = process.argv.slice(2);
const matches = (path) => only.length === 0 || only.some((o) => path.includes(o));
const sources = walk("test", ".test.ts").sort();
const compiled = walk("dist/test", ".test.js").sort();
const problems = [];

// The sources define the suite; each must have been compiled.
const selected = [];
for (const source of sources) {
  const js = compiledOf(source);
  if (!matches(js) && !matches(source)) continue;
  if (existsSync(join(ROOT, js))) selected.push(js);
  else problems.push(`${source}: not compiled (no ${js}); run \`npm run build\``);
}
// A compiled test whose source is gone (renamed, deleted) is left over from an older build.
const stale = compiled.filter((js) => !sources.includes(sourceOf(js)) && matches(js));
if (stale.length > 0) {
  console.error(`run-tests: not running ${stale.length} compiled test file(s) without a source (an older build left them): ${stale.join(", ")}`);
}
if (selected.length === 0) {
  console.error(`run-tests: no test file${only.length ? ` matches ${only.map((o) => JSON.stringify(o)).join(", ")}` : " found under test/"}`);
  process.exit(1);
}

const concurrency = process.env.SHOAL_TEST_CONCURRENCY ?? "4";
const reportDir = mkdtempSync(join(tmpdir(), "shoal-run-tests-"));
const reportFile = join(reportDir, "files.json");
let status;
let files = {};
try {
  const r = spawnSync(
    process.execPath,
    [
      "--test",
      `--test-concurrency=${concurrency}`,
      // A backstop: calls in tests carry their own deadlines; no test may hang the run
      // (node >= 20.11 has the flag).
      ...(hasTestTimeout() ? [`--test-timeout=${process.env.SHOAL_TEST_TIMEOUT_MS ?? 900_000}`] : []),
      "--test-reporter=spec",
      "--test-reporter-destination=stdout",
      `--test-reporter=${REPORTER}`,
      `--test-reporter-destination=${reportFile}`,
      ...selected,
    ],
    { stdio: "inherit", cwd: ROOT },
  );
  status = r.status ?? 1;
  if (r.error) problems.push(`node --test did not run: ${r.error.message}`);
  try {
    files = JSON.parse(readFileSync(reportFile, "utf8")).files ?? {};
  } catch (err) {
    problems.push(`no per-file report from the test reporter (${err.message})`);
  }
} finally {
  rmSync(reportDir, { recursive: true, force: true });
}

const warnings = [];
let ranTests = 0;
for (const js of selected) {
  const f = files[join(ROOT, js)];
  if (!f) {
    problems.push(`${js}: reported nothing (did it start?)`);
    continue;
  }
  ranTests += f.ran;
  if (f.loadFailed) problems.push(`${js}: failed to load or to finish`);
  if (f.ran > 0) continue;
  if (f.skipped > 0) {
    const line = `${js}: every test was skipped (${f.skipReasons.join("; ") || "no reason given"})`;
    if (process.env.CI) problems.push(`${line}; not allowed in CI`);
    else warnings.push(line);
  } else if (!f.loadFailed) {
    problems.push(`${js}: no test ran (${f.todo > 0 ? `${f.todo} todo` : "it defines none"})`);
  }
}

console.log("");
for (const w of warnings) console.log(`run-tests: WARNING ${w}`);
for (const p of problems) console.log(`run-tests: FAIL ${p}`);
console.log(`run-tests: ${selected.length} of ${sources.filter((s) => matches(compiledOf(s)) || matches(s)).length} test files run, ${ranTests} tests ran`);
if (problems.length > 0 && status === 0) status = 1;
process.exit(status);
