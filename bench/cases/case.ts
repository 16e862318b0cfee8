import type { CaseOutcome } from "../lib/report.js";

export interface CaseContext {
  /** Tiny sizes, seconds per case: for the smoke test. */
  quick: boolean;
  seed: number;
  /** When set, the coordinator of the dispatch case runs with --cpu-prof into this directory. */
  profileDir: string | undefined;
  log(message: string): void;
}

export interface BenchCase {
  name: string;
  title: string;
  simulated: boolean;
  /** The target as the issue states it. */
  target: string;
  run(ctx: CaseContext): Promise<CaseOutcome>;
}
