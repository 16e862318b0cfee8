import { createServer, type Server } from "node:http";
import type { Registry } from "prom-client";

/** Serves one process's registry on /metrics. Port 0 picks a free port (tests). */
export async function startMetricsServer(registry: Registry, port: number, host = "127.0.0.1"): Promise<{ server: Server; port: number; close(): Promise<void> }> {
  const server = createServer((req, res) => {
    if (req.url === "/metrics" || req.url?.startsWith("/metrics?")) {
      registry
        .metrics()
        .then((body) => {
          res.writeHead(200, { "content-type": registry.contentType });
          res.end(body);
        })
        .catch((err: Error) => {
          res.writeHead(500).end(err.message);
        });
    } else if (req.url === "/healthz") {
      res.writeHead(200).end("ok\n");
    } else {
      res.writeHead(404).end("not found: try /metrics\n");
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  const addr = server.address();
  const actual = typeof addr === "object" && addr ? addr.port : port;
  let closing: Promise<void> | undefined;
  return {
    server,
    port: actual,
    close: () => (closing ??= new Promise<void>((r) => server.close(() => r()))),
  };
}
