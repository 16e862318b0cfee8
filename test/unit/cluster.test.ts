import { test } from "node:test";
import assert from "node:assert/strict";
import { status } from "@grpc/grpc-js";
import { natsClusterConfig, natsClusterNodes, natsClusterUrls, parseNatsClusterSize } from "../../cli/nats-config.js";
import { createFailoverClients, splitAddrs } from "../../cli/failover.js";
import { ClientError } from "../../cli/errors.js";
import type { ShoalClients } from "../../cli/client.js";
import { standbyMessage } from "../../coordinator/standby.js";
import { ConfigError } from "../../shared/errors.js";

test("cluster config - --nats-cluster takes 1 or 3..9; 2 is refused with the reason", () => {
  assert.equal(parseNatsClusterSize("1"), 1);
  assert.equal(parseNatsClusterSize("3"), 3);
  for (const bad of ["2", "0", "10", "x", "3.5"]) assert.throws(() => parseNatsClusterSize(bad), (e: unknown) => e instanceof ConfigError && /--nats-cluster/.test(e.message));
});

test("cluster config - each node has a name, its own route port, and routes to every other node on loopback", () => {
  const nodes = natsClusterNodes(3, 4222, 6222);
  assert.deepEqual(nodes.map((n) => [n.name, n.clientPort, n.routePort, n.monitorPort]), [["n1", 4222, 6222, 0], ["n2", 4223, 6223, 0], ["n3", 4224, 6224, 0]]);
  assert.equal(natsClusterUrls(nodes), "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224");
  const text = natsClusterConfig(nodes[1]!, nodes);
  assert.match(text, /^server_name: n2$/m);
  assert.match(text, /listen: 127\.0\.0\.1:6223/);
  assert.match(text, /nats-route:\/\/127\.0\.0\.1:6222/);
  assert.match(text, /nats-route:\/\/127\.0\.0\.1:6224/);
  assert.doesNotMatch(text, /nats-route:\/\/127\.0\.0\.1:6223/, "no route to itself");
});

/** A fake coordinator per address: a standby refuses as the real one does, a dead one cannot be reached. */
function fakeFleet(kinds: Record<string, "active" | "standby" | "down">, activeAddr: string) {
  const calls: string[] = [];
  const make = (addr: string): ShoalClients => {
    const answer = async <T>(value: T): Promise<T> => {
      calls.push(addr);
      if (kinds[addr] === "standby") throw new ClientError(status.UNAVAILABLE, standbyMessage({ id: "x", addr: activeAddr }));
      if (kinds[addr] === "down") throw new ClientError(status.UNAVAILABLE, "No connection established. Last error: connect ECONNREFUSED");
      return value;
    };
    return {
      addr,
      submitBatch: () => answer({ batchId: `b_from_${addr}`, itemCount: 1 }),
      getBatch: () => answer({} as never),
      listWorkers: () => answer([]),
      close: () => undefined,
    } as unknown as ShoalClients;
  };
  return { make, calls };
}

test("failover - a standby's refusal moves the client to the coordinator it names; later calls go there first", async () => {
  const { make, calls } = fakeFleet({ a: "standby", b: "down", c: "active" }, "c");
  const clients = createFailoverClients(splitAddrs("a, b,c"), make);
  const res = await clients.submitBatch({ items: [] });
  assert.equal(res.batchId, "b_from_c");
  assert.deepEqual(calls, ["a", "c"]);
  await clients.listWorkers();
  assert.deepEqual(calls, ["a", "c", "c"]);
  assert.equal(clients.addr, "c");
});

test("failover - an unreachable coordinator is skipped; a submit that may have reached one is not sent again", async () => {
  const { make, calls } = fakeFleet({ a: "down", b: "active" }, "b");
  const clients = createFailoverClients(["a", "b"], make);
  assert.equal((await clients.submitBatch({ items: [] })).batchId, "b_from_b");
  assert.deepEqual(calls, ["a", "b"]);
  const midCall = createFailoverClients(["a", "b"], (addr) => ({
    ...make(addr),
    submitBatch: async () => {
      calls.push(`mid ${addr}`);
      throw new ClientError(status.UNAVAILABLE, "Connection dropped");
    },
  }));
  await assert.rejects(midCall.submitBatch({ items: [] }), /Connection dropped/);
  assert.equal(calls.filter((c) => c.startsWith("mid")).length, 1, "a submit that may have been received is not repeated elsewhere");
});

test("failover - when every address refuses, the last refusal is the answer", async () => {
  const { make } = fakeFleet({ a: "down", b: "down" }, "b");
  const clients = createFailoverClients(["a", "b"], make);
  await assert.rejects(clients.listWorkers(), (e: unknown) => e instanceof ClientError && e.grpcCode === status.UNAVAILABLE);
});
