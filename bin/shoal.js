#!/usr/bin/env node
// Entry of the `shoal` bin: the compiled CLI (npm run build writes dist/).
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const main = new URL("../dist/cli/main.js", import.meta.url);
if (!existsSync(fileURLToPath(main))) {
  process.stderr.write("shoal: not built yet; run `npm run build` in the Shoal checkout first\n");
  process.exit(2);
}
await import(main.href);
