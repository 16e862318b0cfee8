// Whether onnxruntime-node's CUDA execution provider can run here. The npm package bundles the
// CPU runtime only; the CUDA provider's libraries (libonnxruntime_providers_cuda.so and
// libonnxruntime_providers_shared.so) are too large for the npm registry, so onnxruntime-node's
// install script downloads them from NuGet when asked (ONNXRUNTIME_NODE_INSTALL=cuda12, or the
// --onnxruntime-node-install=cuda12 npm flag). Shoal's .npmrc skips that download, so a plain
// `npm ci` has no CUDA provider: a worker asked for `--execution-provider cuda` checks at start
// and refuses with the way to install it, instead of quietly computing on the CPU.

import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { ConfigError } from "../../shared/errors.js";

/** The files the CUDA provider needs next to onnxruntime-node's binding. */
export const CUDA_PROVIDER_FILES = ["libonnxruntime_providers_cuda.so", "libonnxruntime_providers_shared.so"];

/** The command that installs the CUDA provider into this checkout (needs api.nuget.org). */
export const CUDA_INSTALL_HINT =
  "install it with `ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install.js` " +
  "(or `npm ci --onnxruntime-node-install=cuda12`; it downloads from api.nuget.org), with the CUDA 12 runtime, " +
  "cuBLAS and cuDNN 9 libraries on the library path (the nvidia/cuda:12.x-cudnn-runtime images have them; " +
  "deploy/containers/Containerfile.gpu builds such an image), or run with --execution-provider cpu";

/** Where onnxruntime-node keeps its native binding for this platform. */
export function onnxruntimeBinDir(): string {
  const require = createRequire(import.meta.url);
  const pkg = require.resolve("onnxruntime-node/package.json");
  return join(dirname(pkg), "bin", "napi-v6", process.platform, process.arch);
}

/** The CUDA provider files missing from `binDir` (empty when it is installed). */
export function missingCudaFiles(binDir = onnxruntimeBinDir()): string[] {
  return CUDA_PROVIDER_FILES.filter((f) => !existsSync(join(binDir, f)));
}

/**
 * Refuses `--execution-provider cuda` where it cannot work: not Linux x64 (the only platform
 * onnxruntime-node ships a CUDA provider for), or its libraries not installed.
 */
export function checkCudaInstalled(binDir?: string): void {
  if (process.platform !== "linux" || process.arch !== "x64") {
    throw new ConfigError("--execution-provider", `cuda: onnxruntime-node has a CUDA execution provider only on linux/x64 (this is ${process.platform}/${process.arch}); use --execution-provider cpu`);
  }
  const dir = binDir ?? onnxruntimeBinDir();
  const missing = missingCudaFiles(dir);
  if (missing.length > 0) {
    throw new ConfigError("--execution-provider", `cuda: onnxruntime-node's CUDA execution provider is not installed (no ${missing.join(", ")} in ${dir}); ${CUDA_INSTALL_HINT}`);
  }
}

/**
 * Loads the CUDA provider for real: a one-node session on `deviceId`, run once. Its libraries
 * being present is not enough (the CUDA runtime, cuDNN or the driver may be missing, or the
 * device may not exist), and onnxruntime says which only when a session is made.
 */
export async function probeCuda(deviceId: number): Promise<void> {
  checkCudaInstalled();
  const { default: ort } = await import("onnxruntime-node");
  const { buildScaleModel } = await import("./fixtures.js");
  let session: Awaited<ReturnType<typeof ort.InferenceSession.create>> | undefined;
  try {
    session = await ort.InferenceSession.create(buildScaleModel(2), { executionProviders: [{ name: "cuda", deviceId }] });
    const out = await session.run({ x: new ort.Tensor("float32", new Float32Array([1, 2]), [2]) });
    const y = out.y?.data as Float32Array | undefined;
    if (!y || y[0] !== 2 || y[1] !== 4) throw new Error(`the probe model computed ${y ? `[${[...y].join(", ")}]` : "nothing"} instead of [2, 4]`);
  } catch (err) {
    throw new ConfigError("--execution-provider", `cuda: onnxruntime could not run on CUDA device ${deviceId}: ${(err as Error).message}; ${CUDA_INSTALL_HINT}`);
  } finally {
    await session?.release().catch(() => {});
  }
}

/** "cuda" or "cuda:<device>" → the device id; undefined for other providers. */
export function cudaDevice(provider: string): number | undefined {
  const m = /^cuda(?::(\d+))?$/i.exec(provider.trim());
  return m ? Number(m[1] ?? 0) : undefined;
}
