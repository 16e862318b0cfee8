// A real JetStream cluster for integration tests: N nats-servers on free loopback ports, joined
// by routes, each with its own temp store. Nodes can be killed (-9) and started again on the
// same ports and store; everything is killed by pid in stop().

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { waitForJetStreamCluster } from "../../cli/nats-cluster-ready.js";
import { natsClusterConfig, natsClusterUrls, type NatsClusterNode } from "../../cli/nats-config.js";
import { freePort, natsServerBinary, trackProcess, waitPort, type Proc } from "./processes.js";

export class NatsCluster {
  readonly dir = mkdtempSync(join(tmpdir(), "shoal-nats-cluster-"));
  nodes: NatsClusterNode[] = [];
  readonly procs = new Map<string, Proc>();
  /** Every node's client URL, comma-separated (what --nats takes). */
  urls = "";

  constructor(readonly size = 3) {}

  async start(): Promise<void> {
    for (let i = 0; i < this.size; i++) {
      this.nodes.push({ name: `n${i + 1}`, clientPort: await freePort(), routePort: await freePort(), monitorPort: await freePort() });
    }
    this.urls = natsClusterUrls(this.nodes);
    await Promise.all(this.nodes.map((n) => this.startNode(n.name)));
    // nats-server 2.10 started as three at once now and then leaves one server out of the
    // JetStream meta group for good ("no suitable peers for placement"); restarting the servers
    // on their stores brings it in. Three tries, then the last error.
    for (let attempt = 1; ; attempt++) {
      try {
        await waitForJetStreamCluster(this.urls, Math.min(3, this.size), 20_000, () => [...this.procs].find(([, p]) => p.child.exitCode !== null)?.[0]);
        return;
      } catch (err) {
        if (attempt >= 3) throw err;
        for (const n of this.nodes) {
          await this.kill(n.name, "SIGTERM");
          await this.startNode(n.name);
        }
      }
    }
  }

  /** Starts (or starts again, on the same ports and store) one node. */
  async startNode(name: string): Promise<Proc> {
    const node = this.nodes.find((n) => n.name === name)!;
    const conf = join(this.dir, `${name}.conf`);
    writeFileSync(conf, "max_payload: 8MB\n" + natsClusterConfig(node, this.nodes));
    const child = spawn(
      natsServerBinary(),
      ["-js", "-sd", join(this.dir, name), "-a", "127.0.0.1", "-p", String(node.clientPort), "-m", String(node.monitorPort), "-c", conf],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    const p = trackProcess(`nats ${name}`, child);
    this.procs.set(name, p);
    await waitPort(node.clientPort, child);
    return p;
  }

  url(name: string): string {
    return `nats://127.0.0.1:${this.nodes.find((n) => n.name === name)!.clientPort}`;
  }

  async kill(name: string, signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const p = this.procs.get(name);
    if (!p || p.child.exitCode !== null || p.child.signalCode !== null) return;
    try {
      process.kill(p.pid, signal);
    } catch {
      /* gone */
    }
    await p.exited;
  }

  /** The name of the node that leads the JetStream meta group, from its /jsz. */
  async metaLeader(): Promise<string | undefined> {
    for (const n of this.nodes) {
      const p = this.procs.get(n.name);
      if (!p || p.child.exitCode !== null) continue;
      try {
        const res = await fetch(`http://127.0.0.1:${n.monitorPort}/jsz`, { signal: AbortSignal.timeout(5000) });
        const jsz = (await res.json()) as { meta_cluster?: { leader?: string } };
        if (jsz.meta_cluster?.leader) return jsz.meta_cluster.leader;
      } catch {
        /* try the next node */
      }
    }
    return undefined;
  }

  async stop(): Promise<void> {
    for (const name of this.procs.keys()) await this.kill(name);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
