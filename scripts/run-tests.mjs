// Runs the compiled test suites with node:test: unit tests and every integration file in
// parallel (each integration file starts its own nats-server on its own port).
import { spawnSync } from "node:child_process";
import { readdirSync, existsSync } from "node:fs";

const files = (dir) => (existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith(".test.js")).map((f) => `${dir}/${f}`) : []);
const only = process.argv.slice(2);
const all = [...files("dist/test/unit"), ...files("dist/test/integration")];
const selected = only.length ? all.filter((f) => only.some((o) => f.includes(o))) : all;
const concurrency = process.env.SHOAL_TEST_CONCURRENCY ?? "4";
const r = spawnSync(process.execPath, ["--test", `--test-concurrency=${concurrency}`, "--test-reporter=spec", ...selected], { stdio: "inherit" });
process.exit(r.status ?? 1);
