import { connect, type NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "./logger.js";

/**
 * Connects for the life of a process: waits for a server that is not up yet and reconnects
 * forever, because a worker or coordinator outliving a nats-server restart is the point.
 */
export async function connectNats(url: string, name: string, log: Logger): Promise<NatsConnection> {
  const nc = await connect({
    servers: url.split(",").map((s) => s.trim()),
    name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    waitOnFirstConnect: true,
    pingInterval: 10_000,
    // Results of a terminal batch of thousands of items are one KV value; the server's
    // max_payload must allow it (shoal up sets 8 MB).
  });
  log.info({ server: nc.getServer(), maxPayload: nc.info?.max_payload }, "connected to NATS");
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === "disconnect" || s.type === "reconnect" || s.type === "error") {
        log.warn({ natsStatus: s.type, server: "server" in s ? s.server : undefined }, "NATS connection status");
      }
    }
  })().catch(() => undefined);
  return nc;
}
