// deploy/compose/compose.yaml: resolved by docker-compose itself (`config`, offline: no image is
// pulled or built), then every Shoal service's command, env vars and ports parsed by the CLI's
// own option definitions, the NATS nodes' flags checked against nats-server's own --help and
// their routes against each other, and Prometheus and Grafana pointed at what compose runs.
// Running the fleet needs images from Docker Hub (nats, prometheus, grafana), which this
// machine cannot pull; the Shoal image itself is built and run in deploy-images.

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { dirname, isAbsolute, join, resolve } from "node:path";
import { parse as parseYaml } from "yaml";
import { acceptedEnv, parseServer, SERVER_COMMANDS, type ServerCommand } from "../harness/cli-options.js";
import { natsServerBinary, ROOT } from "../harness/processes.js";
import { requireTools, run } from "../harness/podman.js";

const DIR = join(ROOT, "deploy/compose");
const FILE = join(DIR, "compose.yaml");

interface Service {
  image?: string;
  build?: { context: string; dockerfile: string };
  command?: string[];
  environment?: Record<string, string | null>;
  ports?: ({ target: number; published: number | string } | string)[];
  volumes?: ({ source: string; target: string; type: string } | string)[];
  deploy?: { replicas?: number; resources?: { reservations?: { devices?: { driver: string; capabilities: string[] }[] } } };
  profiles?: string[];
}

let resolved: { services: Record<string, Service> } | undefined;
async function config(): Promise<{ services: Record<string, Service> }> {
  if (resolved) return resolved;
  requireTools(["docker-compose"]);
  const r = await run("docker-compose", ["-f", FILE, "--profile", "gpu", "config"], 180_000);
  assert.equal(r.code, 0, `docker-compose config: ${r.stderr}`);
  resolved = parseYaml(r.stdout) as { services: Record<string, Service> };
  return resolved;
}

const portPairs = (s: Service) =>
  (s.ports ?? []).map((p) => (typeof p === "string" ? { published: Number(p.split(":")[0]), target: Number(p.split(":")[1]) } : { published: Number(p.published), target: Number(p.target) }));
const envOf = (s: Service) => Object.fromEntries(Object.entries(s.environment ?? {}).map(([k, v]) => [k, v ?? ""]));
const shoalServices = (services: Record<string, Service>) => Object.entries(services).filter(([, s]) => /^shoal(-gpu)?:/.test(s.image ?? ""));

describe("compose fleet", () => {
  test("docker-compose accepts the file: three NATS nodes, two coordinators, workers, gateway, Prometheus, Grafana", { timeout: 240_000 }, async () => {
    const { services } = await config();
    assert.deepEqual(Object.keys(services).sort(), ["coordinator1", "coordinator2", "gateway", "gpu-worker", "grafana", "nats1", "nats2", "nats3", "prometheus", "worker"]);
    for (const [name, s] of shoalServices(services)) {
      assert.ok(s.build && existsSync(join(s.build.context, s.build.dockerfile)), `${name}: builds from ${s.build?.dockerfile}`);
      assert.equal(s.image!.startsWith("shoal-gpu:"), s.build!.dockerfile.endsWith("Containerfile.gpu"), `${name}: image name and Containerfile agree`);
    }
    assert.ok((services.worker!.deploy?.replicas ?? 1) >= 2);
    assert.deepEqual(services["gpu-worker"]!.profiles, ["gpu"]);
    assert.ok(services["gpu-worker"]!.deploy?.resources?.reservations?.devices?.some((d) => d.driver === "nvidia" && d.capabilities.includes("gpu")));
  });

  test("each Shoal service runs a server command with env vars and ports the CLI accepts", { timeout: 240_000 }, async () => {
    const { services } = await config();
    for (const [name, s] of shoalServices(services)) {
      const [command, ...args] = s.command ?? [];
      assert.ok(SERVER_COMMANDS.includes(command as ServerCommand), `${name}: runs "${command}"`);
      const cmd = command as ServerCommand;
      const env = envOf(s);
      for (const k of Object.keys(env)) assert.ok(acceptedEnv(cmd).has(k), `${name}: shoal ${cmd} reads no env var ${k}`);
      if (env.SHOAL_URL_SIGNING_KEY === "") delete env.SHOAL_URL_SIGNING_KEY; // unset in the .env: the gateway makes its own
      const opts = parseServer(cmd, args, env);
      const targets = portPairs(s).map((p) => p.target);
      if (cmd === "coordinator") {
        assert.ok(targets.includes(opts.grpcPort as number) && targets.includes(opts.metricsPort as number), `${name}: publishes its gRPC and metrics ports`);
      }
      if (cmd === "gateway") {
        assert.ok(targets.includes(opts.httpPort as number));
        for (const a of String(opts.addr).split(",")) assert.ok(services[a.split(":")[0]!], `gateway: ${a} is not a compose service`);
      }
      if (cmd !== "gateway") {
        for (const url of String(opts.natsUrl).split(",")) assert.ok(services[new URL(url).hostname], `${name}: ${url} is not a compose service`);
      }
    }
  });

  test("the NATS nodes form one JetStream cluster, with flags nats-server knows", { timeout: 240_000 }, async () => {
    const { services } = await config();
    const help = await run(natsServerBinary(), ["--help"], 60_000);
    const nodes = ["nats1", "nats2", "nats3"];
    for (const n of nodes) {
      const c = services[n]!.command!;
      for (const flag of c.filter((a) => a.startsWith("-"))) assert.match(help.stdout + help.stderr, new RegExp(`(^|[ ,])${flag.replace(/[-]/g, "\\-")}[ ,<]`, "m"), `${n}: nats-server has no ${flag}`);
      const arg = (f: string) => c[c.indexOf(f) + 1];
      assert.ok(c.includes("-js"));
      assert.equal(arg("--cluster_name"), "shoal");
      assert.equal(arg("-n"), n);
      const routes = arg("--routes")!.split(",").map((r) => new URL(r).hostname);
      assert.deepEqual(routes.sort(), nodes.filter((o) => o !== n), `${n} routes to the other two`);
    }
  });

  test("Prometheus scrapes the coordinators and workers as the jobs the alert rules name, and Grafana gets the dashboard", { timeout: 240_000 }, async () => {
    const { services } = await config();
    const prom = parseYaml(readFileSync(join(DIR, "prometheus.yml"), "utf8")) as {
      rule_files: string[];
      scrape_configs: { job_name: string; static_configs?: { targets: string[] }[]; dns_sd_configs?: { names: string[]; port: number }[] }[];
    };
    const jobs = Object.fromEntries(prom.scrape_configs.map((j) => [j.job_name, j]));
    const shared = parseYaml(readFileSync(join(ROOT, "deploy/prometheus/prometheus.yml"), "utf8")) as { scrape_configs: { job_name: string }[] };
    assert.deepEqual(Object.keys(jobs).sort(), shared.scrape_configs.map((j) => j.job_name).sort(), "the same job names as deploy/prometheus");
    for (const t of jobs["shoal-coordinator"]!.static_configs![0]!.targets) {
      const [host, port] = t.split(":");
      assert.equal(Number(port), parseServer("coordinator", [], envOf(services[host!]!)).metricsPort, t);
    }
    const dns = jobs["shoal-worker"]!.dns_sd_configs![0]!;
    for (const n of dns.names) {
      const env = envOf(services[n]!);
      assert.equal(dns.port, parseServer("worker", [], env).metricsPort, n);
    }
    const mounts = (s: Service) => (s.volumes ?? []).map((v) => (typeof v === "string" ? { source: v.split(":")[0]!, target: v.split(":")[1]! } : v));
    const promMounts = mounts(services.prometheus!);
    for (const rf of prom.rule_files) {
      const m = promMounts.find((v) => v.target === `/etc/prometheus/${rf}`);
      assert.ok(m && isAbsolute(m.source) && readFileSync(m.source, "utf8") === readFileSync(join(ROOT, "deploy/prometheus/alerts.yml"), "utf8"), `rule file ${rf} is deploy/prometheus/alerts.yml`);
    }
    const graf = mounts(services.grafana!);
    for (const m of graf) assert.ok(existsSync(m.source), `grafana mounts ${m.source}, which does not exist`);
    const dashboard = graf.find((m) => m.target.endsWith(".json"))!;
    const provider = parseYaml(readFileSync(graf.find((m) => m.target.includes("provisioning/dashboards"))!.source, "utf8")) as { providers: { options: { path: string } }[] };
    assert.equal(dirname(dashboard.target), provider.providers[0]!.options.path, "the dashboard lies where its provider looks");
    const ds = parseYaml(readFileSync(join(DIR, "grafana/datasource.yml"), "utf8")) as { datasources: { uid: string; url: string }[] };
    assert.equal(new URL(ds.datasources[0]!.url).hostname, "prometheus");
    assert.equal(resolve(dashboard.source), join(ROOT, "deploy/grafana/shoal-dashboard.json"));
  });
});
