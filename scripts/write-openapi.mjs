// Writes docs/openapi.json from the compiled gateway/openapi.ts (run `npm run openapi`);
// test/unit/gateway-openapi.test.ts fails when the committed file is not fresh.
import { writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { OPENAPI } from "../dist/gateway/openapi.js";

const out = fileURLToPath(new URL("../docs/openapi.json", import.meta.url));
writeFileSync(out, JSON.stringify(OPENAPI, null, 2) + "\n");
console.log(`wrote ${out}`);
