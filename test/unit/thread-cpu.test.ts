import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { cpuSecondsBetween, threadCpu } from "../../bench/lib/thread-cpu.js";

// The bench's idle rows read a process's CPU thread by thread. Summed over the live threads, a
// window in which a busy thread ended read negative (the onnx case's idle row: -5.9 ms/s).

test("thread cpu - a thread that ends in the window does not make the process's CPU negative", () => {
  const before = new Map([[1, 5e9], [2, 3e9]]);
  // Thread 2 ended; thread 1 ran 10 ms; thread 3 started and ran 2 ms.
  const after = new Map([[1, 5.01e9], [3, 2e6]]);
  assert.ok(Math.abs(cpuSecondsBetween(before, after) - 0.012) < 1e-9);
  // Summed over live threads the same window reads -2.988 s.
  const sum = (m: Map<number, number>) => [...m.values()].reduce((a, b) => a + b, 0);
  assert.ok(sum(after) - sum(before) < 0);
});

test("thread cpu - a real process whose worker thread burns CPU then ends", async () => {
  // A worker thread spins 1.5 s then exits; the main thread idles. The first read comes while it
  // spins (it has used CPU by then), the second after it ended.
  const code = `const { Worker } = require("node:worker_threads");
    const w = new Worker("require('node:worker_threads').parentPort.postMessage('spinning'); const t = Date.now(); while (Date.now() - t < 1500) {}", { eval: true });
    w.on("message", () => console.log("spinning")); w.on("exit", () => console.log("ended"));
    setInterval(() => {}, 1000);`;
  const child = spawn(process.execPath, ["-e", code], { stdio: ["ignore", "pipe", "ignore"] });
  try {
    let out = "";
    child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
    const until = async (word: string) => {
      const deadline = Date.now() + 20_000;
      while (!out.includes(word)) {
        if (Date.now() > deadline) throw new Error(`no "${word}" from the child in 20 s`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    await until("spinning");
    await new Promise((r) => setTimeout(r, 300));
    const before = threadCpu(child.pid!);
    const sum = (m: Map<number, number>) => [...m.values()].reduce((a, b) => a + b, 0);
    const ended = until("ended");
    await ended;
    const after = threadCpu(child.pid!);
    const used = cpuSecondsBetween(before, after);
    assert.ok(used >= 0, `negative: ${used}`);
    // What the live-thread sum read for the same window: the spinning thread's CPU taken away.
    assert.ok(sum(after) - sum(before) < 0, "the live-thread sum did not drop: the thread did not end in the window");
  } finally {
    child.kill("SIGKILL");
  }
});
