// Signed, expiring image URLs. The gateway keeps no state, so everything a download needs
// travels in the URL's token and is covered by an HMAC-SHA256 under the gateway's signing key:
// the artifact URI, the expiry, the content type, size and digest (for the response headers)
// and, when the batch was submitted with an API key, that key sealed with AES-256-GCM, so the
// download can be made on the caller's behalf (the coordinator still checks tenancy) without
// the caller sending a key and without the key being readable from the URL. Any change to the
// token, or a token past its expiry, is refused (403). Both keys are derived from the one
// signing key with HKDF, so gateways that share the key accept each other's URLs.

import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes, timingSafeEqual } from "node:crypto";
import { ApiError } from "./errors.js";

export interface ArtifactRef {
  /** shoal://artifacts/<batch>/<index>/<token>/<name> */
  uri: string;
  contentType: string;
  sizeBytes: number;
  sha256: string;
}

export interface VerifiedUrl extends ArtifactRef {
  expiresAtMs: number;
  /** The API key the batch was submitted with; undefined when it had none. */
  apiKey: string | undefined;
}

interface Payload {
  u: string;
  e: number;
  t: string;
  n: number;
  h: string;
  k?: string;
}

const b64url = (b: Buffer) => b.toString("base64url");

export class UrlSigner {
  private readonly macKey: Buffer;
  private readonly sealKey: Buffer;

  constructor(signingKey: Buffer) {
    this.macKey = Buffer.from(hkdfSync("sha256", signingKey, "shoal-gateway", "image-url-mac", 32));
    this.sealKey = Buffer.from(hkdfSync("sha256", signingKey, "shoal-gateway", "image-url-seal", 32));
  }

  /** The token of one artifact, valid until `expiresAtMs` (rounded down to the second). */
  sign(ref: ArtifactRef, expiresAtMs: number, apiKey: string | undefined): string {
    const payload: Payload = { u: ref.uri, e: Math.floor(expiresAtMs / 1000), t: ref.contentType, n: ref.sizeBytes, h: ref.sha256 };
    if (apiKey) payload.k = this.seal(apiKey, ref.uri);
    const body = b64url(Buffer.from(JSON.stringify(payload)));
    return `${body}.${this.mac(body)}`;
  }

  /** The token's content; ApiError 403 when it was altered, made with another key, or expired. */
  verify(token: string, nowMs = Date.now()): VerifiedUrl {
    const invalid = () => new ApiError(403, "url_invalid", "this image URL is not valid: it was altered or signed by another key");
    const dot = token.indexOf(".");
    if (dot <= 0) throw invalid();
    const body = token.slice(0, dot);
    const sig = Buffer.from(token.slice(dot + 1), "base64url");
    const want = Buffer.from(this.mac(body), "base64url");
    if (sig.length !== want.length || !timingSafeEqual(sig, want)) throw invalid();
    let p: Payload;
    try {
      p = JSON.parse(Buffer.from(body, "base64url").toString("utf8")) as Payload;
    } catch {
      throw invalid();
    }
    if (typeof p.u !== "string" || typeof p.e !== "number" || typeof p.t !== "string" || typeof p.n !== "number" || typeof p.h !== "string") throw invalid();
    if (p.e * 1000 <= nowMs) throw new ApiError(403, "url_expired", "this image URL has expired; get a fresh one from GET /v1/batch/{id}");
    let apiKey: string | undefined;
    if (p.k !== undefined) {
      try {
        apiKey = this.unseal(p.k, p.u);
      } catch {
        throw invalid();
      }
    }
    return { uri: p.u, contentType: p.t, sizeBytes: p.n, sha256: p.h, expiresAtMs: p.e * 1000, apiKey };
  }

  private mac(body: string): string {
    return b64url(createHmac("sha256", this.macKey).update(body).digest());
  }

  private seal(apiKey: string, uri: string): string {
    const iv = randomBytes(12);
    const c = createCipheriv("aes-256-gcm", this.sealKey, iv).setAAD(Buffer.from(uri));
    const ct = Buffer.concat([c.update(apiKey, "utf8"), c.final()]);
    return b64url(Buffer.concat([iv, ct, c.getAuthTag()]));
  }

  private unseal(sealed: string, uri: string): string {
    const raw = Buffer.from(sealed, "base64url");
    if (raw.length < 12 + 16) throw new Error("short");
    const d = createDecipheriv("aes-256-gcm", this.sealKey, raw.subarray(0, 12)).setAAD(Buffer.from(uri));
    d.setAuthTag(raw.subarray(raw.length - 16));
    return Buffer.concat([d.update(raw.subarray(12, raw.length - 16)), d.final()]).toString("utf8");
  }
}
