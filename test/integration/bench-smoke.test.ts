import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "../harness/processes.js";

// The bench must never rot: its quick mode runs every case with tiny sizes, and this checks that
// it runs to the end and that what it prints and writes is well-formed. Not how fast anything is:
// a target that is missed is still a well-formed result.

const CASES = ["dispatch", "peer", "fleet", "batch50", "onnx", "scale", "fsync", "encode", "sim", "cluster", "hedging"];
/** Which cases simulate GPUs: all but the ones that run imagegen-tiny and its encoders for real. */
const SIMULATED: Record<string, boolean> = { dispatch: true, peer: true, fleet: true, batch50: true, onnx: false, scale: true, fsync: true, encode: false, sim: true, cluster: true, hedging: true };

function finiteNumbers(value: unknown, path: string, problems: string[]): void {
  if (typeof value === "number") {
    if (!Number.isFinite(value)) problems.push(`${path}: ${value}`);
  } else if (Array.isArray(value)) {
    value.forEach((v, i) => finiteNumbers(v, `${path}[${i}]`, problems));
  } else if (value && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) finiteNumbers(v, `${path}.${k}`, problems);
  }
}

describe("bench smoke - `node dist/bench/main.js --quick` runs every case and reports well-formed results", () => {
  const dir = mkdtempSync(join(tmpdir(), "shoal-bench-smoke-"));
  const out = join(dir, "results.json");

  after(() => rmSync(dir, { recursive: true, force: true }));

  test("bench smoke - the quick run exits 0, prints the table and writes results.json", { timeout: 600_000 }, async () => {
    const run = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      // SIGTERM after 9 minutes: the bench then stops every process it started.
      const child = spawn(process.execPath, [join(ROOT, "dist/bench/main.js"), "--quick", "--out", out], {
        cwd: ROOT,
        stdio: ["ignore", "pipe", "pipe"],
        timeout: 540_000,
        killSignal: "SIGTERM",
      });
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (d) => (stdout += d));
      child.stderr.on("data", (d) => (stderr += d));
      child.on("exit", (code) => resolve({ code, stdout, stderr }));
    });
    assert.equal(run.code, 0, `bench exited ${run.code}\n${run.stderr.slice(-3000)}`);
    const header = run.stdout.split("\n").find((l) => l.startsWith("case "));
    assert.ok(header, `no table header in the output:\n${run.stdout}`);
    for (const col of ["metric", "value", "baseline / ideal", "ratio", "target", "pass/fail"]) assert.ok(header.includes(col), `table header lacks "${col}": ${header}`);
    // Every row of a simulated case says so; the real one does not.
    const lines = run.stdout.split("\n");
    for (const name of CASES) {
      const rows = lines.filter((l) => l.startsWith(`${name} `));
      assert.ok(rows.length > 0, `the table has no row for ${name}`);
      for (const row of rows) {
        assert.equal(row.startsWith(`${name} (SIMULATED) `), SIMULATED[name], `${name} is ${SIMULATED[name] ? "" : "not "}simulated, but its row says: ${row}`);
      }
    }
    assert.ok(existsSync(out), "results.json was not written");
  });

  test("bench smoke - results.json has machine info and every case, with finite numbers, targets and met flags", () => {
    assert.ok(existsSync(out), "results.json was not written (see the previous test)");
    const results = JSON.parse(readFileSync(out, "utf8"));
    assert.equal(results.mode, "quick");
    assert.ok(results.machine.cores >= 1, "machine.cores");
    assert.equal(typeof results.machine.nodeVersion, "string");
    assert.ok(!Number.isNaN(Date.parse(results.machine.date)), "machine.date is a date");
    assert.equal(typeof results.allMet, "boolean");
    assert.deepEqual(results.cases.map((c: { name: string }) => c.name), CASES);
    assert.deepEqual(Object.fromEntries(results.cases.map((c: { name: string; simulated: unknown }) => [c.name, c.simulated])), SIMULATED);
    assert.equal(results.allMet, results.cases.every((c: { met: boolean }) => c.met), "allMet is every case met");
    for (const c of results.cases) {
      assert.equal(c.error, undefined, `case ${c.name} failed: ${c.error}`);
      assert.equal(typeof c.target, "string", `${c.name}.target`);
      assert.ok(c.target.length > 0, `${c.name}.target is empty`);
      assert.equal(typeof c.met, "boolean", `${c.name}.met`);
      assert.equal(c.simulated, SIMULATED[c.name], `${c.name}.simulated`);
      assert.equal(typeof c.params, "object", `${c.name}.params`);
      assert.equal(typeof c.raw, "object", `${c.name}.raw`);
      assert.ok(c.metrics.length > 0, `${c.name} has no metrics`);
      assert.ok(c.metrics.some((m: { target?: unknown }) => m.target), `${c.name} has no metric with a target`);
      // Every case compares itself with something measured (or computed) in the same run.
      assert.ok(
        c.metrics.some((m: { reference?: unknown; ratio?: unknown }) => m.reference && m.ratio !== undefined),
        `${c.name} has no metric compared with a reference`,
      );
      for (const m of c.metrics) {
        assert.equal(typeof m.name, "string");
        // JSON writes NaN and Infinity as null: a comparison that was not computed shows here.
        assert.ok(Number.isFinite(m.value), `${c.name} / ${m.name}: value ${m.value}`);
        if ("ratio" in m) assert.ok(Number.isFinite(m.ratio), `${c.name} / ${m.name}: ratio ${m.ratio}`);
        if ("reference" in m) {
          assert.ok(Number.isFinite(m.reference.value), `${c.name} / ${m.name}: reference ${m.reference.value}`);
        }
        if (m.target) {
          assert.ok([">=", "<=", ">"].includes(m.target.op), `${c.name} / ${m.name}: target op`);
          assert.ok(Number.isFinite(m.target.threshold), `${c.name} / ${m.name}: target threshold`);
          // met must be what the target says of the value (or ratio) written next to it.
          const v = m.target.of === "ratio" ? m.ratio : m.value;
          assert.ok(Number.isFinite(v), `${c.name} / ${m.name}: the target compares ${m.target.of}, which is ${v}`);
          const holds = m.target.op === ">=" ? v >= m.target.threshold : m.target.op === ">" ? v > m.target.threshold : v <= m.target.threshold;
          assert.equal(m.met, holds, `${c.name} / ${m.name}: met ${m.met} but ${v} ${m.target.op} ${m.target.threshold} is ${holds}`);
        } else {
          assert.equal(m.met, undefined, `${c.name} / ${m.name}: met without a target`);
        }
      }
      const withTargets = c.metrics.filter((m: { target?: unknown }) => m.target);
      assert.equal(c.met, withTargets.every((m: { met: boolean }) => m.met), `${c.name}.met is every target met`);
      const problems: string[] = [];
      finiteNumbers(c.params, `${c.name}.params`, problems);
      finiteNumbers(c.raw, `${c.name}.raw`, problems);
      assert.deepEqual(problems, [], "numbers in params/raw must be finite");
    }
  });

  test("bench smoke - the fsync case ran each fleet with the setting it names, and lost nothing", () => {
    assert.ok(existsSync(out), "results.json was not written (see the first test)");
    const results = JSON.parse(readFileSync(out, "utf8"));
    const c = results.cases.find((x: { name: string }) => x.name === "fsync");
    assert.ok(c, "no fsync case");
    // What nats-server itself said (/varz), not what the bench meant to configure.
    assert.equal(c.raw.always.natsVarz.syncAlways, true);
    assert.equal(c.raw.interval.natsVarz.syncAlways, false);
    assert.equal(c.raw.interval.natsVarz.syncIntervalNs, 120e9);
    const metric = (name: string) => c.metrics.find((m: { name: string }) => m.name === name);
    assert.equal(metric("nats-server /varz confirms each mode's sync setting")?.value, 1);
    assert.equal(metric("items never finished (lost)")?.value, 0);
    assert.equal(typeof c.params.storeFileSystem, "string");
  });
});
