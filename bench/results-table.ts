// Prints the table of a results file as Markdown (for docs/performance.md).
//   node dist/bench/results-table.js [bench/results.json]

import { readFileSync } from "node:fs";
import { markdownTable, tableRows, type BenchResults } from "./lib/report.js";

const file = process.argv[2] ?? "bench/results.json";
const results = JSON.parse(readFileSync(file, "utf8")) as BenchResults;
const m = results.machine;
process.stdout.write(`${results.mode} run, ${m.date}: ${m.cores} cores (${m.cpuModel}), ${m.memoryGiB} GiB, node ${m.nodeVersion}, ${m.natsServerVersion}\n\n`);
process.stdout.write(markdownTable(tableRows(results.cases)) + "\n");
