import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { parseNvidiaSmiCsv } from "../../worker/gpu/nvidia-smi.js";

const fixture = (name: string) => readFileSync(new URL(`../../../test/fixtures/${name}`, import.meta.url), "utf8");
const MiB = 1024 * 1024;

test("nvidia-smi - parses recorded output of two A100s", () => {
  const gpus = parseNvidiaSmiCsv(fixture("nvidia-smi-2xa100.csv"));
  assert.equal(gpus.length, 2);
  assert.deepEqual(gpus[1], {
    index: 1,
    name: "NVIDIA A100-SXM4-80GB",
    totalBytes: 81920 * MiB,
    freeBytes: 12011 * MiB,
    uuid: "GPU-5e2d3c4b-7a0b-11ee-b962-0242ac120002",
  });
});

test("nvidia-smi - parses CRLF output of mixed cards and skips blank lines", () => {
  const gpus = parseNvidiaSmiCsv(fixture("nvidia-smi-mixed-crlf.csv"));
  assert.deepEqual(gpus.map((g) => [g.index, g.name, g.totalBytes / MiB, g.freeBytes / MiB]), [
    [0, "NVIDIA GeForce RTX 4090", 24564, 23012],
    [1, "Tesla T4", 15360, 15101],
  ]);
});

test("nvidia-smi - refuses memory it cannot read instead of guessing", () => {
  assert.throws(() => parseNvidiaSmiCsv("0, GRID A100-4C, [N/A], [N/A], GPU-x\n"), /cannot read index\/memory/);
  assert.throws(() => parseNvidiaSmiCsv("0, short\n"), /expected 5 fields/);
});

// Recorded on a lent NVIDIA H200 machine (driver 580.159.04, CUDA 13.0) on 2026-11-30 with the
// exact query the worker runs; nvidia-smi's own table on that machine showed 0MiB / 143771MiB.
test("nvidia-smi - parses live output recorded on an H200", () => {
  assert.deepEqual(parseNvidiaSmiCsv(fixture("nvidia-smi-h200-live.csv")), [
    { index: 0, name: "NVIDIA H200", totalBytes: 143771 * MiB, freeBytes: 143156 * MiB, uuid: "GPU-ac544b8d-d7f7-f8da-2146-31cdb24f2970" },
  ]);
});
