// Container images for tests, built and run with podman, offline. This machine's podman needs
// the runc runtime and explicit ulimits (crun fails on its cgroup setup). The base image is a
// Debian bookworm minbase made by mmdebstrap from Debian's packages, with this machine's node
// copied in (bookworm's own nodejs is 18; Shoal needs 20), and is cached in podman's store
// under a tag derived from the recipe and the node binary's hash, so reruns skip it.

import { execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream, existsSync } from "node:fs";

export const RUN_FLAGS = ["--runtime", "runc", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"];
/** podman build takes the same ulimits; its runtime is chosen with --runtime too. */
export const BUILD_FLAGS = ["--runtime", "runc", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768", "--pull=never"];

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function run(cmd: string, args: string[], timeoutMs: number, input?: string): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) || 1 : 0, stdout, stderr });
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}

/** Throws naming what is missing: the image tests cannot run without these. */
export function requireTools(tools: string[]): void {
  const path = (process.env.PATH ?? "").split(":");
  const missing = tools.filter((t) => !path.some((d) => d && existsSync(`${d}/${t}`)));
  if (missing.length > 0) {
    throw new Error(`needs ${missing.join(", ")} (Debian: apt-get install podman buildah runc mmdebstrap; scripts/setup.sh installs them)`);
  }
}

export function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash("sha256");
    createReadStream(path).on("data", (d) => h.update(d)).on("end", () => resolve(h.digest("hex"))).on("error", reject);
  });
}

export async function imageExists(tag: string): Promise<boolean> {
  return (await run("podman", ["image", "exists", tag], 30_000)).code === 0;
}

const BASE_RECIPE = "mmdebstrap --variant=minbase bookworm + copy-in node /usr/local/bin (v1)";

/** The local base image (Debian minbase + this node), built once and then found by its tag. */
export async function localBaseImage(nodeBinary: string, timeoutMs: number): Promise<string> {
  const hash = createHash("sha256").update(BASE_RECIPE).update(await sha256File(nodeBinary)).digest("hex").slice(0, 16);
  const tag = `localhost/shoal-test-base:${hash}`;
  if (await imageExists(tag)) return tag;
  // mmdebstrap writes the tarball to stdout; podman import reads it from stdin.
  await new Promise<void>((resolve, reject) => {
    const mm = spawn("mmdebstrap", ["--variant=minbase", "--quiet", `--customize-hook=copy-in ${nodeBinary} /usr/local/bin`, "bookworm", "-"], { stdio: ["ignore", "pipe", "pipe"] });
    const imp = spawn("podman", ["import", "-", tag], { stdio: ["pipe", "pipe", "pipe"] });
    let err = "";
    mm.stderr.on("data", (d) => (err += d));
    imp.stderr.on("data", (d) => (err += d));
    mm.stdout.pipe(imp.stdin);
    const timer = setTimeout(() => {
      mm.kill("SIGKILL");
      imp.kill("SIGKILL");
    }, timeoutMs);
    const exited = (p: ReturnType<typeof spawn>) => new Promise<number | null>((r) => p.once("exit", (c) => r(c)));
    void Promise.all([exited(mm), exited(imp)]).then(([m, i]) => {
      clearTimeout(timer);
      if (m === 0 && i === 0) resolve();
      else reject(new Error(`building the base image failed (mmdebstrap exit ${m}, podman import exit ${i}): ${err.slice(-2000)}`));
    });
  });
  return tag;
}
