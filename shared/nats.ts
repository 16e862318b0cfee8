import { AuthorizationError, connect, type NatsConnection } from "@nats-io/transport-node";
import { ConfigError } from "./errors.js";
import type { Logger } from "./logger.js";
import { describeNatsSecurity, natsConnectSecurity, type NatsSecurity } from "./nats-security.js";

export interface NatsClientOptions {
  /** Identity and TLS (shared/nats-security.ts); none: anonymous, plain unless the URL is tls://. */
  security?: NatsSecurity;
  /**
   * Replies to this process's requests (JetStream acks, API answers) come to `<prefix>.>`.
   * A per-identity prefix lets the server's permissions give each identity its own replies only.
   */
  inboxPrefix?: string;
}

/**
 * Connects for the life of a process: waits for a server that is not up yet and reconnects
 * forever, because a worker or coordinator outliving a nats-server restart is the point.
 */
export async function connectNats(url: string, name: string, log: Logger, client: NatsClientOptions = {}): Promise<NatsConnection> {
  const nc = await connect({
    servers: url.split(",").map((s) => s.trim()),
    name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    waitOnFirstConnect: true,
    pingInterval: 10_000,
    // Without this, nats.js builds an Error (with a captured stack) for every request and
    // JetStream publish, in case it fails: a cost on each item's assignment, outcome and artifact
    // chunk. Failures keep their message and subject; only the async stack trace is lost.
    noAsyncTraces: true,
    ...(client.inboxPrefix ? { inboxPrefix: client.inboxPrefix } : {}),
    ...natsConnectSecurity(client.security),
    // Results of a terminal batch of thousands of items are one KV value; the server's
    // max_payload must allow it (shoal up sets 8 MB).
  }).catch((err: unknown) => {
    // Refused credentials are a configuration problem: one line naming the flag, exit 2.
    if (err instanceof AuthorizationError) throw refusedIdentity(url, client.security);
    throw err;
  });
  log.info({ server: nc.getServer(), maxPayload: nc.info?.max_payload, ...describeNatsSecurity(client.security) }, "connected to NATS");
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === "disconnect" || s.type === "reconnect" || s.type === "error") {
        const error = s.type === "error" && "error" in s ? String((s as { error?: unknown }).error) : undefined;
        log.warn({ natsStatus: s.type, server: "server" in s ? s.server : undefined, error }, "NATS connection status");
      }
    }
  })().catch(() => undefined);
  return nc;
}

function refusedIdentity(url: string, s: NatsSecurity | undefined): ConfigError {
  const flag = s?.credsFile ? "--nats-creds" : s?.nkeyFile ? "--nats-nkey" : s?.user ? "--nats-user" : s?.token ? "--nats-token" : undefined;
  if (!flag) {
    return new ConfigError("--nats", `nats-server at ${url} requires authentication (Authorization Violation): give --nats-creds, --nats-nkey, --nats-user with --nats-password, or --nats-token`);
  }
  return new ConfigError(flag, `nats-server refused this identity at ${url} (Authorization Violation)`);
}
