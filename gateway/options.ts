// The gateway's options in two stages, as the worker's are: what a user may give (every field
// optional, `@default` in the comment) and the complete object the gateway runs with. The CLI
// takes its flag defaults from GATEWAY_DEFAULTS instead of restating them.

import { randomBytes } from "node:crypto";
import { clientTlsPaths, loadClientTls, type ClientTls } from "../cli/client-tls.js";
import { ConfigError } from "../shared/errors.js";
import { parseBytes, parseDuration, parseIntOption } from "../shared/units.js";

/** Every field present, durations in ms: what the gateway runs with. */
export interface GatewayOptions {
  /** The coordinator's gRPC address (a comma-separated list where the SDK takes one). */
  addr: string;
  httpHost: string;
  /** 0 picks a free port (tests). */
  httpPort: number;
  /** Base of the image URLs handed out; empty: taken from each request's Host header. */
  publicUrl: string;
  /** Key of the HMAC on image URLs (and of the API key sealed into them). */
  urlSigningKey: Buffer;
  /** True when no key was given and a random one was made for this process. */
  urlSigningKeyGenerated: boolean;
  urlTtlMs: number;
  /** The model of a request that names none. */
  defaultModel: string;
  /** How long POST /v1/batch waits for the results before answering 504 with the batch id. */
  waitTimeoutMs: number;
  /** Most requests per batch checked here; 0 leaves the limit to the coordinator (--max-items). */
  maxRequests: number;
  /** Largest request body; larger ones are answered 413. */
  maxBodyBytes: number;
  /** SDK clients kept (one per distinct API key), least recently used closed first. */
  maxClients: number;
  /** Deadline of the gateway's unary calls to the coordinator. */
  rpcTimeoutMs: number;
  /** TLS toward the coordinator (--ca, --cert, --key); absent: plaintext. */
  tls?: ClientTls;
}

export const GATEWAY_DEFAULTS = {
  addr: "127.0.0.1:50051",
  httpHost: "127.0.0.1",
  httpPort: 8080,
  publicUrl: "",
  urlTtl: "1h",
  defaultModel: "imagegen-tiny",
  waitTimeout: "10m",
  maxRequests: 0,
  maxBody: "4MiB",
  maxClients: 256,
  rpcTimeout: "30s",
} as const;

/** The raw values of the flags (commander's names), all strings as given. */
export interface GatewayFlags {
  addr?: string;
  httpHost?: string;
  httpPort?: string;
  publicUrl?: string;
  urlSigningKey?: string;
  urlTtl?: string;
  model?: string;
  waitTimeout?: string;
  maxRequests?: string;
  maxBody?: string;
  maxClients?: string;
  rpcTimeout?: string;
  ca?: string;
  cert?: string;
  key?: string;
}

const MIN_KEY_BYTES = 32;

/** Checks every flag once; a bad one throws ConfigError naming it. */
export function gatewayOptionsFrom(raw: GatewayFlags): GatewayOptions {
  const d = GATEWAY_DEFAULTS;
  const addr = (raw.addr ?? d.addr).trim();
  if (addr === "") throw new ConfigError("--addr", "the coordinator's address is required");
  let publicUrl = (raw.publicUrl ?? d.publicUrl).trim();
  if (publicUrl !== "") {
    let u: URL;
    try {
      u = new URL(publicUrl);
    } catch {
      throw new ConfigError("--public-url", `"${publicUrl}" is not an absolute URL`);
    }
    if (u.protocol !== "http:" && u.protocol !== "https:") throw new ConfigError("--public-url", "must be http or https");
    publicUrl = publicUrl.replace(/\/+$/, "");
  }
  const given = raw.urlSigningKey?.trim() ?? "";
  if (given !== "" && Buffer.byteLength(given) < MIN_KEY_BYTES) {
    throw new ConfigError("--url-signing-key", `must be at least ${MIN_KEY_BYTES} characters (e.g. \`openssl rand -hex 32\`)`);
  }
  const ttl = parseDuration("--url-ttl", raw.urlTtl ?? d.urlTtl);
  if (ttl < 1000) throw new ConfigError("--url-ttl", "must be at least 1s");
  const model = (raw.model ?? d.defaultModel).trim();
  if (model === "") throw new ConfigError("--model", "must name a model");
  const wait = parseDuration("--wait-timeout", raw.waitTimeout ?? d.waitTimeout);
  if (wait < 1000) throw new ConfigError("--wait-timeout", "must be at least 1s");
  const rpc = parseDuration("--rpc-timeout", raw.rpcTimeout ?? d.rpcTimeout);
  if (rpc < 100) throw new ConfigError("--rpc-timeout", "must be at least 100ms");
  return {
    addr,
    httpHost: raw.httpHost ?? d.httpHost,
    httpPort: parseIntOption("--http-port", raw.httpPort ?? String(d.httpPort), 0, 65535),
    publicUrl,
    urlSigningKey: given !== "" ? Buffer.from(given) : randomBytes(32),
    urlSigningKeyGenerated: given === "",
    urlTtlMs: ttl,
    defaultModel: model,
    waitTimeoutMs: wait,
    maxRequests: parseIntOption("--max-requests", raw.maxRequests ?? String(d.maxRequests), 0, 100_000),
    maxBodyBytes: parseBytes("--max-body", raw.maxBody ?? d.maxBody),
    maxClients: parseIntOption("--max-clients", raw.maxClients ?? String(d.maxClients), 1, 100_000),
    rpcTimeoutMs: rpc,
    tls: loadClientTls(clientTlsPaths({ ca: raw.ca, cert: raw.cert, key: raw.key })),
  };
}
