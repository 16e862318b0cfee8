// An OTLP/HTTP receiver inside a test process: what Shoal's processes export over OTLP/HTTP
// (JSON, the http exporter's encoding) lands here as flat spans with their service name, so a
// test can check traces across real processes.

import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server } from "node:http";

export interface OtlpSpan {
  service: string;
  traceId: string;
  spanId: string;
  parentSpanId: string;
  /** The W3C tracestate the span carries ("" for none). */
  traceState: string;
  name: string;
  links: { traceId: string; spanId: string }[];
  attributes: Record<string, unknown>;
}

/** An OTLP/HTTP receiver: collects every span posted to /v1/traces (JSON encoding). */
export class OtlpReceiver {
  readonly spans: OtlpSpan[] = [];
  requests = 0;
  private server: Server | undefined;

  async start(port = 0, host = "127.0.0.1"): Promise<number> {
    this.server = createServer((req, res) =>
      void this.take(req).then(
        () => res.writeHead(200, { "content-type": "application/json" }).end("{}"),
        // Not OTLP JSON: the exporter hears so, and the test sees no span from it.
        (err: unknown) => res.writeHead(400, { "content-type": "text/plain" }).end(String(err)),
      ),
    );
    await new Promise<void>((resolve, reject) => {
      this.server!.once("error", reject);
      this.server!.listen(port, host, () => resolve());
    });
    return (this.server.address() as { port: number }).port;
  }

  private async take(req: IncomingMessage): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    this.requests++;
    if (req.url !== "/v1/traces") return;
    const body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as {
      resourceSpans: { resource: { attributes: Attr[] }; scopeSpans: { spans: RawSpan[] }[] }[];
    };
    for (const rs of body.resourceSpans) {
      const service = String(attrs(rs.resource.attributes)["service.name"]);
      for (const ss of rs.scopeSpans) {
        for (const s of ss.spans) {
          this.spans.push({ service, traceId: s.traceId, spanId: s.spanId, parentSpanId: s.parentSpanId ?? "", traceState: s.traceState ?? "", name: s.name, links: (s.links ?? []).map((l) => ({ traceId: l.traceId, spanId: l.spanId })), attributes: attrs(s.attributes ?? []) });
        }
      }
    }
  }

  stop(): Promise<void> {
    return new Promise((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

interface Attr {
  key: string;
  value: { stringValue?: string; intValue?: number | string; boolValue?: boolean; doubleValue?: number };
}
interface RawSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  traceState?: string;
  name: string;
  links?: { traceId: string; spanId: string }[];
  attributes?: Attr[];
}

function attrs(list: Attr[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const a of list) out[a.key] = a.value.stringValue ?? (a.value.intValue !== undefined ? Number(a.value.intValue) : undefined) ?? a.value.boolValue ?? a.value.doubleValue;
  return out;
}

/** A fresh W3C traceparent (sampled) and its trace and span ids. */
export function newTraceparent(): { traceparent: string; traceId: string; spanId: string } {
  const traceId = randomBytes(16).toString("hex");
  const spanId = randomBytes(8).toString("hex");
  return { traceparent: `00-${traceId}-${spanId}-01`, traceId, spanId };
}
