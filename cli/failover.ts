// Several coordinator addresses (`--addr a,b`, SHOAL_ADDR): one is active, the others are
// standbys that refuse every call with UNAVAILABLE naming the active one. The client keeps one
// set of channels per address and sends each call to the one it last found active; a standby's
// refusal (nothing was done) moves it to the address named there, and an address that cannot be
// reached (or that does not answer a read in time) moves it to the next one. Calls that change state (submit, run, retry, cancel, drain)
// move on only when the refusal came before the call did anything: a standby's refusal, or a
// connection that was never made; any other failure is the caller's to see.

import { status } from "@grpc/grpc-js";
import { ClientError } from "./errors.js";
import type { CallOpts, ListBatchesOpts, ShoalClients } from "./client.js";

const STANDBY = /\bstandby\b/;
const ACTIVE_NAMED = /the active coordinator is (\S+)/;
/** grpc-js's words for a channel that never connected (nothing was sent). */
const NOT_CONNECTED = /No connection established|ECONNREFUSED|Name resolution failed|getaddrinfo|ENOTFOUND|EHOSTUNREACH/;

export function splitAddrs(addr: string): string[] {
  return addr
    .split(",")
    .map((a) => a.trim())
    .filter((a) => a !== "");
}

/**
 * The error when the call may be tried at another address: nothing was done (a standby's
 * refusal, a connection never made), or the call only reads and this address did not answer
 * (unreachable, or answering too late: a coordinator cut off from the network).
 */
function movable(err: unknown, mutating: boolean): ClientError | undefined {
  if (!(err instanceof ClientError)) return undefined;
  if (err.grpcCode === status.DEADLINE_EXCEEDED) return mutating ? undefined : err;
  if (err.grpcCode !== status.UNAVAILABLE) return undefined;
  if (STANDBY.test(err.details)) return err;
  return !mutating || NOT_CONNECTED.test(err.details) ? err : undefined;
}

export function createFailoverClients(addrs: string[], make: (addr: string) => ShoalClients): ShoalClients {
  const clients = new Map<string, ShoalClients>();
  const clientFor = (addr: string): ShoalClients => {
    let c = clients.get(addr);
    if (!c) clients.set(addr, (c = make(addr)));
    return c;
  };
  let current = 0;
  const order = [...addrs];

  /** The next address to try after `err` from `tried`: the one a standby named, else the next in the list. */
  function next(err: ClientError, tried: string): void {
    const named = ACTIVE_NAMED.exec(err.details)?.[1];
    if (named && named !== tried) {
      if (!order.includes(named)) order.push(named);
      current = order.indexOf(named);
    } else {
      current = (order.indexOf(tried) + 1) % order.length;
    }
  }

  async function call<T>(mutating: boolean, fn: (c: ShoalClients) => Promise<T>): Promise<T> {
    let lastErr: unknown;
    // Every address once, plus one more for a standby naming one not in the list.
    for (let attempt = 0; attempt <= order.length; attempt++) {
      const addr = order[current]!;
      try {
        return await fn(clientFor(addr));
      } catch (err) {
        const u = movable(err, mutating);
        if (!u) throw err;
        lastErr = err;
        next(u, addr);
      }
    }
    throw lastErr;
  }

  /** A stream moves on only when it failed before its first message. */
  function stream<T>(fn: (c: ShoalClients) => AsyncIterable<T>): AsyncIterable<T> {
    return (async function* () {
      let lastErr: unknown;
      for (let attempt = 0; attempt <= order.length; attempt++) {
        const addr = order[current]!;
        let yielded = false;
        try {
          for await (const msg of fn(clientFor(addr))) {
            yielded = true;
            yield msg;
          }
          return;
        } catch (err) {
          const u = movable(err, false);
          if (yielded || !u) throw err;
          lastErr = err;
          next(u, addr);
        }
      }
      throw lastErr;
    })();
  }

  let closed = false;
  return {
    get addr() {
      return order[current]!;
    },
    submitBatch: (req, opts) => call(true, (c) => c.submitBatch(req, opts)),
    runBatch: (req, opts) => call(true, (c) => c.runBatch(req, opts)),
    getBatch: (id, opts) => call(false, (c) => c.getBatch(id, opts)),
    watchBatch: (id, opts) => stream((c) => c.watchBatch(id, opts)),
    cancelBatch: (id, opts) => call(true, (c) => c.cancelBatch(id, opts)),
    retryBatch: (id, opts) => call(true, (c) => c.retryBatch(id, opts)),
    listBatches: (opts?: ListBatchesOpts) => call(false, (c) => c.listBatches(opts)),
    getArtifact: (uri, opts) => stream((c) => c.getArtifact(uri, opts)),
    listWorkers: (opts?: CallOpts) => call(false, (c) => c.listWorkers(opts)),
    drainWorker: (id, opts) => call(true, (c) => c.drainWorker(id, opts)),
    listModels: (opts?: CallOpts) => call(false, (c) => c.listModels(opts)),
    getUsage: (req, opts) => call(false, (c) => c.getUsage(req, opts)),
    getUsageReport: (req, opts) => call(false, (c) => c.getUsageReport(req, opts)),
    close() {
      if (closed) return;
      closed = true;
      for (const c of clients.values()) c.close();
    },
  };
}
