// The VRAM an item really took on a GPU, for the coordinator's learned estimates
// (vram_used_bytes). onnxruntime-node exposes no allocator statistics, so this samples
// nvidia-smi while items run: this process's own GPU memory (--query-compute-apps) where
// nvidia-smi lists our pid, else (in a container with its own pid namespace nvidia-smi shows
// host pids) the used memory of the GPUs this worker serves. An item's figure is the peak seen
// during it minus what was in use when it started.
//
// What it is and is not: onnxruntime's CUDA arena keeps what it allocated, so the first item of
// a model and shape shows its growth (weights loaded then included: an over-estimate, the safe
// side) and later ones show little or nothing (reported as 0, "unknown", which the coordinator
// ignores); items running at once on one GPU share the growth; a peak shorter than the
// sampling interval may be missed, except the one still held at the end.

import { execFile } from "node:child_process";

export const COMPUTE_APPS_ARGS = ["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"];
export const GPU_USED_ARGS = ["--query-gpu=index,memory.used", "--format=csv,noheader,nounits"];

const MiB = 1024 * 1024;

/** One reading: this process's GPU memory (undefined when nvidia-smi does not list it) and the served GPUs' used memory. */
export interface VramSample {
  processBytes: number | undefined;
  deviceBytes: number;
}

/** Sums used_memory (MiB) of `pid` in `--query-compute-apps=pid,used_memory` output. */
export function parseProcessUsed(text: string, pid: number): number | undefined {
  let total: number | undefined;
  for (const line of text.split(/\r?\n/)) {
    const [p, used] = line.split(",").map((f) => f.trim());
    if (Number(p) !== pid || used === undefined) continue;
    const mib = Number(used);
    if (Number.isFinite(mib)) total = (total ?? 0) + Math.round(mib * MiB);
  }
  return total;
}

/** Sums memory.used (MiB) of the GPUs in `indices` in `--query-gpu=index,memory.used` output. */
export function parseDeviceUsed(text: string, indices: ReadonlySet<number>): number {
  let total = 0;
  for (const line of text.split(/\r?\n/)) {
    const [i, used] = line.split(",").map((f) => f.trim());
    const mib = Number(used);
    if (indices.has(Number(i)) && Number.isFinite(mib)) total += Math.round(mib * MiB);
  }
  return total;
}

function run(binary: string, args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(binary, args, { timeout: timeoutMs }, (err, stdout) => (err ? reject(err) : resolve(stdout)));
  });
}

/** Reads a sample with nvidia-smi (two queries). */
export function nvidiaSmiSampler(binary: string, pid: number, gpuIndices: number[], timeoutMs = 5000): () => Promise<VramSample> {
  const indices = new Set(gpuIndices);
  return async () => {
    const [apps, gpus] = await Promise.all([run(binary, COMPUTE_APPS_ARGS, timeoutMs), run(binary, GPU_USED_ARGS, timeoutMs)]);
    return { processBytes: parseProcessUsed(apps, pid), deviceBytes: parseDeviceUsed(gpus, indices) };
  };
}

interface Window {
  baseline: Promise<VramSample | undefined>;
  peakProcess: number | undefined;
  peakDevice: number;
}

export class PeakVramSampler {
  private readonly windows = new Map<string, Window>();
  private pending: Promise<VramSample | undefined> | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly sample: () => Promise<VramSample>,
    private readonly intervalMs = 200,
    private readonly onError: (err: unknown) => void = () => {},
  ) {}

  /** An item starts: what is in use now is its baseline. */
  begin(id: string): void {
    const w: Window = { baseline: this.sampleNow(), peakProcess: undefined, peakDevice: 0 };
    this.windows.set(id, w);
    this.schedule();
  }

  /**
   * The item is over: its peak above the baseline in bytes, 0 when nothing could be measured
   * or nothing grew. One last reading is taken, so memory still held at the end counts.
   */
  async end(id: string): Promise<number> {
    const w = this.windows.get(id);
    if (w === undefined) return 0;
    // A reading already under way may have started before the item ended: wait it out, then take one of our own.
    if (this.pending !== undefined) await this.pending;
    await this.sampleNow();
    this.windows.delete(id);
    if (this.windows.size === 0 && this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    const base = await w.baseline;
    if (base === undefined) return 0;
    const grew = base.processBytes !== undefined && w.peakProcess !== undefined ? w.peakProcess - base.processBytes : w.peakDevice - base.deviceBytes;
    return Math.max(0, grew);
  }

  stop(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.windows.clear();
  }

  /** One reading at a time: callers that arrive while one is running share it. */
  private sampleNow(): Promise<VramSample | undefined> {
    return (this.pending ??= this.sample()
      .then(
        (s) => {
          for (const w of this.windows.values()) {
            if (s.processBytes !== undefined) w.peakProcess = Math.max(w.peakProcess ?? 0, s.processBytes);
            w.peakDevice = Math.max(w.peakDevice, s.deviceBytes);
          }
          return s;
        },
        (err: unknown) => {
          this.onError(err);
          return undefined;
        },
      )
      .finally(() => (this.pending = undefined)));
  }

  private schedule(): void {
    if (this.timer !== undefined || this.windows.size === 0) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.sampleNow().then(() => this.schedule());
    }, this.intervalMs);
    this.timer.unref();
  }
}
