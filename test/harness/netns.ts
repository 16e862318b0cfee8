// Hosts made of Linux network namespaces, for tests across machines: a switch namespace holding
// a bridge, and one namespace per host joined to it by a veth pair. Every address lives inside
// a namespace this lab made (none in the caller's); names carry a random id per run; destroy()
// kills what it started by pid and deletes every namespace (which removes the veths with them).
// Needs CAP_NET_ADMIN: without it create() throws saying so.

import { execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { trackProcess, type Proc } from "./processes.js";

export interface LabHost {
  name: string;
  ns: string;
  ip: string;
  /** The switch side of its link: down = cut. */
  port: string;
}

function ip(args: string[]): void {
  execFileSync("ip", args, { stdio: ["ignore", "pipe", "pipe"], timeout: 10_000 });
}

export class NetnsLab {
  readonly id = randomBytes(3).toString("hex");
  readonly switchNs = `shoal-${this.id}-sw`;
  readonly hosts = new Map<string, LabHost>();
  readonly procs: Proc[] = [];
  private readonly namespaces: string[] = [];
  // 10.<200..249>.<0..255>.0/24: a subnet per run, visible only inside the lab's namespaces.
  private readonly subnet = `10.${200 + (randomBytes(1)[0]! % 50)}.${randomBytes(1)[0]!}`;

  /** Makes the switch and one host per name; throws with the reason when namespaces cannot be made. */
  create(names: string[]): void {
    try {
      ip(["netns", "add", this.switchNs]);
    } catch (err) {
      const stderr = String((err as { stderr?: Buffer }).stderr ?? err).trim();
      throw new Error(`cannot create network namespaces (ip netns add needs CAP_NET_ADMIN and the ip tool): ${stderr}`);
    }
    this.namespaces.push(this.switchNs);
    ip(["-n", this.switchNs, "link", "set", "lo", "up"]);
    ip(["-n", this.switchNs, "link", "add", "br0", "type", "bridge"]);
    ip(["-n", this.switchNs, "link", "set", "br0", "up"]);
    names.forEach((name, i) => {
      const ns = `shoal-${this.id}-${name}`;
      ip(["netns", "add", ns]);
      this.namespaces.push(ns);
      const port = `p${i}`;
      // Both ends are made inside the lab's namespaces: nothing appears in the caller's.
      ip(["-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", this.switchNs]);
      const addr = `${this.subnet}.${10 + i}`;
      ip(["-n", ns, "addr", "add", `${addr}/24`, "dev", "eth0"]);
      ip(["-n", ns, "link", "set", "eth0", "up"]);
      ip(["-n", ns, "link", "set", "lo", "up"]);
      ip(["-n", this.switchNs, "link", "set", port, "master", "br0"]);
      ip(["-n", this.switchNs, "link", "set", port, "up"]);
      this.hosts.set(name, { name, ns, ip: addr, port });
    });
  }

  host(name: string): LabHost {
    const h = this.hosts.get(name);
    if (!h) throw new Error(`no host ${name}`);
    return h;
  }

  /** Cuts the host's link at the switch (its processes live on, unreachable). */
  cut(name: string): void {
    ip(["-n", this.switchNs, "link", "set", this.host(name).port, "down"]);
  }

  restore(name: string): void {
    ip(["-n", this.switchNs, "link", "set", this.host(name).port, "up"]);
  }

  /** Runs `cmd` inside the host's namespace (ip netns exec execs it: the pid is the command's). */
  spawn(name: string, label: string, cmd: string, args: string[], env: Record<string, string> = {}): Proc {
    const child = spawn("ip", ["netns", "exec", this.host(name).ns, cmd, ...args], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
    const p = trackProcess(label, child);
    this.procs.push(p);
    return p;
  }

  async kill(p: Proc, signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    if (p.child.exitCode !== null || p.child.signalCode !== null) return;
    try {
      process.kill(p.pid, signal);
    } catch {
      /* gone */
    }
    await p.exited;
  }

  async destroy(): Promise<void> {
    for (const p of [...this.procs].reverse()) await this.kill(p);
    for (const ns of this.namespaces.reverse()) {
      try {
        ip(["netns", "del", ns]);
      } catch {
        /* already gone */
      }
    }
  }
}
