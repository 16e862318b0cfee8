import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const guard = fileURLToPath(new URL("../../shared/crash-guard.js", import.meta.url));

// A real process, since what is tested is Node's own exit-on-rejection behaviour.
function run(withGuard: boolean): { status: number | null; stdout: string } {
  const script = `
    const { installCrashGuard } = await import(${JSON.stringify(guard)});
    const counted = [];
    const log = { error: (o, msg) => console.log("logged", o.kind, msg) };
    if (${withGuard}) installCrashGuard(log, (k) => counted.push(k));
    Promise.reject(new Error("boom in a handler"));
    setTimeout(() => { throw new Error("boom in a timer"); }, 10);
    setTimeout(() => { console.log("still running", counted.join(",")); }, 100);
  `;
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8", timeout: 20_000 });
  return { status: r.status, stdout: r.stdout };
}

test("crash-guard - an unhandled rejection or exception is logged and counted; the process goes on", () => {
  const guarded = run(true);
  assert.equal(guarded.status, 0);
  assert.match(guarded.stdout, /logged unhandled_rejection/);
  assert.match(guarded.stdout, /logged uncaught_exception/);
  assert.match(guarded.stdout, /still running unhandled_rejection,uncaught_exception/);
  // Without it, Node ends the process: the guard is what keeps it serving.
  const bare = run(false);
  assert.notEqual(bare.status, 0);
  assert.doesNotMatch(bare.stdout, /still running/);
});
