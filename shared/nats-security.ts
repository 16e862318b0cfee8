// Who a process is on NATS and how it talks to it: one authentication method (creds file, nkey
// seed file, user and password, or token) and TLS (a CA to trust, a client certificate and key).
// Checked once at start, before anything connects, so a missing file or two methods at once is
// a one-line configuration error naming the flag, not an "Authorization Violation" later.

import { accessSync, constants, readFileSync } from "node:fs";
import { credsAuthenticator, nkeyAuthenticator, type NodeConnectionOptions } from "@nats-io/transport-node";
import { ConfigError } from "./errors.js";

export interface NatsSecurity {
  /** A `.creds` file (JWT and nkey seed, as `nsc` writes it). */
  credsFile?: string;
  /** A file holding a user nkey seed (`SU...`). */
  nkeyFile?: string;
  user?: string;
  password?: string;
  token?: string;
  /** PEM CA bundle used to check the server's certificate. */
  tlsCaFile?: string;
  /** PEM client certificate and key, for servers that verify clients (`verify: true`). */
  tlsCertFile?: string;
  tlsKeyFile?: string;
}

/** The flags, as commander names their values. */
export interface NatsSecurityRaw {
  natsCreds?: unknown;
  natsNkey?: unknown;
  natsUser?: unknown;
  natsPassword?: unknown;
  natsToken?: unknown;
  natsTlsCa?: unknown;
  natsTlsCert?: unknown;
  natsTlsKey?: unknown;
}

const text = (v: unknown): string | undefined => (typeof v === "string" && v.trim() !== "" ? v : undefined);

function readable(flag: string, file: string): string {
  try {
    accessSync(file, constants.R_OK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ConfigError(flag, `${file} ${code === "ENOENT" ? "does not exist" : `cannot be read (${code ?? "error"})`}`);
  }
  return file;
}

/** Parses and checks the NATS identity and TLS flags; throws ConfigError naming the flag. */
export function natsSecurityFrom(raw: NatsSecurityRaw): NatsSecurity {
  const s: NatsSecurity = {
    credsFile: text(raw.natsCreds),
    nkeyFile: text(raw.natsNkey),
    user: text(raw.natsUser),
    password: text(raw.natsPassword),
    token: text(raw.natsToken),
    tlsCaFile: text(raw.natsTlsCa),
    tlsCertFile: text(raw.natsTlsCert),
    tlsKeyFile: text(raw.natsTlsKey),
  };
  const methods = [
    s.credsFile && "--nats-creds",
    s.nkeyFile && "--nats-nkey",
    (s.user || s.password) && "--nats-user/--nats-password",
    s.token && "--nats-token",
  ].filter((m): m is string => Boolean(m));
  if (methods.length > 1) throw new ConfigError(methods[1]!.split("/")[0]!, `conflicts with ${methods[0]}: give one way to authenticate to NATS`);
  if (s.user && !s.password) throw new ConfigError("--nats-password", "is required with --nats-user (SHOAL_NATS_PASSWORD keeps it out of ps)");
  if (s.password && !s.user) throw new ConfigError("--nats-user", "is required with --nats-password");
  if (s.credsFile) readable("--nats-creds", s.credsFile);
  if (s.nkeyFile) {
    const seed = readFileSync(readable("--nats-nkey", s.nkeyFile), "utf8").trim();
    if (!/^SU[A-Z2-7]{56}$/.test(seed)) throw new ConfigError("--nats-nkey", `${s.nkeyFile} does not hold a user nkey seed (one line starting with SU, as \`nk -gen user\` writes it)`);
  }
  if (s.tlsCaFile) readable("--nats-tls-ca", s.tlsCaFile);
  if (s.tlsCertFile && !s.tlsKeyFile) throw new ConfigError("--nats-tls-key", "is required with --nats-tls-cert");
  if (s.tlsKeyFile && !s.tlsCertFile) throw new ConfigError("--nats-tls-cert", "is required with --nats-tls-key");
  if (s.tlsCertFile) readable("--nats-tls-cert", s.tlsCertFile);
  if (s.tlsKeyFile) readable("--nats-tls-key", s.tlsKeyFile);
  return s;
}

/** How a process is named in logs: the method, never the secret. */
export function describeNatsSecurity(s: NatsSecurity | undefined): { auth: string; tls: string } {
  const auth = !s ? "none" : s.credsFile ? "creds" : s.nkeyFile ? "nkey" : s.user ? `user ${s.user}` : s.token ? "token" : "none";
  const tls = s?.tlsCaFile || s?.tlsCertFile ? `tls${s.tlsCertFile ? " with client certificate" : ""}` : "off (unless the URL is tls://)";
  return { auth, tls };
}

/**
 * The connect options for `s`. Files are read at each (re)connect by the authenticators, so a
 * rotated creds file is picked up without a restart.
 */
export function natsConnectSecurity(s: NatsSecurity | undefined): Partial<NodeConnectionOptions> {
  if (!s) return {};
  const out: Partial<NodeConnectionOptions> = {};
  if (s.credsFile) {
    const file = s.credsFile;
    out.authenticator = credsAuthenticator(() => readFileSync(file));
  } else if (s.nkeyFile) {
    const file = s.nkeyFile;
    out.authenticator = nkeyAuthenticator(() => new TextEncoder().encode(readFileSync(file, "utf8").trim()));
  } else if (s.user) {
    out.user = s.user;
    out.pass = s.password;
  } else if (s.token) {
    out.token = s.token;
  }
  if (s.tlsCaFile || s.tlsCertFile) {
    out.tls = {
      ...(s.tlsCaFile ? { caFile: s.tlsCaFile } : {}),
      ...(s.tlsCertFile ? { certFile: s.tlsCertFile, keyFile: s.tlsKeyFile } : {}),
    };
  }
  return out;
}
