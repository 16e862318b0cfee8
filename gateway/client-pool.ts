// One SDK client per distinct API key, so each caller's key reaches the coordinator as the SDK
// sends it (the coordinator decides the tenant). Bounded: past `max` keys the least recently
// used client is closed, once the calls that still hold it are done.

import { createHash } from "node:crypto";
import { createClients, type ShoalClients } from "../cli/client.js";
import type { ClientTls } from "../cli/client-tls.js";

interface Entry {
  clients: ShoalClients;
  users: number;
  evicted: boolean;
}

export interface Lease {
  clients: ShoalClients;
  /** Call once the calls made with `clients` have ended; safe to call more than once. */
  release(): void;
}

export class ClientPool {
  private readonly entries = new Map<string, Entry>();
  private closed = false;

  constructor(
    private readonly addr: string,
    private readonly max: number,
    private readonly rpcTimeoutMs: number,
    private readonly tls?: ClientTls,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  acquire(apiKey: string | undefined): Lease {
    if (this.closed) throw new Error("client pool is closed");
    // Keys are held by their clients anyway; the map is keyed by a digest so they are not
    // spread further than needed.
    const id = apiKey ? createHash("sha256").update(apiKey).digest("hex") : "";
    let entry = this.entries.get(id);
    if (entry) {
      this.entries.delete(id);
    } else {
      entry = { clients: createClients(this.addr, apiKey || undefined, { defaultTimeoutMs: this.rpcTimeoutMs, tls: this.tls ?? null }), users: 0, evicted: false };
    }
    this.entries.set(id, entry);
    entry.users++;
    while (this.entries.size > this.max) {
      const [oldId, old] = this.entries.entries().next().value as [string, Entry];
      this.entries.delete(oldId);
      old.evicted = true;
      if (old.users === 0) old.clients.close();
    }
    let released = false;
    const e = entry;
    return {
      clients: e.clients,
      release: () => {
        if (released) return;
        released = true;
        e.users--;
        if (e.evicted && e.users === 0) e.clients.close();
      },
    };
  }

  /** Closes every client; idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const e of this.entries.values()) e.clients.close();
    this.entries.clear();
  }
}
