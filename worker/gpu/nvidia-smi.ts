import { execFile } from "node:child_process";

export interface GpuReading {
  index: number;
  name: string;
  totalBytes: number;
  freeBytes: number;
  uuid: string;
}

/** The query the worker runs; the parser below expects exactly these columns. */
export const NVIDIA_SMI_ARGS = [
  "--query-gpu=index,name,memory.total,memory.free,uuid",
  "--format=csv,noheader,nounits",
];

const MiB = 1024 * 1024;

/**
 * Parses `nvidia-smi --query-gpu=index,name,memory.total,memory.free,uuid
 * --format=csv,noheader,nounits`. Memory comes in MiB. Names may contain commas in theory, so
 * the name is everything between the first field and the last three.
 */
export function parseNvidiaSmiCsv(text: string): GpuReading[] {
  const gpus: GpuReading[] = [];
  for (const [n, raw] of text.split(/\r?\n/).entries()) {
    const line = raw.trim();
    if (line === "") continue;
    const fields = line.split(",").map((f) => f.trim());
    if (fields.length < 5) throw new Error(`nvidia-smi line ${n + 1}: expected 5 fields, got "${line}"`);
    const index = Number(fields[0]);
    const uuid = fields[fields.length - 1]!;
    const free = Number(fields[fields.length - 2]);
    const total = Number(fields[fields.length - 3]);
    const name = fields.slice(1, fields.length - 3).join(",");
    // "[N/A]" appears for memory on some vGPU/MIG setups: unusable, so refuse loudly.
    if (!Number.isInteger(index) || !Number.isFinite(total) || !Number.isFinite(free)) {
      throw new Error(`nvidia-smi line ${n + 1}: cannot read index/memory from "${line}"`);
    }
    gpus.push({ index, name, totalBytes: Math.round(total * MiB), freeBytes: Math.round(free * MiB), uuid });
  }
  return gpus;
}

/** Runs nvidia-smi; resolves undefined when it is not installed (a CPU-only machine). */
export function queryNvidiaSmi(binary = "nvidia-smi", timeoutMs = 5000): Promise<GpuReading[] | undefined> {
  return new Promise((resolve, reject) => {
    execFile(binary, NVIDIA_SMI_ARGS, { timeout: timeoutMs }, (err, stdout) => {
      if (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT") resolve(undefined);
        else reject(new Error(`nvidia-smi failed: ${err.message}`, { cause: err }));
        return;
      }
      try {
        resolve(parseNvidiaSmiCsv(stdout));
      } catch (parseErr) {
        reject(parseErr);
      }
    });
  });
}
