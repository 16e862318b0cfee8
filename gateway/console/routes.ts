// The web console's files, served by the gateway at `/`: one HTML page, one script, one style
// sheet, read once at start. They hold no data and no secret; everything the page shows comes
// from the /v1 routes, called by the browser with the API key the user types in (kept in
// sessionStorage), so the console is exactly as open or closed as the API itself.
//
// The page builds its DOM with textContent only (prompts, labels and error messages are user
// input) and the Content-Security-Policy below forbids inline script, so injected markup cannot
// run even if some text slipped through.

import { readFileSync } from "node:fs";
import type { FastifyInstance, FastifyReply } from "fastify";

interface Asset {
  body: Buffer;
  type: string;
}

/** Where the files are: gateway/console/static in the source tree (this module runs from dist/gateway/console). */
const STATIC_DIR = new URL("../../../gateway/console/static/", import.meta.url);

const FILES: Record<string, string> = {
  "index.html": "text/html; charset=utf-8",
  "console.js": "text/javascript; charset=utf-8",
  "console.css": "text/css; charset=utf-8",
};

function loadAssets(): Map<string, Asset> {
  const out = new Map<string, Asset>();
  for (const [name, type] of Object.entries(FILES)) out.set(name, { body: readFileSync(new URL(name, STATIC_DIR)), type });
  return out;
}

/**
 * The headers every console answer carries. Images may come from the gateway's --public-url
 * when it differs from the address the page was loaded from.
 */
export function consoleSecurityHeaders(publicUrl: string): Record<string, string> {
  const imgSrc = ["'self'"];
  if (publicUrl !== "") imgSrc.push(new URL(publicUrl).origin);
  const csp = [
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    `img-src ${imgSrc.join(" ")}`,
    "connect-src 'self'",
    "form-action 'none'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
  ].join("; ");
  return {
    "content-security-policy": csp,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    // Image URLs carry signed tokens; keep them out of Referer headers.
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
  };
}

export function registerConsole(app: FastifyInstance, opts: { publicUrl: string }): void {
  const assets = loadAssets();
  const headers = consoleSecurityHeaders(opts.publicUrl);
  const send = (reply: FastifyReply, name: string) => {
    const a = assets.get(name)!;
    return reply.code(200).headers(headers).type(a.type).send(a.body);
  };
  app.get("/", async (_req, reply) => send(reply, "index.html"));
  // Browsers ask for it on their own; no icon, and no 404 in the log.
  app.get("/favicon.ico", async (_req, reply) => reply.code(204).headers(headers).send());
  for (const name of Object.keys(FILES)) {
    if (name !== "index.html") app.get(`/console/${name}`, async (_req, reply) => send(reply, name));
  }
}
