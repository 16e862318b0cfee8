// What `shoal up` prints once everything it started is ready: the addresses it serves, where its
// state lives, and how to use and stop it.

export interface UpBannerFacts {
  grpcListen: string;
  grpcAddr: string;
  httpUrl: string | undefined;
  natsUrl: string;
  dataDir: string;
  durability: string | undefined;
  /** The coordinator's metrics port; 0 turns every /metrics endpoint off. */
  metricsPort: number;
  workerMetricsPorts: number[];
}

export function upBanner(f: UpBannerFacts): string {
  const lines = [
    "",
    "Shoal is up:",
    `  gRPC API        ${f.grpcListen}   (export SHOAL_ADDR=${f.grpcAddr})`,
    ...(f.httpUrl ? [`  HTTP API        ${f.httpUrl}/v1   (OpenAPI: ${f.httpUrl}/v1/openapi.json)`, `  web console     ${f.httpUrl}/`] : []),
    `  NATS            ${f.natsUrl}${f.durability ? `   (JetStream store in ${f.dataDir}/jetstream, ${f.durability})` : ""}`,
    // An address with port 0 would send an operator to a port nobody listens on.
    ...(f.metricsPort === 0
      ? ["  metrics         off (--metrics-port 0)"]
      : [
          `  metrics         http://127.0.0.1:${f.metricsPort}/metrics (coordinator)`,
          ...f.workerMetricsPorts.map((p, i) => `                  http://127.0.0.1:${p}/metrics (worker w${i + 1})`),
        ]),
    "  try             shoal submit examples/demo-batch.json --wait",
    "  stop            Ctrl-C",
    "",
  ];
  return lines.join("\n") + "\n";
}
