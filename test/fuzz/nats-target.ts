// Publishes fuzz cases on the subjects the coordinator and a worker listen on: core NATS for
// heartbeats, hello and the worker's assign/cancel/drain requests; JetStream for the results
// stream; the models KV bucket that the coordinator watches. Nothing is judged per message:
// the campaign checks afterwards that both processes live, answer, and counted the garbage.

import { jetstream, type JetStreamClient } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import { connect, createInbox, headers as natsHeaders, type MsgHdrs, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import { Names } from "../../shared/subjects.js";
import type { NatsCase } from "./arbitraries.js";

export class NatsTarget {
  private constructor(
    private readonly nc: NatsConnection,
    private readonly js: JetStreamClient,
    private readonly models: KV,
    private readonly names: Names,
    private readonly workerId: string,
    private readonly inbox: string,
    private readonly replies: Subscription,
  ) {}

  static async connect(url: string, prefix: string, workerId: string): Promise<NatsTarget> {
    const nc = await connect({ servers: url, name: "shoal-fuzz" });
    const names = new Names(prefix);
    const models = await new Kvm(nc).open(names.modelsBucket);
    const inbox = createInbox();
    // Answers to requests sent with a reply subject land here and are dropped.
    const replies = nc.subscribe(`${inbox}.>`, { callback: () => undefined });
    return new NatsTarget(nc, jetstream(nc), models, names, workerId, inbox, replies);
  }

  /** The subject or key a case goes to. */
  destination(c: NatsCase): string {
    const id = c.token ?? this.workerId;
    switch (c.target) {
      case "hb":
        return this.names.heartbeat(id);
      case "hello":
        return this.names.coordinatorHello;
      case "assign":
        return this.names.assign(id);
      case "cancel":
        return this.names.cancel(id);
      case "drain":
        return this.names.drain(id);
      case "evict":
        return this.names.evict(id);
      case "results":
        return this.names.results(c.token ?? "");
      case "models":
        return `${this.names.modelsBucket}/${c.token}`;
    }
  }

  /**
   * Sends one case. Resolves "sent", or "refused" when our own client or the server refuses the
   * message before any Shoal process sees it (a subject JetStream does not take, a header
   * nats.js rejects): that is not a finding about Shoal.
   */
  async send(c: NatsCase, index: number): Promise<"sent" | "refused"> {
    let hdrs: MsgHdrs | undefined;
    try {
      if (c.headers.length > 0) {
        hdrs = natsHeaders();
        for (const [k, v] of c.headers) hdrs.append(k, v);
      }
    } catch {
      return "refused";
    }
    try {
      if (c.target === "results") {
        await this.js.publish(this.destination(c), c.payload, { msgID: c.msgId, headers: hdrs, timeout: 10_000 });
      } else if (c.target === "models") {
        await this.models.put(c.token!, c.payload);
      } else {
        this.nc.publish(this.destination(c), c.payload, { headers: hdrs, reply: c.reply ? `${this.inbox}.${index}` : undefined });
      }
      return "sent";
    } catch {
      return "refused";
    }
  }

  /** Waits until the server has everything published so far (back-pressure for the fuzzer). */
  flush(): Promise<void> {
    return this.nc.flush();
  }

  async close(): Promise<void> {
    this.replies.unsubscribe();
    await this.nc.drain().catch(() => undefined);
  }
}
