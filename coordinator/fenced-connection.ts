// The fence of a coordinator that may be deposed: every message its NATS connection sends
// (core publishes, requests, JetStream writes, acks, pull requests) passes one function, the
// protocol handler's publish. Once the lease is over (leadership.ts), that function refuses, so
// nothing this coordinator decided while active (an assignment, a revocation, a terminal batch,
// an ack) reaches NATS after a standby could have taken over, however long it was paused.

import type { NatsConnection } from "@nats-io/transport-node";

export interface Fence {
  /** True while this coordinator may write. */
  allows(): boolean;
  /** Counted once per refused message (metrics, logs). */
  refused?(subject: string): void;
  /** Called for every message let through (the term's record of when it placed). */
  sent?(subject: string): void;
}

/** Thrown (synchronously, from inside the NATS client) for a message sent past the lease. */
export class FencedError extends Error {
  override readonly name = "FencedError";
  readonly code = "FENCED";
  constructor(subject: string) {
    super(`not the active coordinator any more: nothing is sent to NATS (subject ${subject})`);
  }
}

type Publish = (subject: string, payload?: unknown, options?: unknown) => void;

/** Puts the fence in front of `nc`'s outgoing messages; returns the same connection. */
export function fenceConnection(nc: NatsConnection, fence: Fence): NatsConnection {
  // The protocol handler is not part of the client's typed API; every outgoing message of
  // nats.js passes its publish (NatsConnectionImpl.publish and request, Msg.respond).
  const protocol = (nc as unknown as { protocol?: { publish?: Publish } }).protocol;
  if (!protocol || typeof protocol.publish !== "function") {
    throw new Error("cannot fence this NATS connection: the client has no protocol.publish (nats.js changed?)");
  }
  const publish = protocol.publish.bind(protocol);
  protocol.publish = (subject, payload, options) => {
    if (!fence.allows()) {
      fence.refused?.(subject);
      throw new FencedError(subject);
    }
    publish(subject, payload, options);
    fence.sent?.(subject);
  };
  return nc;
}
