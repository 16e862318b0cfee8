import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { ShoalUp, alive } from "../harness/shoal-up.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function commandOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ");
  } catch {
    return "";
  }
}

test("shoal up - after kill -9 of up its coordinator, worker and gateway see their stdin pipe close and exit (no pid polling)", async () => {
  const up = new ShoalUp();
  try {
    await up.start({ args: ["--workers", "1", "--vram", "2GiB", "--gpu", "none"], env: process.env });
    const shoalChildren = up.children.filter((pid) => !commandOf(pid).includes("nats-server"));
    assert.equal(shoalChildren.length, 3, "coordinator, worker and gateway");
    process.kill(up.pid!, "SIGKILL");
    const deadline = Date.now() + 60_000;
    while (shoalChildren.some(alive) && Date.now() < deadline) await sleep(200);
    assert.deepEqual(shoalChildren.filter(alive), [], "every Shoal child exited");
    // The children inherited up's stdout and stderr, which this test still reads: each says why.
    const lines = (up.stdout + up.stderr).split("\n").filter((l) => l.includes("parent process is gone"));
    assert.equal(lines.length, 3, `one line per child:\n${lines.join("\n")}`);
    for (const l of lines) assert.equal((JSON.parse(l) as { via?: string }).via, "pipe closed", l);
  } finally {
    // nats-server does not watch up: stop() kills what is left by pid and removes the data dir.
    await up.stop();
  }
});
