// The container images of deploy/containers, built with podman from the real Containerfile and
// run: nats-server, a coordinator and a worker, each in its own container (host network, ports
// of their own), finish a batch submitted by the CLI from outside. Offline: the base is a local
// Debian minbase with this machine's node (cached by content hash, see harness/podman.ts; the
// first run takes minutes), the build context holds this checkout's dist/ and its production
// node_modules (the Containerfile's prebuilt path), and nats-server's image carries this
// machine's nats-server binary. The GPU image needs the CUDA base and a download from NuGet, so
// here only its recipe is checked; scripts/gpu-check.sh is the check on a GPU machine.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { copyFileSync, cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative, sep } from "node:path";
import { CLI, ROOT, freePort, natsServerBinary } from "../harness/processes.js";
import { BUILD_FLAGS, imageExists, localBaseImage, requireTools, run, RUN_FLAGS, sha256File } from "../harness/podman.js";
import { createHash, randomBytes } from "node:crypto";

const CONTAINERFILE = join(ROOT, "deploy/containers/Containerfile");
const GPU_CONTAINERFILE = join(ROOT, "deploy/containers/Containerfile.gpu");
const id = randomBytes(4).toString("hex");
const shoalTag = `localhost/shoal-test:${id}`;
const names = { nats: `shoal-test-nats-${id}`, coordinator: `shoal-test-coord-${id}`, worker: `shoal-test-worker-${id}` };
let staging: string | undefined;
let base = "";
let natsTag = "";

/** The build context: package files, bin/, dist/ (no tests) and only the production node_modules. */
function stageContext(): string {
  const dir = mkdtempSync(join(tmpdir(), "shoal-image-ctx-"));
  for (const f of ["package.json", "package-lock.json", ".npmrc"]) copyFileSync(join(ROOT, f), join(dir, f));
  cpSync(join(ROOT, "bin"), join(dir, "bin"), { recursive: true });
  // The .proto files: the coordinator's gRPC reflection serves the schema from them.
  cpSync(join(ROOT, "proto"), join(dir, "proto"), { recursive: true, filter: (src) => !/[/\\]gen([/\\]|$)/.test(relative(ROOT, src)) });
  cpSync(join(ROOT, "dist"), join(dir, "dist"), { recursive: true, filter: (src) => !/^dist[/\\](test|bench)([/\\]|$)/.test(relative(ROOT, src)) });
  const prod = execFileSync("npm", ["ls", "--omit=dev", "--all", "--parseable"], { cwd: ROOT, encoding: "utf8", timeout: 60_000 })
    .split("\n")
    .map((p) => relative(ROOT, p))
    .filter((p) => p.startsWith(`node_modules${sep}`) && !p.slice("node_modules/".length).includes(`node_modules${sep}`));
  assert.ok(prod.some((p) => p.endsWith("onnxruntime-node")), "npm ls lists the production dependencies");
  const otherPlatforms = /onnxruntime-node[/\\]bin[/\\]napi-v6[/\\](darwin|win32|linux[/\\]arm64)/;
  for (const p of prod) cpSync(join(ROOT, p), join(dir, p), { recursive: true, filter: (src) => !otherPlatforms.test(src) });
  return dir;
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`${what}: not within ${timeoutMs} ms`);
}

async function logsOf(name: string): Promise<string> {
  const r = await run("podman", ["logs", name], 30_000);
  return (r.stdout + r.stderr).slice(-4000);
}

describe("container images", () => {
  before(async () => {
    requireTools(["podman", "runc", "mmdebstrap"]);
    base = await localBaseImage(process.execPath, 900_000);
    // nats-server's image: the base plus this machine's (static) nats-server.
    const nats = natsServerBinary();
    natsTag = `localhost/shoal-test-nats:${createHash("sha256").update(base).update(await sha256File(nats)).digest("hex").slice(0, 16)}`;
    if (!(await imageExists(natsTag))) {
      const ctx = mkdtempSync(join(tmpdir(), "shoal-nats-ctx-"));
      try {
        copyFileSync(nats, join(ctx, "nats-server"));
        writeFileSync(join(ctx, "Containerfile"), `FROM ${base}\nCOPY nats-server /usr/local/bin/nats-server\nUSER 65534:65534\nENTRYPOINT ["/usr/local/bin/nats-server"]\n`);
        const r = await run("podman", ["build", ...BUILD_FLAGS, "-t", natsTag, ctx], 300_000);
        assert.equal(r.code, 0, `building the nats-server image: ${r.stderr.slice(-3000)}`);
      } finally {
        rmSync(ctx, { recursive: true, force: true });
      }
    }
  });

  after(async () => {
    await run("podman", ["rm", "-f", "-t", "2", ...Object.values(names)], 60_000);
    await run("podman", ["rmi", "-f", shoalTag], 60_000);
    if (staging) rmSync(staging, { recursive: true, force: true });
  });

  test("the Containerfile builds the shoal image on a local base, with the CLI as its entrypoint", { timeout: 900_000 }, async () => {
    staging = stageContext();
    const r = await run("podman", ["build", ...BUILD_FLAGS, "--build-arg", `BASE=${base}`, "-f", CONTAINERFILE, "-t", shoalTag, staging], 600_000);
    assert.equal(r.code, 0, `podman build: ${r.stdout.slice(-2000)}\n${r.stderr.slice(-3000)}`);
    assert.match(r.stdout + r.stderr, /using the prebuilt dist\/ and node_modules\/ of the build context/);
    const version = await run("podman", ["run", "--rm", ...RUN_FLAGS, shoalTag, "--version"], 120_000);
    assert.equal(version.stdout.trim(), JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version, version.stderr);
    const bad = await run("podman", ["run", "--rm", ...RUN_FLAGS, shoalTag, "worker", "--gpu", "fourth"], 120_000);
    assert.equal(bad.code, 2, "a bad flag is refused with exit 2 inside the image too");
    assert.match(bad.stderr, /--gpu/);
  });

  test("nats-server, a coordinator and a worker run from the images and finish a batch", { timeout: 600_000 }, async () => {
    assert.ok(await imageExists(shoalTag), "the shoal image was built by the test before");
    const [natsPort, grpcPort] = [await freePort(), await freePort()];
    const common = ["run", "-d", ...RUN_FLAGS, "--network", "host"];
    let r = await run("podman", [...common, "--name", names.nats, natsTag, "-js", "-a", "127.0.0.1", "-p", String(natsPort), "-sd", "/tmp/jetstream"], 120_000);
    assert.equal(r.code, 0, r.stderr);
    // The coordinator is configured by env vars, the worker by flags: both paths of the CLI.
    r = await run("podman", [...common, "--name", names.coordinator,
      "-e", `SHOAL_NATS_URL=nats://127.0.0.1:${natsPort}`, "-e", "SHOAL_GRPC_HOST=127.0.0.1", "-e", `SHOAL_GRPC_PORT=${grpcPort}`, "-e", "SHOAL_METRICS_PORT=0",
      shoalTag, "coordinator"], 120_000);
    assert.equal(r.code, 0, r.stderr);
    r = await run("podman", [...common, "--name", names.worker, shoalTag, "worker", "--nats", `nats://127.0.0.1:${natsPort}`, "--id", `img-${id}`, "--gpu", "none", "--vram", "2GiB", "--metrics-port", "0"], 120_000);
    assert.equal(r.code, 0, r.stderr);
    const addr = `127.0.0.1:${grpcPort}`;
    await waitFor(
      "the worker registered with the coordinator",
      async () => (await run(process.execPath, [CLI, "--addr", addr, "workers"], 30_000)).stdout.includes(`img-${id}`),
      180_000,
    ).catch(async (err: Error) => assert.fail(`${err.message}\ncoordinator: ${await logsOf(names.coordinator)}\nworker: ${await logsOf(names.worker)}`));
    const dir = mkdtempSync(join(tmpdir(), "shoal-image-batch-"));
    try {
      const items = [0, 1, 2].map((i) => ({ model: "imagegen-tiny", params: { prompt: `from a container ${i}`, width: 64, height: 64, steps: 2 } }));
      writeFileSync(join(dir, "batch.json"), JSON.stringify(items));
      const submit = await run(process.execPath, [CLI, "--addr", addr, "submit", join(dir, "batch.json"), "--wait"], 300_000);
      assert.equal(submit.code, 0, `${submit.stdout}\n${submit.stderr}\nworker: ${await logsOf(names.worker)}`);
      assert.match(submit.stdout + submit.stderr, /COMPLETED in .*: 3 succeeded of 3/);
      const batchId = /batch (b_\w+)/.exec(submit.stdout + submit.stderr)![1]!;
      const out = join(dir, "out");
      mkdirSync(out);
      const results = await run(process.execPath, [CLI, "--addr", addr, "results", batchId, "--out", out], 120_000);
      assert.equal(results.code, 0, results.stderr);
      const summary = JSON.parse(readFileSync(join(out, "results.json"), "utf8")) as unknown;
      assert.equal(JSON.stringify(summary).match(/SUCCEEDED/g)?.length, 3, "three images, computed in the worker's container, fetched through the coordinator's");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("Containerfile.gpu: a CUDA base as a build argument, onnxruntime-node's CUDA provider installed with its own flag and checked", { timeout: 10_000 }, () => {
    const text = readFileSync(GPU_CONTAINERFILE, "utf8");
    assert.match(text, /^ARG BASE=docker\.io\/nvidia\/cuda:12\.[\d.]+-cudnn-runtime-/m);
    assert.match(text, /^FROM \$\{BASE\}$/m);
    assert.match(text, /ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules\/onnxruntime-node\/script\/install\.js/);
    assert.match(text, /test -f node_modules\/onnxruntime-node\/bin\/napi-v6\/linux\/x64\/libonnxruntime_providers_cuda\.so/);
    assert.match(text, /SHOAL_EXECUTION_PROVIDER=cuda/);
    const cpu = readFileSync(CONTAINERFILE, "utf8");
    const entry = (t: string) => /^ENTRYPOINT (.+)$/m.exec(t)?.[1];
    assert.equal(entry(text), entry(cpu), "both images run the same shoal CLI");
  });
});
