import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { ROOT } from "../harness/processes.js";

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? files(p) : [p];
  });
}

test("proto - the committed generated code matches what buf generates from proto/", () => {
  const out = mkdtempSync(join(tmpdir(), "shoal-proto-"));
  try {
    const template = readFileSync(join(ROOT, "buf.gen.yaml"), "utf8").replace("out: proto/gen", `out: ${out}`);
    const tpl = join(out, "buf.gen.yaml");
    writeFileSync(tpl, template);
    execFileSync(join(ROOT, "node_modules/.bin/buf"), ["generate", "--template", tpl], { cwd: ROOT, stdio: "pipe", timeout: 120_000 });
    const committed = join(ROOT, "proto/gen");
    const want = files(committed).map((f) => relative(committed, f)).sort();
    const got = files(out).map((f) => relative(out, f)).filter((f) => f !== "buf.gen.yaml").sort();
    assert.deepEqual(got, want, "generated files differ: run `npm run proto` and commit");
    for (const f of want) {
      assert.equal(readFileSync(join(out, f), "utf8"), readFileSync(join(committed, f), "utf8"), `${f} is stale: run \`npm run proto\` and commit`);
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
