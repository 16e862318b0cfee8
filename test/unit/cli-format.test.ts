import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { splitFieldProblems } from "../../cli/errors.js";
import { formatBytes, formatDuration, formatGiB, formatTable, padIndex } from "../../cli/format.js";
import { BufferOutput } from "../../cli/output.js";
import { createProgress, progressLine } from "../../cli/progress.js";
import { artifactFileName, extensionFor } from "../../cli/results.js";
import {
  batchToJson,
  describeBatch,
  gpuLine,
  itemLine,
  modelsTable,
  paramLine,
  progressNote,
  workersTable,
} from "../../cli/views.js";
import {
  Batch,
  BatchState,
  ItemResult,
  ItemStatus,
  Model,
  ModelParam,
  Worker,
  WorkerState,
} from "../../proto/gen/shoal/v1/shoal.js";

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

describe("cli format", () => {
  test("format - bytes use binary units and at most three significant digits", () => {
    assert.equal(formatBytes(0), "0 B");
    assert.equal(formatBytes(512), "512 B");
    assert.equal(formatBytes(1023), "1023 B");
    assert.equal(formatBytes(1024), "1 KiB");
    assert.equal(formatBytes(1536), "1.5 KiB");
    assert.equal(formatBytes(12.34 * MiB), "12.3 MiB");
    assert.equal(formatBytes(256 * MiB), "256 MiB");
    assert.equal(formatBytes(80 * GiB), "80 GiB");
    assert.equal(formatBytes(1.5 * 1024 ** 4), "1.5 TiB");
    // 1023.99 KiB would round to "1024 KiB"; it is carried into the next unit instead.
    assert.equal(formatBytes(1024 * 1024 - 1), "1 MiB");
    assert.equal(formatBytes(-2048), "-2 KiB");
    assert.equal(formatBytes(Number.NaN), "?");
  });

  test("format - GiB figures have one decimal", () => {
    assert.equal(formatGiB(79.64 * GiB), "79.6");
    assert.equal(formatGiB(0), "0.0");
    assert.equal(formatGiB(1.5 * GiB), "1.5");
  });

  test("format - durations grow their unit", () => {
    assert.equal(formatDuration(0), "0ms");
    assert.equal(formatDuration(412), "412ms");
    assert.equal(formatDuration(1000), "1s");
    assert.equal(formatDuration(1234), "1.2s");
    assert.equal(formatDuration(123_000), "2m03s");
    assert.equal(formatDuration(3_720_000), "1h02m");
    assert.equal(formatDuration(-1), "?");
  });

  test("format - item indexes are padded to at least three digits, more for big batches", () => {
    assert.equal(padIndex(7, 50), "007");
    assert.equal(padIndex(7, 1000), "007");
    assert.equal(padIndex(7, 1001), "0007");
    assert.equal(padIndex(1234, 5000), "1234");
    assert.equal(padIndex(0, 0), "000");
  });

  test("format - tables pad columns, right-align numbers, leave no trailing blanks", () => {
    const text = formatTable(
      ["NAME", "N", "NOTE"],
      [
        ["a", "1", "short"],
        ["longer-name", "123", ""],
      ],
      { alignRight: [1] },
    );
    assert.equal(text, ["NAME           N  NOTE", "a              1  short", "longer-name  123"].join("\n") + "\n");
  });

  test("format - a multi-line cell spans lines, the other cells on its first line", () => {
    const text = formatTable(["ID", "GPUS", "MODELS"], [["w-1", "#0 A\n#1 B-long", "m"]]);
    assert.equal(text, ["ID   GPUS       MODELS", "w-1  #0 A       m", "     #1 B-long"].join("\n") + "\n");
  });

  test("format - worker table shows per-GPU free/total and reserved VRAM", () => {
    const worker = Worker.fromPartial({
      id: "gpu-box-1",
      state: WorkerState.WORKER_STATE_READY,
      itemsInFlight: 3,
      itemsDone: 1200,
      residentModels: ["imagegen-tiny"],
      gpus: [
        { index: 0, name: "NVIDIA H100", vramTotalBytes: 80 * GiB, vramFreeBytes: 62.1 * GiB, vramReservedBytes: 1.5 * GiB, source: "nvidia-smi" },
        { index: 1, name: "NVIDIA H100", vramTotalBytes: 80 * GiB, vramFreeBytes: 80 * GiB, vramReservedBytes: 0, source: "nvidia-smi" },
      ],
    });
    const cpu = Worker.fromPartial({
      id: "cpu-1",
      state: WorkerState.WORKER_STATE_DRAINING,
      gpus: [{ index: 0, name: "cpu", vramTotalBytes: 8 * GiB, vramFreeBytes: 7.5 * GiB, source: "budget" }],
    });
    assert.equal(gpuLine(worker.gpus[0]!), "#0 NVIDIA H100  62.1/80.0 GiB (reserved 1.5 GiB)");
    assert.equal(
      workersTable([worker, cpu]),
      [
        "WORKER     STATE     IN-FLIGHT  DONE  GPUS (free/total)                                 RESIDENT MODELS",
        "gpu-box-1  READY             3  1200  #0 NVIDIA H100  62.1/80.0 GiB (reserved 1.5 GiB)  imagegen-tiny",
        "                                      #1 NVIDIA H100  80.0/80.0 GiB (reserved 0.0 GiB)",
        "cpu-1      DRAINING          0     0  #0 cpu  7.5/8.0 GiB (reserved 0.0 GiB) [budget]   -",
      ].join("\n") + "\n",
    );
  });

  test("format - model params show type, range, step and default; VRAM its parts", () => {
    const width = ModelParam.fromPartial({ name: "width", type: "integer", minimum: 64, maximum: 1024, multipleOf: 8, defaultValue: 256 });
    const prompt = ModelParam.fromPartial({ name: "prompt", type: "string", required: true, minLength: 1, maxLength: 2000 });
    assert.equal(paramLine(width), "width integer 64..1024 step 8 =256");
    assert.equal(paramLine(prompt), "prompt* string 1..2000 chars");
    const model = Model.fromPartial({
      name: "imagegen-tiny",
      version: "1",
      params: [prompt, width],
      weightsBytes: 256 * MiB,
      activationBytes: 64 * MiB,
      activationBytesPerPixel: 512,
      residentOn: ["w-1", "w-2"],
    });
    assert.equal(
      modelsTable([model]),
      [
        "MODEL          VERSION  PARAMS (* required)                 VRAM                 RESIDENT ON",
        "imagegen-tiny  1        prompt* string 1..2000 chars        weights 256 MiB      w-1",
        "                        width integer 64..1024 step 8 =256  per item 64 MiB      w-2",
        "                                                            + 512 B/pixel",
        "                                                            (96 MiB at 256x256)",
      ].join("\n") + "\n",
    );
  });

  test("format - item lines show worker and output, or the error code", () => {
    const ok = ItemResult.fromPartial({
      index: 3,
      status: ItemStatus.ITEM_STATUS_SUCCEEDED,
      workerId: "w-1",
      runMs: 412,
      artifacts: [{ name: "image", contentType: "image/png", sizeBytes: 12_600 }],
    });
    const failed = ItemResult.fromPartial({
      index: 4,
      status: ItemStatus.ITEM_STATUS_FAILED,
      attempts: 3,
      error: { code: "WORKER_LOST", message: "worker w-2 stopped answering", retryable: true },
    });
    assert.equal(itemLine(ok, 50), "#003  SUCCEEDED  w-1  run 412ms  image 12.3 KiB");
    assert.equal(itemLine(failed, 50), "#004  FAILED     WORKER_LOST: worker w-2 stopped answering (retryable) after 3 attempts");
  });

  function terminalBatch(): Batch {
    return Batch.fromPartial({
      id: "b_x",
      state: BatchState.BATCH_STATE_COMPLETED,
      total: 2,
      succeeded: 1,
      failed: 1,
      createdAt: new Date(2025, 2, 27, 11, 40, 0),
      completedAt: new Date(2025, 2, 27, 11, 40, 12, 300),
      labels: { team: "ads" },
      results: [
        {
          index: 0,
          status: ItemStatus.ITEM_STATUS_SUCCEEDED,
          model: "imagegen-tiny",
          workerId: "w-1",
          attempts: 1,
          queueMs: 20,
          runMs: 400,
          artifacts: [{ name: "image", contentType: "image/png", sizeBytes: 2048, sha256: "ab", uri: "shoal://artifacts/x" }],
        },
        {
          index: 1,
          status: ItemStatus.ITEM_STATUS_FAILED,
          model: "imagegen-tiny",
          attempts: 1,
          error: { code: "CONTENT_POLICY", message: "refused", retryable: false },
        },
      ],
    });
  }

  test("format - describeBatch shows state, counts, timing and an item table", () => {
    const text = describeBatch(terminalBatch());
    assert.match(text, /^batch b_x\n/);
    assert.match(text, /  state      COMPLETED\n/);
    assert.match(text, /  items      1 succeeded, 1 failed of 2\n/);
    assert.match(text, /  completed  2025-03-27 11:40:12 \(took 12\.3s\)\n/);
    assert.match(text, /  labels     team=ads\n/);
    assert.match(text, /#000  SUCCEEDED  imagegen-tiny  w-1 +1 +20ms +400ms  image 2 KiB\n/);
    assert.match(text, /#001  FAILED     imagegen-tiny  - +1 +- +-  CONTENT_POLICY: refused\n/);
  });

  test("format - describeBatch of a running batch shows progress and where results will come", () => {
    const text = describeBatch(
      Batch.fromPartial({ id: "b_y", state: BatchState.BATCH_STATE_RUNNING, total: 50, succeeded: 11, failed: 1, running: 4, createdAt: new Date(1000) }),
      61_000,
    );
    assert.match(text, /  progress  12\/50 done \(11 succeeded, 1 failed of 50, 4 running\)\n/);
    assert.match(text, /  elapsed   1m00s\n/);
    assert.match(text, /shoal watch b_y/);
  });

  test("format - a queued batch shows its queue position and ETA; unknown ETA says so", () => {
    const created = new Date(2025, 2, 27, 11, 40, 0);
    const queued = Batch.fromPartial({ id: "b_q", state: BatchState.BATCH_STATE_QUEUED, total: 5, createdAt: created, queuePosition: 3, estimatedCompletionAt: new Date(created.getTime() + 125_000) });
    const text = describeBatch(queued, created.getTime() + 60_000);
    assert.match(text, /  queue     3 \(2 batches ahead\)\n/);
    assert.match(text, /  eta       in 1m05s \(2025-03-27 11:42:05\)\n/);
    const next = describeBatch({ ...queued, queuePosition: 1, estimatedCompletionAt: undefined }, created.getTime());
    assert.match(next, /  queue     1 \(next to start\)\n/);
    assert.match(next, /  eta       unknown yet\n/);
    const started = describeBatch({ ...queued, state: BatchState.BATCH_STATE_RUNNING, queuePosition: 0 }, created.getTime());
    assert.doesNotMatch(started, /queue/);
    assert.match(progressNote({ ...queued, queuePosition: 2 }, created.getTime() + 125_000), /^batch b_q: queue position 2 \(1 batch ahead\); expected to finish any moment now \(2025-03-27 11:42:05\)$/);
    assert.equal(progressNote({ ...queued, queuePosition: 0, estimatedCompletionAt: undefined }), "batch b_q: no estimate of its completion yet");
    // A terminal batch has neither.
    assert.doesNotMatch(describeBatch(terminalBatch()), /eta|queue/);
    const json = batchToJson(queued);
    assert.equal(json.queue_position, 3);
    assert.equal(json.estimated_completion_at, new Date(created.getTime() + 125_000).toISOString());
    assert.equal(batchToJson(terminalBatch()).estimated_completion_at, null);
  });

  test("format - progress lines carry the server's queue position and ETA", () => {
    const at = new Date(2025, 2, 27, 11, 42, 5);
    assert.equal(
      progressLine("b_x", 50, { succeeded: 0, failed: 0, cancelled: 0 }, { queuePosition: 2, completionAt: at }),
      "batch b_x: 0/50 done (0 ok, 0 failed); queue position 2; eta 2025-03-27 11:42:05",
    );
    let now = 0;
    const out = new BufferOutput(false);
    const progress = createProgress(out, "b_x", 2, { intervalMs: 0, now: () => now });
    progress.estimate({ queuePosition: 1, completionAt: undefined });
    progress.update({ succeeded: 1, failed: 0, cancelled: 0 });
    progress.estimate({ queuePosition: 0, completionAt: at });
    now = 10;
    progress.update({ succeeded: 2, failed: 0, cancelled: 0 });
    progress.stop();
    assert.equal(
      out.text,
      [
        "batch b_x: 0/2 done (0 ok, 0 failed); queue position 1",
        "batch b_x: 1/2 done (1 ok, 0 failed); queue position 1",
        "batch b_x: 1/2 done (1 ok, 0 failed); eta 2025-03-27 11:42:05",
        "batch b_x: 2/2 done (2 ok, 0 failed)",
        "",
      ].join("\n"),
    );
  });

  test("format - --json keeps zero values and uses contract field names", () => {
    const json = batchToJson(terminalBatch());
    assert.equal(json.state, "COMPLETED");
    assert.equal(json.cancelled, 0);
    const results = json.results as Record<string, unknown>[];
    assert.equal(results[0]!.index, 0);
    assert.equal(results[0]!.error, null);
    assert.deepEqual(results[0]!.artifacts, [
      { name: "image", content_type: "image/png", size_bytes: 2048, sha256: "ab", uri: "shoal://artifacts/x" },
    ]);
    assert.deepEqual(results[1]!.error, { code: "CONTENT_POLICY", message: "refused", retryable: false });
  });

  test("format - artifact files are named <index>-<name>.<ext>", () => {
    assert.equal(extensionFor("image/png"), "png");
    assert.equal(extensionFor("image/jpeg; q=0.9"), "jpg");
    assert.equal(extensionFor("application/json"), "json");
    assert.equal(extensionFor("application/x-weird+stuff"), "bin");
    assert.equal(extensionFor("audio/wav"), "wav");
    assert.equal(artifactFileName(7, 50, { name: "image", contentType: "image/png" }), "007-image.png");
    assert.equal(artifactFileName(7, 5000, { name: "logits.json", contentType: "application/json" }), "0007-logits.json");
    assert.equal(artifactFileName(1, 2, { name: "../../etc/x", contentType: "text/plain" }), "001-__.._etc_x.txt");
  });

  test("format - plain progress lines, throttled, with the final one always written", () => {
    assert.equal(progressLine("b_x", 50, { succeeded: 11, failed: 1, cancelled: 0 }), "batch b_x: 12/50 done (11 ok, 1 failed)");
    assert.equal(
      progressLine("b_x", 50, { succeeded: 1, failed: 0, cancelled: 2 }),
      "batch b_x: 3/50 done (1 ok, 0 failed, 2 cancelled)",
    );
    let now = 0;
    const out = new BufferOutput(false);
    const progress = createProgress(out, "b_x", 3, { intervalMs: 1000, now: () => now });
    progress.update({ succeeded: 1, failed: 0, cancelled: 0 });
    now = 500;
    progress.update({ succeeded: 2, failed: 0, cancelled: 0 });
    now = 600;
    progress.update({ succeeded: 2, failed: 1, cancelled: 0 });
    progress.stop();
    progress.stop();
    assert.equal(out.text, "batch b_x: 1/3 done (1 ok, 0 failed)\nbatch b_x: 3/3 done (2 ok, 1 failed)\n");
  });

  test("format - INVALID_ARGUMENT details split into one problem per field path", () => {
    assert.deepEqual(
      splitFieldProblems(
        "items[3].params.width: must be a multiple of 8 between 64 and 1024; items[4].params.prompt: required; a; b",
      ),
      ["items[3].params.width: must be a multiple of 8 between 64 and 1024", "items[4].params.prompt: required; a; b"],
    );
    assert.deepEqual(splitFieldProblems("batch refused:\nitems[0].model: unknown model\nwebhook.url: not https"), [
      "batch refused:",
      "items[0].model: unknown model",
      "webhook.url: not https",
    ]);
  });
});
