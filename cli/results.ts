// Saves a terminal batch's artifacts into a folder, named so they sort in item order
// (`007-image.png`), each checked against the sha256 and size the batch recorded, plus a
// results.json that lists every item, failed ones included, so a script never has to guess
// which index is missing and why.

import { createHash } from "node:crypto";
import { createWriteStream } from "node:fs";
import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { ItemStatus, type Artifact, type Batch } from "../proto/gen/shoal/v1/shoal.js";
import type { ShoalClients } from "./client.js";
import { ArtifactIntegrityError } from "./errors.js";
import { batchStateName, formatBytes, itemStatusName, padIndex } from "./format.js";
import type { Output } from "./output.js";

export interface ManifestFile {
  name: string;
  /** Relative to the folder holding results.json. */
  path: string;
  content_type: string;
  size_bytes: number;
  sha256: string;
}

export interface ManifestItem {
  index: number;
  status: string;
  model: string;
  error: { code: string; message: string; retryable: boolean } | null;
  files: ManifestFile[];
}

export interface ResultsManifest {
  batch_id: string;
  state: string;
  total: number;
  succeeded: number;
  failed: number;
  cancelled: number;
  items: ManifestItem[];
}

export interface SaveResultsOutcome {
  manifest: ResultsManifest;
  filesWritten: number;
  bytesWritten: number;
  /** Artifacts that could not be fetched or did not verify; their files are not kept. */
  problems: string[];
}

const EXTENSIONS: Record<string, string> = {
  "image/png": "png",
  "image/jpeg": "jpg",
  "image/webp": "webp",
  "image/gif": "gif",
  "application/json": "json",
  "text/plain": "txt",
  "application/octet-stream": "bin",
};

/** png for image/png; unknown types fall back to their subtype when it is a plain word. */
export function extensionFor(contentType: string): string {
  const type = contentType.split(";", 1)[0]!.trim().toLowerCase();
  const known = EXTENSIONS[type];
  if (known) return known;
  const subtype = type.split("/")[1] ?? "";
  return /^[a-z0-9]{1,10}$/.test(subtype) ? subtype : "bin";
}

/** `<index padded to 3+ digits>-<artifact name>.<ext>`, safe on every filesystem. */
export function artifactFileName(index: number, total: number, artifact: Pick<Artifact, "name" | "contentType">): string {
  const ext = extensionFor(artifact.contentType);
  const name = (artifact.name || "artifact").replace(/[^A-Za-z0-9._-]/g, "_").replace(/^\.+/, "_");
  const base = name.toLowerCase().endsWith(`.${ext}`) ? name : `${name}.${ext}`;
  return `${padIndex(index, total)}-${base}`;
}

export interface SaveResultsOptions {
  /** Artifacts fetched at once; a few overlap round trips without flooding the coordinator. */
  concurrency?: number;
}

export async function saveResults(
  clients: ShoalClients,
  batch: Batch,
  outDir: string,
  out: Output,
  options: SaveResultsOptions = {},
): Promise<SaveResultsOutcome> {
  await mkdir(outDir, { recursive: true });
  const items: ManifestItem[] = batch.results.map((r) => ({
    index: r.index,
    status: itemStatusName(r.status),
    model: r.model,
    error: r.error ? { code: r.error.code, message: r.error.message, retryable: r.error.retryable } : null,
    files: [],
  }));

  const jobs: { item: ManifestItem; artifact: Artifact }[] = [];
  batch.results.forEach((r, i) => {
    if (r.status !== ItemStatus.ITEM_STATUS_SUCCEEDED) return;
    for (const artifact of r.artifacts) jobs.push({ item: items[i]!, artifact });
  });

  const outcome: SaveResultsOutcome = {
    manifest: {
      batch_id: batch.id,
      state: batchStateName(batch.state),
      total: batch.total,
      succeeded: batch.succeeded,
      failed: batch.failed,
      cancelled: batch.cancelled,
      items,
    },
    filesWritten: 0,
    bytesWritten: 0,
    problems: [],
  };

  // Downloads finish in any order; files are listed in artifact order all the same.
  const saved: (ManifestFile | undefined)[] = new Array(jobs.length);
  const run = async (jobIndex: number): Promise<void> => {
    const { item, artifact } = jobs[jobIndex]!;
    const fileName = artifactFileName(item.index, batch.total, artifact);
    const path = join(outDir, fileName);
    try {
      const { sha256, size } = await downloadVerified(clients, artifact, path);
      saved[jobIndex] = { name: artifact.name, path: fileName, content_type: artifact.contentType, size_bytes: size, sha256 };
      outcome.filesWritten++;
      outcome.bytesWritten += size;
      out.write(`wrote ${path} (${formatBytes(size)})\n`);
    } catch (err) {
      outcome.problems.push(`#${padIndex(item.index, batch.total)} ${artifact.name}: ${(err as Error).message}`);
    }
  };
  await runPool(jobs.map((_, i) => i), options.concurrency ?? 4, run);
  jobs.forEach((job, i) => {
    const file = saved[i];
    if (file) job.item.files.push(file);
  });
  await writeFile(join(outDir, "results.json"), JSON.stringify(outcome.manifest, null, 2) + "\n");
  return outcome;
}

/** Streams one artifact to `path`, through a `.part` file so a half-written file never stays. */
async function downloadVerified(
  clients: ShoalClients,
  artifact: Artifact,
  path: string,
): Promise<{ sha256: string; size: number }> {
  const part = `${path}.part`;
  const hash = createHash("sha256");
  let size = 0;
  try {
    await pipeline(
      async function* () {
        for await (const chunk of clients.getArtifact(artifact.uri)) {
          hash.update(chunk);
          size += chunk.length;
          yield chunk;
        }
      },
      createWriteStream(part),
    );
    const sha256 = hash.digest("hex");
    if (artifact.sha256 && sha256 !== artifact.sha256.toLowerCase()) {
      throw new ArtifactIntegrityError(artifact.uri, `sha256 mismatch: expected ${artifact.sha256}, got ${sha256}; file not kept`);
    }
    if (artifact.sizeBytes && size !== artifact.sizeBytes) {
      throw new ArtifactIntegrityError(artifact.uri, `size mismatch: expected ${artifact.sizeBytes} bytes, got ${size}; file not kept`);
    }
    await rename(part, path);
    return { sha256, size };
  } catch (err) {
    await rm(part, { force: true });
    throw err;
  }
}

async function runPool<T>(jobs: T[], concurrency: number, run: (job: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < jobs.length) await run(jobs[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(Math.max(concurrency, 1), jobs.length) }, lane));
}
