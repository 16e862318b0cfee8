// Where a webhook goes, checked twice: at submit (the URL's host resolves only to public
// addresses, so a bad URL is refused with INVALID_ARGUMENT) and at every delivery, where the
// host is resolved again, checked again, and the connection is pinned to the checked address
// through a custom `lookup`, so a DNS answer that changes between check and connect (DNS
// rebinding) cannot send the request elsewhere. The connected socket's address is checked once
// more before a byte is written. Redirects are never followed: a 3xx is a failed delivery.

import { lookup as dnsLookup, type LookupAddress } from "node:dns";
import { request as httpRequest, type RequestOptions } from "node:http";
import { request as httpsRequest } from "node:https";
import { isIP, type LookupFunction, type Socket } from "node:net";
import { classifyAddress, refusal } from "./webhook-address.js";

/** Longest webhook URL accepted at submit, in bytes. */
export const MAX_WEBHOOK_URL_BYTES = 2048;
/** Longest webhook secret accepted at submit (a Standard Webhooks secret is far shorter). */
export const MAX_WEBHOOK_SECRET_CHARS = 256;
const DNS_TIMEOUT_MS = 5000;

/** The webhook's target may not be reached; the message says why (no secret, no body). */
export class WebhookTargetError extends Error {
  override readonly name = "WebhookTargetError";
  readonly code = "WEBHOOK_TARGET_REFUSED";
}

export interface TargetPolicy {
  /** --webhook-allow-private: any address may be reached (local development, tests). */
  allowPrivate: boolean;
}

function lookupAll(host: string): Promise<LookupAddress[]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new WebhookTargetError(`host "${host}" did not resolve within ${DNS_TIMEOUT_MS} ms`)), DNS_TIMEOUT_MS);
    dnsLookup(host, { all: true, verbatim: true }, (err, addresses) => {
      clearTimeout(timer);
      if (err) reject(new WebhookTargetError(`host "${host}" does not resolve (${(err as NodeJS.ErrnoException).code ?? err.message})`));
      else if (addresses.length === 0) reject(new WebhookTargetError(`host "${host}" resolves to no address`));
      else resolve(addresses);
    });
  });
}

/**
 * The addresses to connect to: the host itself when it is an IP literal, else what DNS gives,
 * every one of which must be allowed (one bad answer refuses the lot, so a host cannot mix a
 * public address with an internal one).
 */
export async function resolveTarget(url: URL, policy: TargetPolicy): Promise<LookupAddress[]> {
  const host = url.hostname.replace(/^\[|\]$/g, "");
  const addresses = isIP(host) ? [{ address: host, family: isIP(host) }] : await lookupAll(host);
  if (!policy.allowPrivate) {
    for (const a of addresses) {
      const v = classifyAddress(a.address);
      if (!v.allowed) {
        const via = a.address === host ? "" : ` (host "${host}" resolves to it)`;
        throw new WebhookTargetError(`${refusal(a.address, v)}${via}; webhooks may only reach public addresses (coordinator flag --webhook-allow-private lifts this)`);
      }
    }
  }
  return addresses;
}

/** The problem with a webhook URL's target at submit, or undefined when it may be reached. */
export async function webhookTargetProblem(rawUrl: string, policy: TargetPolicy): Promise<string | undefined> {
  // Nothing to refuse: the host is resolved when the delivery is made, not now.
  if (policy.allowPrivate) return undefined;
  try {
    await resolveTarget(new URL(rawUrl), policy);
    return undefined;
  } catch (err) {
    return err instanceof WebhookTargetError ? err.message : `cannot be checked (${err instanceof Error ? err.message : String(err)})`;
  }
}

/** POSTs `body` to `url` through the checked, pinned address; resolves with the HTTP status. */
export async function postWebhook(
  rawUrl: string,
  headers: Record<string, string>,
  body: string,
  opts: TargetPolicy & { timeoutMs: number },
): Promise<number> {
  const url = new URL(rawUrl);
  const targets = await resolveTarget(url, opts);
  // Only the checked addresses can be connected to (all of them when Node tries several, as
  // with autoSelectFamily, else the first); no second DNS answer is ever asked for.
  const pinned: LookupFunction = (_host, options, callback) => {
    if ((options as { all?: boolean }).all) (callback as (e: null, a: LookupAddress[]) => void)(null, targets);
    else (callback as (e: null, a: string, f: number) => void)(null, targets[0]!.address, targets[0]!.family);
  };
  const request = url.protocol === "https:" ? httpsRequest : httpRequest;
  const options: RequestOptions = {
    method: "POST",
    headers: { ...headers, "content-length": String(Buffer.byteLength(body)) },
    lookup: pinned,
    // No agent: a pooled socket would skip the connect-time check below.
    agent: false,
    timeout: opts.timeoutMs,
  };
  return new Promise<number>((resolve, reject) => {
    const req = request(url, options, (res) => {
      res.resume(); // the body is not read; draining lets the socket close
      resolve(res.statusCode ?? 0);
    });
    req.on("socket", (socket: Socket) => {
      socket.once("connect", () => {
        const remote = socket.remoteAddress ?? "";
        const v = classifyAddress(remote);
        if (!opts.allowPrivate && !v.allowed) req.destroy(new WebhookTargetError(`connected to ${refusal(remote, v)}; refused`));
      });
    });
    req.on("timeout", () => req.destroy(new Error(`no answer within ${opts.timeoutMs} ms`)));
    req.on("error", reject);
    req.end(body);
  });
}
