import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError } from "../../shared/errors.js";
import { checkCudaInstalled, CUDA_PROVIDER_FILES, cudaDevice, missingCudaFiles, onnxruntimeBinDir } from "../../worker/inference/cuda-provider.js";

test("cuda provider - names the missing libraries and how to install them", { timeout: 5000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), "shoal-ort-bin-"));
  try {
    assert.deepEqual(missingCudaFiles(dir), CUDA_PROVIDER_FILES);
    assert.throws(
      () => checkCudaInstalled(dir),
      (err: unknown) =>
        err instanceof ConfigError &&
        err.option === "--execution-provider" &&
        err.message.includes("libonnxruntime_providers_cuda.so") &&
        err.message.includes(dir) &&
        err.message.includes("ONNXRUNTIME_NODE_INSTALL=cuda12") &&
        err.message.includes("--execution-provider cpu"),
    );
    writeFileSync(join(dir, "libonnxruntime_providers_cuda.so"), "");
    assert.deepEqual(missingCudaFiles(dir), ["libonnxruntime_providers_shared.so"]);
    writeFileSync(join(dir, "libonnxruntime_providers_shared.so"), "");
    assert.doesNotThrow(() => checkCudaInstalled(dir));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("cuda provider - looks next to onnxruntime-node's own binding", { timeout: 5000 }, () => {
  assert.match(onnxruntimeBinDir(), new RegExp(`onnxruntime-node/bin/napi-v6/${process.platform}/${process.arch}$`));
});

test("cuda provider - cuda and cuda:N name a device; other providers none", { timeout: 5000 }, () => {
  assert.equal(cudaDevice("cuda"), 0);
  assert.equal(cudaDevice("CUDA:3"), 3);
  assert.equal(cudaDevice("cpu"), undefined);
  assert.equal(cudaDevice("cudax"), undefined);
});
