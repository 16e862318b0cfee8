// The authorization part of the nats-server config `shoal up` writes: one user per role, each
// with only the subjects its role needs (the permission table in docs/security.md). The
// passwords are random, made once and kept in the data dir (mode 0600) so a restart of `up`
// reuses them; the children get theirs through the environment, never on a command line.
//
// What each role really uses (grep the code for the subjects):
// - the coordinator: the JetStream API, every stream and bucket, assign/cancel/drain requests
//   to workers, heartbeats in, and the results consumer. It is the trusted part: everything.
// - a worker `<id>`: publishes its heartbeats (`<prefix>.hb.<id>`), its outcomes (the results
//   stream, `<prefix>.results.<batch>`; which attempt an outcome may claim is fenced by the
//   coordinator, see coordinator/outcome-fence.ts), artifacts (publish-only chunks and info of
//   the artifact object store, see worker/artifact-writer.ts) and its model registrations (the
//   models KV bucket); subscribes to its own assign/cancel/drain subjects, the coordinator's
//   hello and its own reply inbox (`_INBOX_<id>.>`); answers the requests it was sent
//   (allow_responses). No JetStream API at all: a worker cannot read, list, purge or delete
//   anything stored.

import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Names } from "../shared/subjects.js";

export interface NatsUser {
  user: string;
  password: string;
}

export interface FleetIdentities {
  coordinator: NatsUser;
  /** worker id → its user (the user name is the worker id). */
  workers: Record<string, NatsUser>;
}

export const IDENTITIES_FILE = "nats-identities.json";
export const COORDINATOR_USER = "shoal-coordinator";

const newPassword = () => randomBytes(24).toString("hex");

/** Reads the identities kept in `dataDir`, adding any worker (and the coordinator) not there yet. */
export function fleetIdentities(dataDir: string, workerIds: string[]): FleetIdentities {
  const file = join(dataDir, IDENTITIES_FILE);
  let ids: FleetIdentities = { coordinator: { user: COORDINATOR_USER, password: newPassword() }, workers: {} };
  if (existsSync(file)) {
    try {
      const stored = JSON.parse(readFileSync(file, "utf8")) as FleetIdentities;
      if (stored?.coordinator?.password && stored.workers && typeof stored.workers === "object") ids = stored;
    } catch {
      /* unreadable: made anew below (the server config is written from it too) */
    }
  }
  let changed = !existsSync(file);
  for (const id of workerIds) {
    if (!ids.workers[id]?.password) {
      ids.workers[id] = { user: id, password: newPassword() };
      changed = true;
    }
  }
  if (changed) writeFileSync(file, JSON.stringify(ids, null, 2) + "\n", { mode: 0o600 });
  chmodSync(file, 0o600);
  return ids;
}

export interface Permissions {
  publish: string[];
  subscribe: string[];
  allowResponses: boolean;
}

/** Everything: the coordinator is the fleet's trusted part. */
export function coordinatorPermissions(): Permissions {
  return { publish: [">"], subscribe: [">"], allowResponses: false };
}

/** What worker `workerId` may do, and nothing more. */
export function workerPermissions(prefix: string, workerId: string): Permissions {
  const n = new Names(prefix);
  return {
    publish: [
      n.heartbeat(workerId),
      n.results("*"),
      `$O.${n.artifactsBucket}.C.*`,
      `$O.${n.artifactsBucket}.M.*`,
      `$KV.${n.modelsBucket}.*`,
    ],
    subscribe: [n.assign(workerId), n.cancel(workerId), n.drain(workerId), n.evict(workerId), n.coordinatorHello, `_INBOX_${workerId}.>`],
    allowResponses: true,
  };
}

const q = (s: string) => JSON.stringify(s);

function userBlock(u: NatsUser, p: Permissions): string {
  return [
    "    {",
    `      user: ${q(u.user)}, password: ${q(u.password)}`,
    "      permissions: {",
    `        publish: { allow: [${p.publish.map(q).join(", ")}] }`,
    `        subscribe: { allow: [${p.subscribe.map(q).join(", ")}] }`,
    ...(p.allowResponses ? ["        allow_responses: true"] : []),
    "      }",
    "    }",
  ].join("\n");
}

/** The `authorization` block: no anonymous access; one user per role. */
export function natsAuthorizationConfig(prefix: string, ids: FleetIdentities): string {
  const users = [userBlock(ids.coordinator, coordinatorPermissions()), ...Object.values(ids.workers).map((w) => userBlock(w, workerPermissions(prefix, w.user)))];
  return ["authorization {", "  users = [", ...users, "  ]", "}", ""].join("\n");
}
