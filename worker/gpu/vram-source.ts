import { hostname } from "node:os";
import { ConfigError } from "../../shared/errors.js";
import { queryNvidiaSmi, type GpuReading } from "./nvidia-smi.js";

export type GpuSelection = { kind: "auto" } | { kind: "none" } | { kind: "index"; index: number };

export interface GpuDevice {
  index: number;
  name: string;
  totalBytes: number;
  /** "nvidia-smi": free VRAM is measured; "budget": a configured budget, free is accounted. */
  source: "nvidia-smi" | "budget";
}

/**
 * Where a worker's VRAM figures come from. With a GPU, nvidia-smi measures total and free; on a
 * machine without one (this project's CI), `--vram` declares a budget and the worker accounts
 * free VRAM itself from what its items and models need. The budget is a simulation of a GPU's
 * memory for scheduling purposes; the compute still runs on the CPU.
 */
export interface VramSource {
  devices(): GpuDevice[];
  /** Measured free bytes per device index; undefined for budget devices. */
  measureFree(): Promise<Map<number, number> | undefined>;
}

export async function detectVramSource(
  selection: GpuSelection,
  budgetBytes: number | undefined,
  nvidiaSmi = "nvidia-smi",
  /** Appended to the budget GPU's name (a simulated GPU's speed: GPU types differ by it). */
  budgetNote = "",
): Promise<VramSource> {
  if (selection.kind !== "none") {
    const readings = await queryNvidiaSmi(nvidiaSmi);
    if (readings && readings.length > 0) {
      const chosen = selection.kind === "index" ? readings.filter((r) => r.index === selection.index) : readings;
      if (chosen.length === 0) {
        throw new ConfigError("--gpu", `GPU ${(selection as { index: number }).index} not found; nvidia-smi lists ${readings.map((r) => r.index).join(", ")}`);
      }
      return new NvidiaSmiSource(chosen, nvidiaSmi);
    }
    if (selection.kind === "index") throw new ConfigError("--gpu", `GPU ${selection.index} requested but nvidia-smi is not available`);
  }
  if (budgetBytes === undefined) {
    throw new ConfigError("--vram", "no GPU found (nvidia-smi absent or --gpu none): give a VRAM budget, e.g. --vram 8GiB");
  }
  return new BudgetSource(budgetBytes, budgetNote);
}

class NvidiaSmiSource implements VramSource {
  constructor(
    private readings: GpuReading[],
    private readonly binary: string,
  ) {}
  devices(): GpuDevice[] {
    return this.readings.map((r) => ({ index: r.index, name: r.name, totalBytes: r.totalBytes, source: "nvidia-smi" }));
  }
  async measureFree(): Promise<Map<number, number>> {
    const wanted = new Set(this.readings.map((r) => r.index));
    const now = (await queryNvidiaSmi(this.binary)) ?? [];
    const out = new Map<number, number>();
    for (const r of now) if (wanted.has(r.index)) out.set(r.index, r.freeBytes);
    return out;
  }
}

class BudgetSource implements VramSource {
  constructor(
    private readonly budget: number,
    private readonly note = "",
  ) {}
  devices(): GpuDevice[] {
    return [{ index: 0, name: `cpu (${hostname()}, simulated VRAM budget${this.note})`, totalBytes: this.budget, source: "budget" }];
  }
  async measureFree(): Promise<undefined> {
    return undefined;
  }
}
