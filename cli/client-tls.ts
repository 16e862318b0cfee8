// TLS of gRPC clients (CLI, SDK, gateway): `--ca`, `--cert`, `--key`, or SHOAL_CA, SHOAL_CERT,
// SHOAL_KEY, each a path to a PEM file. Any of them turns TLS on: `--ca` is the CA that signed
// the coordinator's certificate (without it the system's roots are used), `--cert` and `--key`
// are this client's certificate for a coordinator that requires one (mTLS).

import { readFileSync } from "node:fs";
import { credentials, type ChannelCredentials } from "@grpc/grpc-js";
import { ConfigError, errorMessage } from "../shared/errors.js";

export interface ClientTlsPaths {
  ca?: string;
  cert?: string;
  key?: string;
}

/** PEM contents, read once. */
export interface ClientTls {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

function nonEmpty(v: string | undefined): string | undefined {
  return v !== undefined && v.trim() !== "" ? v.trim() : undefined;
}

/** The paths from flags, each falling back to its env var. */
export function clientTlsPaths(flags: ClientTlsPaths = {}, env: NodeJS.ProcessEnv = process.env): ClientTlsPaths {
  return {
    ca: nonEmpty(flags.ca) ?? nonEmpty(env.SHOAL_CA),
    cert: nonEmpty(flags.cert) ?? nonEmpty(env.SHOAL_CERT),
    key: nonEmpty(flags.key) ?? nonEmpty(env.SHOAL_KEY),
  };
}

/** A PEM file for `option`; a ConfigError naming the option when it cannot be read or holds no PEM. */
export function readPem(option: string, path: string): Buffer {
  try {
    const pem = readFileSync(path);
    if (!pem.includes("-----BEGIN ")) throw new Error("no PEM block (-----BEGIN ...) in it");
    return pem;
  } catch (err) {
    throw new ConfigError(option, `cannot use ${path}: ${errorMessage(err)}`);
  }
}

/** Reads the files; undefined when none is given (plaintext). Throws ConfigError naming the flag. */
export function loadClientTls(paths: ClientTlsPaths): ClientTls | undefined {
  if (!paths.ca && !paths.cert && !paths.key) return undefined;
  if (paths.cert && !paths.key) throw new ConfigError("--key", "--cert (SHOAL_CERT) was given without its private key (--key, SHOAL_KEY)");
  if (paths.key && !paths.cert) throw new ConfigError("--cert", "--key (SHOAL_KEY) was given without its certificate (--cert, SHOAL_CERT)");
  return {
    ca: paths.ca ? readPem("--ca", paths.ca) : undefined,
    cert: paths.cert ? readPem("--cert", paths.cert) : undefined,
    key: paths.key ? readPem("--key", paths.key) : undefined,
  };
}

export function channelCredentials(tls: ClientTls | undefined): ChannelCredentials {
  if (!tls) return credentials.createInsecure();
  return credentials.createSsl(tls.ca ?? null, tls.key ?? null, tls.cert ?? null);
}
