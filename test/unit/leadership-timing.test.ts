import { test } from "node:test";
import assert from "node:assert/strict";
import type { NatsConnection } from "@nats-io/transport-node";
import { Leadership } from "../../coordinator/leadership.js";
import { createLogger } from "../../shared/logger.js";

function leadership(ttlMs: number): Leadership {
  // No connection is used by the timing rules below (unit test).
  return new Leadership({} as NatsConnection, {
    bucket: "shoal-leader",
    ttlMs,
    replicas: 1,
    self: { id: "c1", addr: "127.0.0.1:50051" },
    log: createLogger({ level: "silent", format: "json", component: "test" }),
    onElected: () => undefined,
    onDeposed: () => undefined,
  });
}

/** Puts the lease in the state a successful renewal leaves (test only: the fields are private). */
function holdUntil(l: Leadership, validUntil: number): void {
  Object.assign(l as unknown as Record<string, unknown>, { state: "active", validUntil });
}

test("leadership timing - a standby looks every TTL/8; the active one renews every TTL/4", () => {
  const l = leadership(5000);
  assert.equal(l.nextStepInMs(0), 625, "standby: takeover delay after expiry unchanged");
  // Just renewed: its own end of the lease is TTL - margin (1 s) after the send.
  holdUntil(l, 4000);
  assert.equal(l.nextStepInMs(10), 1250);
});

test("leadership timing - after a late renewal the next one goes out at least one look before the lease's own end", () => {
  const l = leadership(5000);
  // A renewal sent at 0 came back at 3000 (a loaded machine): its end is 4000, 1000 ms away.
  holdUntil(l, 4000);
  assert.equal(l.nextStepInMs(3000), 375, "sent at 3375, 625 ms before the end, not at 4250 after it");
  assert.equal(l.nextStepInMs(3700), 0, "closer than one look: at once");
  assert.equal(l.nextStepInMs(5000), 0, "past the end: at once (renew() then finds the lease over)");
});
