// An .onnx dropped with a manifest into a worker's model directory is served like the built-in
// model: validated by the coordinator, placed by its VRAM need, computed by onnxruntime.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { BatchState, ItemStatus } from "../../proto/gen/shoal/v1/shoal.js";
import { writeFixtureModel } from "../../worker/inference/fixtures.js";
import { Stack } from "../harness/processes.js";
import { TestClient, grpcCode } from "../harness/client.js";

const GiB = 1024 ** 3;

describe("model dir - custom ONNX models from a worker's model directory", () => {
  const stack = new Stack();
  let client: TestClient;

  before(async () => {
    const modelDir = join(stack.dir, "models");
    await writeFixtureModel(modelDir, { name: "scale2" });
    // Needs 3 GiB + 1 GiB: more than the small worker's 3 GiB, less than the big one's 8 GiB.
    await writeFixtureModel(modelDir, { name: "scale3-big", factor: 3, weightsBytes: 3 * GiB, activationBytes: GiB });
    await stack.startNats();
    await stack.startCoordinator();
    await Promise.all([
      stack.startWorker("small", ["--vram", "3GiB", "--model-dir", modelDir, "--max-in-flight", "4"]),
      stack.startWorker("big", ["--vram", "8GiB", "--model-dir", modelDir, "--max-in-flight", "4"]),
    ]);
    client = new TestClient(stack.grpcAddr);
    await client.waitForWorkers(2);
  });

  after(async () => {
    client?.close();
    await stack.stop();
  });

  test("model dir - a dropped model is listed, validated and computed; outputs are JSON tensors", async () => {
    const models = await client.sdk.listModels();
    const scale2 = models.find((m) => m.name === "scale2");
    assert.ok(scale2, "scale2 not listed");
    assert.deepEqual(scale2.servedBy.sort(), ["big", "small"]);
    await assert.rejects(client.submit({ items: [{ model: "scale2", params: { x: "not a tensor" } }] }), (e) => grpcCode(e) === status.INVALID_ARGUMENT);
    const batch = await client.run({ items: [{ model: "scale2", params: { x: [1, 2.5, -3] } }, { model: "scale2", params: { x: [10] } }] });
    assert.equal(batch.state, BatchState.BATCH_STATE_COMPLETED);
    assert.equal(batch.succeeded, 2);
    const out = JSON.parse((await client.artifact(batch.results[0]!.artifacts[0]!.uri)).toString());
    assert.deepEqual(out.data, [2, 5, -6]);
    const second = JSON.parse((await client.artifact(batch.results[1]!.artifacts[0]!.uri)).toString());
    assert.deepEqual(second.data, [20]);
    assert.equal(batch.results[0]!.artifacts[0]!.contentType, "application/json");
  });

  test("model dir - with workers of 3 GiB and 8 GiB, a model needing 4 GiB never reaches the small one", async () => {
    const items = Array.from({ length: 30 }, (_, i) => ({ model: "scale3-big", params: { x: [i] } }));
    const batch = await client.run({ items });
    assert.equal(batch.succeeded, 30);
    assert.equal(batch.results.length, 30);
    assert.deepEqual(
      batch.results.filter((r) => r.workerId !== "big" || r.status !== ItemStatus.ITEM_STATUS_SUCCEEDED).map((r) => [r.index, r.workerId]),
      [],
      "items that did not succeed on the big worker",
    );
    // Placed by VRAM from the first attempt: the small worker never received one to refuse.
    assert.deepEqual(batch.results.map((r) => r.attempts), Array(30).fill(1));
    const out = JSON.parse((await client.artifact(batch.results[7]!.artifacts[0]!.uri)).toString());
    assert.deepEqual(out.data, [21]);
  });
});
