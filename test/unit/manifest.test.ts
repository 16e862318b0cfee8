import { test } from "node:test";
import assert from "node:assert/strict";
import { IMAGEGEN_TINY } from "../../shared/builtin-models.js";
import { checkManifest, validateParams, vramNeed } from "../../shared/manifest.js";
import { parseBytes, parseDuration } from "../../shared/units.js";

test("manifest - imagegen-tiny applies defaults and names each bad param", () => {
  const ok = validateParams(IMAGEGEN_TINY, { prompt: "a cat" });
  assert.deepEqual(ok.problems, []);
  assert.equal(ok.params.width, 256);
  assert.equal(ok.params.steps, 4);
  const bad = validateParams(IMAGEGEN_TINY, { prompt: "", width: 100, height: 2048, steps: 0, guidance_scale: 25, colour: "red" });
  const paths = bad.problems.map((p) => `${p.path}: ${p.message}`);
  assert.ok(paths.includes("params.width: must be a multiple of 8 between 64 and 1024 (got 100)"), paths.join("\n"));
  assert.ok(paths.some((p) => p.startsWith("params.prompt: must be a string of 1..2000")));
  assert.ok(paths.some((p) => p.startsWith("params.height:")));
  assert.ok(paths.some((p) => p.startsWith("params.steps: must be between 1 and 50")));
  assert.ok(paths.some((p) => p.startsWith("params.guidance_scale:")));
  assert.ok(paths.some((p) => p.startsWith("params.colour: unknown param")));
});

test("manifest - VRAM need grows with pixels", () => {
  const small = vramNeed(IMAGEGEN_TINY, { width: 64, height: 64 });
  const big = vramNeed(IMAGEGEN_TINY, { width: 1024, height: 1024 });
  assert.ok(big > small);
  assert.equal(big - small, 512 * (1024 * 1024 - 64 * 64));
});

test("manifest - checkManifest reports what is wrong", () => {
  assert.deepEqual(checkManifest(IMAGEGEN_TINY), []);
  const problems = checkManifest({ name: "Bad Name", params: { x: { type: "blob" } }, vram: { weights_bytes: -1 } });
  assert.ok(problems.some((p) => p.startsWith("name:")));
  assert.ok(problems.some((p) => p.startsWith("version:")));
  assert.ok(problems.some((p) => p.startsWith("params.x.type:")));
  assert.ok(problems.some((p) => p.startsWith("vram.weights_bytes:")));
});

test("units - sizes and durations parse, nonsense names the option", () => {
  assert.equal(parseBytes("--vram", "8GiB"), 8 * 1024 ** 3);
  assert.equal(parseBytes("--vram", "24GB"), 24e9);
  assert.equal(parseBytes("--vram", "512 MiB"), 512 * 1024 ** 2);
  assert.throws(() => parseBytes("--vram", "lots"), /--vram: "lots" is not a size/);
  assert.equal(parseDuration("--x", "1500ms"), 1500);
  assert.equal(parseDuration("--x", "3s"), 3000);
  assert.throws(() => parseDuration("--x", "soon"), /--x:/);
});
