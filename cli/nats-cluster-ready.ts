// Waiting for a freshly started JetStream cluster: its servers accept clients at once, but until
// they have elected a meta leader and met every peer, creating a replicated stream fails (with
// "insufficient resources", which would read as a full disk).

import { jetstreamManager, StorageType } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { errorMessage } from "../shared/errors.js";

const PROBE_STREAM = "SHOAL_CLUSTER_PROBE";

/**
 * Resolves once a memory stream of `replicas` copies can be created (it is deleted again).
 * `dead` names a server that has exited, which ends the wait at once.
 */
export async function waitForJetStreamCluster(
  servers: string,
  replicas: number,
  timeoutMs: number,
  dead: () => string | undefined,
  /** The identity to probe with (the coordinator's: up's servers refuse anonymous clients). */
  auth?: { user: string; password: string },
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const nc = await connect({
    servers: servers.split(","),
    name: "shoal-up-cluster-probe",
    maxReconnectAttempts: -1,
    reconnectTimeWait: 200,
    timeout: 5000,
    ...(auth ? { user: auth.user, pass: auth.password, inboxPrefix: "_INBOX_coordinator" } : {}),
  });
  let last = "";
  try {
    for (;;) {
      const gone = dead();
      if (gone) throw new Error(`nats-server ${gone} exited while the cluster was forming; see its log above`);
      try {
        const jsm = await jetstreamManager(nc, { timeout: 5000 });
        await jsm.streams.add({ name: PROBE_STREAM, subjects: ["_shoal.cluster.probe"], num_replicas: replicas, storage: StorageType.File });
        await jsm.streams.delete(PROBE_STREAM);
        return;
      } catch (err) {
        last = errorMessage(err);
      }
      if (Date.now() > deadline) throw new Error(`the JetStream cluster was not ready for ${replicas} replicas after ${timeoutMs} ms (last: ${last})`);
      await new Promise((r) => setTimeout(r, 300));
    }
  } finally {
    await nc.close().catch(() => undefined);
  }
}
