// scripts/gpu-check.sh, the check an operator (or the project lead) runs on a machine with an
// NVIDIA GPU, run here where there is none: without nvidia-smi it must say so and stop at once;
// with the fake nvidia-smi of test/fixtures (SIMULATED: the recorded output of two A100s) every
// step runs for real (the parser against "live" output, shoal up --gpu auto with nats-server, a
// batch, the VRAM the worker reports next to nvidia-smi's), and --execution-provider cuda is
// refused with the way to install onnxruntime's CUDA provider.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { missingCudaFiles } from "../../worker/inference/cuda-provider.js";
import { CLI, ROOT, natsServerBinary } from "../harness/processes.js";

const SCRIPT = join(ROOT, "scripts/gpu-check.sh");
const FAKE_SMI_DIR = join(ROOT, "test/fixtures/fake-nvidia-smi");

function runScript(env: NodeJS.ProcessEnv, timeoutMs: number): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    execFile("bash", [SCRIPT], { env, timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024, killSignal: "SIGINT" }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, out: stdout + stderr });
    });
  });
}

test("gpu-check - without nvidia-smi it says so and exits 1 at once", { timeout: 30_000 }, async () => {
  const { code, out } = await runScript({ ...process.env, NVIDIA_SMI: "/nonexistent/nvidia-smi" }, 20_000);
  assert.equal(code, 1, out);
  assert.match(out, /FAIL: nvidia-smi \(no \/nonexistent\/nvidia-smi on PATH: no NVIDIA driver/);
  assert.doesNotMatch(out, /shoal up/);
});

test("gpu-check - with a (fake) nvidia-smi it checks the parser, runs shoal up --gpu auto and a batch, compares VRAM, and tries the CUDA provider", { timeout: 600_000 }, async () => {
  const out = mkdtempSync(join(tmpdir(), "shoal-gpu-check-"));
  try {
    // nats-server only through NATS_SERVER_BIN (a directory), as on a bare machine.
    const path = [FAKE_SMI_DIR, dirname(process.execPath), "/usr/bin", "/bin"].join(":");
    const env = { PATH: path, HOME: process.env.HOME ?? "/tmp", NATS_SERVER_BIN: dirname(natsServerBinary()), OUT: out, GPU_CHECK_ITEMS: "2", GPU_CHECK_SIZE: "64" };
    const { code, out: text } = await runScript(env, 560_000);
    const cudaInstalled = missingCudaFiles().length === 0;
    for (const line of [
      /PASS: nvidia-smi \(2 GPU\(s\)\)/,
      /0 \| NVIDIA A100-SXM4-80GB \| 81920 \| 80543 \| GPU-4f1c2d1e-7a0b-11ee-b962-0242ac120002 {3}= live/,
      /PASS: parser vs live output/,
      /PASS: shoal up --gpu auto/,
      /PASS: batch \(cpu provider\) \(2 items\)/,
      /1 \| 81920 \| 81920 \| 12011 \| 12011 {3}ok/,
      /PASS: reported VRAM/,
    ]) {
      assert.match(text, line, text);
    }
    if (!cudaInstalled) {
      // The project's own install skips the CUDA provider (.npmrc): both the probe and the worker refuse, saying how to install it.
      assert.match(text, /FAIL: CUDA provider probe/);
      assert.match(text, /shoal: --execution-provider: cuda: onnxruntime-node's CUDA execution provider is not installed .*ONNXRUNTIME_NODE_INSTALL=cuda12/);
      assert.match(text, /FAIL: shoal up \(cuda provider\) \(refused to start, as expected without the CUDA provider/);
      assert.equal(code, 1, "a failed step makes the script fail");
    }
    assert.match(text, /=== summary ===/);
    const log = readFileSync(join(out, "gpu-check.log"), "utf8");
    assert.match(log, /=== summary ===/, "OUT receives the whole output");
    assert.ok(existsSync(join(out, "up-cpu.log")), "OUT receives shoal up's log");
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test("worker - --execution-provider cuda without the CUDA provider exits 2 at start, naming the flag and the install command", { timeout: 30_000 }, async () => {
  const child = spawn(process.execPath, [CLI, "worker", "--execution-provider", "cuda", "--vram", "1GiB", "--nats", "nats://127.0.0.1:1", "--metrics-port", "0"], { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const code = await new Promise<number | null>((r) => child.once("exit", (c) => r(c)));
  if (missingCudaFiles().length > 0) {
    assert.equal(code, 2, stderr);
    assert.match(stderr, /^shoal: --execution-provider: cuda: onnxruntime-node's CUDA execution provider is not installed \(no libonnxruntime_providers_cuda\.so/m);
    assert.match(stderr, /ONNXRUNTIME_NODE_INSTALL=cuda12/);
  } else {
    assert.notEqual(code, 0, "with --gpu auto and no GPU here, or no NATS, it cannot serve");
  }
});
