// gRPC server reflection against a real coordinator: a client that has no proto files (the way
// grpcurl works) lists the services, fetches their descriptors, builds the message types from
// them and calls SubmitBatch and GetBatch with those types alone.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import { Client, credentials, loadPackageDefinition, Metadata, type ClientDuplexStream, type ServiceError } from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import protobuf from "protobufjs";
import { Stack } from "../harness/processes.js";
import { TestClient } from "../harness/client.js";
import { pollUntilTerminal } from "../harness/batch-checks.js";

const require = createRequire(import.meta.url);
// protobufjs' descriptor extension (CommonJS): FileDescriptorProto and Root.fromDescriptor.
const descriptor = require("protobufjs/ext/descriptor") as {
  FileDescriptorProto: protobuf.Type;
  FileDescriptorSet: protobuf.Type;
};

const REFLECTION_PROTO = fileURLToPath(new URL("../../../node_modules/@grpc/reflection/build/proto/grpc/reflection/v1/reflection.proto", import.meta.url));

interface ReflectionResponse {
  list_services_response?: { service: { name: string }[] };
  file_descriptor_response?: { file_descriptor_proto: Buffer[] };
  error_response?: { error_code: number; error_message: string };
}

/** One request/response exchange on the reflection stream, with a deadline. */
function ask(stream: ClientDuplexStream<object, ReflectionResponse>, request: object): Promise<ReflectionResponse> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("reflection: no answer in 10 s")), 10_000);
    stream.once("data", (r: ReflectionResponse) => {
      clearTimeout(timer);
      resolve(r);
    });
    stream.once("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    stream.write(request);
  });
}

describe("reflection - grpcurl-style clients without the proto files", () => {
  const stack = new Stack();
  let stream: ClientDuplexStream<object, ReflectionResponse>;
  let reflectionClient: Client;

  before(async () => {
    await stack.startNats();
    await stack.startCoordinator([]);
    await stack.startWorker("w1", ["--simulate", "--vram", "40GB"]);
    const probe = new TestClient(stack.grpcAddr);
    await probe.waitForWorkers(1);
    probe.close();
    const pkg = loadPackageDefinition(loadSync(REFLECTION_PROTO, { keepCase: true })) as unknown as {
      grpc: { reflection: { v1: { ServerReflection: new (addr: string, creds: ReturnType<typeof credentials.createInsecure>) => Client & { ServerReflectionInfo(md: Metadata, opts: object): ClientDuplexStream<object, ReflectionResponse> } } } };
    };
    const ReflectionClient = pkg.grpc.reflection.v1.ServerReflection;
    const client = new ReflectionClient(stack.grpcAddr, credentials.createInsecure());
    reflectionClient = client;
    stream = client.ServerReflectionInfo(new Metadata(), { deadline: Date.now() + 60_000 });
  });

  after(async () => {
    stream?.end();
    reflectionClient?.close();
    await stack.stop();
  });

  test("reflection - lists exactly the public services", async () => {
    const r = await ask(stream, { list_services: "*" });
    const names = r.list_services_response!.service.map((s) => s.name).sort();
    assert.deepEqual(names, ["grpc.health.v1.Health", "shoal.v1.BatchService", "shoal.v1.FleetService"]);
  });

  test("reflection - the internal worker wire protocol is not described", async () => {
    const r = await ask(stream, { file_containing_symbol: "shoal.v1.Heartbeat" });
    assert.ok(r.error_response, `expected an error, got ${JSON.stringify(r).slice(0, 200)}`);
    assert.equal(r.error_response.error_code, 5); // NOT_FOUND
  });

  test("reflection - a client built from the reflected descriptors submits and reads a batch", async () => {
    const r = await ask(stream, { file_containing_symbol: "shoal.v1.BatchService" });
    const files = r.file_descriptor_response!.file_descriptor_proto.map((b) => descriptor.FileDescriptorProto.decode(b));
    // @grpc/reflection regroups the schema into one file per package; what matters is that the
    // service and every type it needs (google.protobuf.Struct included) arrive together.
    const packages = files.map((f) => (f as unknown as { package: string }).package).sort();
    assert.deepEqual(packages, ["google.protobuf", "shoal.v1"]);
    const root = (protobuf.Root as unknown as { fromDescriptor(set: object): protobuf.Root }).fromDescriptor(
      descriptor.FileDescriptorSet.fromObject({ file: files.map((f) => descriptor.FileDescriptorProto.toObject(f)) }),
    );
    const service = root.lookupService("shoal.v1.BatchService");
    assert.ok(service.methods["SubmitBatch"] && service.methods["GetBatch"] && service.methods["WatchBatch"]);

    const call = (method: string, body: object): Promise<Record<string, unknown>> => {
      const m = service.methods[method]!;
      const reqType = root.lookupType(m.requestType);
      const resType = root.lookupType(m.responseType);
      const client = new Client(stack.grpcAddr, credentials.createInsecure());
      return new Promise((resolve, reject) => {
        client.makeUnaryRequest(
          `/shoal.v1.BatchService/${method}`,
          (v: object) => Buffer.from(reqType.encode(reqType.fromObject(v)).finish()),
          (b: Buffer) => resType.toObject(resType.decode(b), { defaults: true, enums: String, longs: Number }),
          body,
          new Metadata(),
          { deadline: Date.now() + 20_000 },
          (err: ServiceError | null, res?: Record<string, unknown>) => {
            client.close();
            if (err) reject(err);
            else resolve(res!);
          },
        );
      });
    };

    const submitted = await call("SubmitBatch", {
      // Maps arrive as what the descriptor says they are on the wire: repeated key/value entries.
      items: [{ model: "sim-zero", params: { fields: [{ key: "tag", value: { stringValue: "reflected" } }] } }, { model: "sim-zero" }],
      labels: [{ key: "via", value: "reflection" }],
    });
    const batchId = String(submitted["batchId"] ?? submitted["batch_id"]);
    assert.match(batchId, /^b_/);
    const checker = new TestClient(stack.grpcAddr);
    try {
      const done = await pollUntilTerminal(checker, batchId, { timeoutMs: 30_000 });
      assert.equal(done.batch.results.length, 2);
      assert.equal(done.batch.succeeded, 2);
    } finally {
      checker.close();
    }
    const got = await call("GetBatch", { batch_id: batchId });
    assert.equal(got["state"], "BATCH_STATE_COMPLETED");
    assert.equal((got["results"] as unknown[]).length, 2);
    assert.equal(got["succeeded"], 2);
  });
});
