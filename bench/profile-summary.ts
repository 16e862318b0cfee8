// Summarizes a V8 .cpuprofile by self time: the functions (and areas of the code) where a process
// spent its CPU. Used on the coordinator's profile from `npm run bench -- --cpu-prof DIR`.
//   node dist/bench/profile-summary.js <file.cpuprofile | dir> [--top N] [--json]

import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { formatProfileSummary, summarizeProfile } from "./lib/cpuprofile.js";

const args = process.argv.slice(2);
const topAt = args.indexOf("--top");
const top = topAt >= 0 ? Number(args[topAt + 1]) : 25;
const json = args.includes("--json");
let target = args.find((a, i) => !a.startsWith("--") && (topAt < 0 || i !== topAt + 1));
if (!target) {
  process.stderr.write("usage: profile-summary <file.cpuprofile | dir> [--top N] [--json]\n");
  process.exit(2);
}
if (statSync(target).isDirectory()) {
  const dir = target;
  const files = readdirSync(dir).filter((f) => f.endsWith(".cpuprofile")).map((f) => join(dir, f));
  if (files.length === 0) {
    process.stderr.write(`no .cpuprofile in ${dir}\n`);
    process.exit(1);
  }
  target = files.sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0]!;
}
const summary = summarizeProfile(target, top);
process.stdout.write(json ? JSON.stringify(summary, null, 2) + "\n" : formatProfileSummary(summary) + "\n");
