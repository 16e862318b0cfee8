// Writes one artifact into the object store the way @nats-io/obj lays objects out (chunks on
// `$O.<bucket>.C.<nuid>`, then the object's info on `$O.<bucket>.M.<base64url(name)>`), so the
// coordinator reads it back with the library's get() and its digest check. Written by hand
// because the library's put() first reads the store (a STREAM.MSG.GET, which would let a worker
// identity read every stored message, other tenants' images included) and purges old chunks
// (STREAM.PURGE). This writer only publishes, so a worker identity needs publish rights on the
// bucket's subjects and nothing else, and the info is published with "expected last subject
// sequence 0": the server refuses it if an object of that name exists, so a worker never
// replaces an artifact, its own or another's.

import { createHash } from "node:crypto";
import type { JetStreamClient } from "@nats-io/jetstream";
import { headers, nuid } from "@nats-io/transport-node";
import { JetStreamPublisher } from "../shared/jetstream-publisher.js";

const CHUNK_BYTES = 128 * 1024;

/**
 * `sha256` is the data's SHA-256 digest (32 bytes) when the caller has it already (the worker
 * hashes each artifact once, off its main thread, for both this and the outcome); otherwise it is
 * computed here.
 */
export async function writeArtifact(
  js: JetStreamClient | JetStreamPublisher,
  bucket: string,
  name: string,
  contentType: string,
  data: Uint8Array,
  maxPayload: number,
  timeoutMs = 5000,
  sha256?: Uint8Array,
): Promise<void> {
  // The worker passes its JetStreamPublisher (acks gathered on one subscription, no per-message
  // request objects); anything else gets js.publish(), same guarantee.
  const publish = (subject: string, payload: Uint8Array | string, h?: ReturnType<typeof headers>): Promise<unknown> =>
    js instanceof JetStreamPublisher ? js.publish(subject, payload, { timeoutMs, ...(h ? { headers: h } : {}) }) : js.publish(subject, payload, { timeout: timeoutMs, ...(h ? { headers: h } : {}) });
  const id = nuid.next();
  const chunkSubject = `$O.${bucket}.C.${id}`;
  const chunkBytes = Math.max(1, Math.min(CHUNK_BYTES, maxPayload));
  // Every chunk is sent at once and then awaited together: one connection keeps their order in
  // the stream, and the info that makes the object visible goes only after all are stored.
  const writes: Promise<unknown>[] = [];
  for (let off = 0; off < data.length; off += chunkBytes) {
    writes.push(publish(chunkSubject, data.subarray(off, off + chunkBytes)));
  }
  const chunks = writes.length;
  await Promise.all(writes);
  const info = {
    name,
    description: contentType,
    options: { max_chunk_size: chunkBytes },
    bucket,
    nuid: id,
    size: data.length,
    chunks,
    mtime: new Date().toISOString(),
    digest: `SHA-256=${urlSafe(Buffer.from(sha256 ?? createHash("sha256").update(data).digest()).toString("base64"))}`,
    deleted: false,
  };
  const h = headers();
  h.set("Nats-Rollup", "sub");
  h.set("Nats-Expected-Last-Subject-Sequence", "0");
  await publish(metaSubject(bucket, name), JSON.stringify(info), h);
}

/** The library's "base64url with padding". */
function urlSafe(base64: string): string {
  return base64.replace(/\+/g, "-").replace(/\//g, "_");
}

export function metaSubject(bucket: string, name: string): string {
  return `$O.${bucket}.M.${urlSafe(Buffer.from(name, "latin1").toString("base64"))}`;
}
