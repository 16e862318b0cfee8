import { test } from "node:test";
import assert from "node:assert/strict";
import { parseDeviceUsed, parseProcessUsed, PeakVramSampler, type VramSample } from "../../worker/gpu/vram-peak.js";

const MiB = 1024 * 1024;

test("vram peak - reads this process's memory from --query-compute-apps, summed over GPUs", { timeout: 5000 }, () => {
  const text = "4242, 1200\r\n77, 9000\n4242, 300\n\n";
  assert.equal(parseProcessUsed(text, 4242), 1500 * MiB);
  assert.equal(parseProcessUsed(text, 5), undefined);
  assert.equal(parseProcessUsed("", 4242), undefined);
  assert.equal(parseProcessUsed("4242, [N/A]\n", 4242), undefined);
});

test("vram peak - reads the served GPUs' used memory from --query-gpu=index,memory.used", { timeout: 5000 }, () => {
  const text = "0, 1377\n1, 69909\n2, 5\n";
  assert.equal(parseDeviceUsed(text, new Set([0, 1])), (1377 + 69909) * MiB);
  assert.equal(parseDeviceUsed(text, new Set([7])), 0);
});

/** A sampler fed with scripted readings: each call returns the next one (the last repeats). */
function scripted(readings: VramSample[]): { sample: () => Promise<VramSample>; calls: () => number } {
  let i = 0;
  return { sample: async () => readings[Math.min(i++, readings.length - 1)]!, calls: () => i };
}

test("vram peak - an item's figure is the peak during it above what was in use when it started", { timeout: 5000 }, async () => {
  const s = scripted([
    { processBytes: 500 * MiB, deviceBytes: 2000 * MiB },
    { processBytes: 1300 * MiB, deviceBytes: 2800 * MiB },
    { processBytes: 900 * MiB, deviceBytes: 2400 * MiB },
  ]);
  const sampler = new PeakVramSampler(s.sample, 10);
  sampler.begin("a");
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(await sampler.end("a"), 800 * MiB);
  assert.ok(s.calls() >= 3, "it sampled while the item ran");
  sampler.stop();
});

test("vram peak - without our pid in nvidia-smi's list (a container) it falls back to the GPUs' used memory", { timeout: 5000 }, async () => {
  const s = scripted([
    { processBytes: undefined, deviceBytes: 2000 * MiB },
    { processBytes: undefined, deviceBytes: 2600 * MiB },
  ]);
  const sampler = new PeakVramSampler(s.sample, 1000);
  sampler.begin("a");
  assert.equal(await sampler.end("a"), 600 * MiB, "the reading taken at the end counts even before the first interval");
});

test("vram peak - nothing grew or nothing could be read: 0 (unknown), and errors are reported, not thrown", { timeout: 5000 }, async () => {
  const flat = new PeakVramSampler(scripted([{ processBytes: 700 * MiB, deviceBytes: 900 * MiB }]).sample, 1000);
  flat.begin("a");
  assert.equal(await flat.end("a"), 0);
  assert.equal(await flat.end("never-begun"), 0);
  const errors: unknown[] = [];
  const broken = new PeakVramSampler(() => Promise.reject(new Error("nvidia-smi failed")), 5, (e) => errors.push(e));
  broken.begin("b");
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(await broken.end("b"), 0);
  assert.ok(errors.length >= 1);
  broken.stop();
});

test("vram peak - overlapping items each keep their own baseline", { timeout: 5000 }, async () => {
  const readings = [
    { processBytes: 100 * MiB, deviceBytes: 0 },
    { processBytes: 400 * MiB, deviceBytes: 0 },
    { processBytes: 1000 * MiB, deviceBytes: 0 },
  ];
  let i = 0;
  const sampler = new PeakVramSampler(async () => readings[Math.min(i++, readings.length - 1)]!, 100_000);
  sampler.begin("first"); // baseline 100
  await new Promise((r) => setTimeout(r, 5));
  sampler.begin("second"); // baseline 400
  assert.equal(await sampler.end("second"), 600 * MiB);
  assert.equal(await sampler.end("first"), 900 * MiB);
});
