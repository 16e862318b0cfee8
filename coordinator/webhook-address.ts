// Which IP addresses a webhook may reach. A webhook URL is chosen by whoever submits a batch, and
// the coordinator POSTs to it from inside the operator's network, so without a check any tenant
// could make it call 127.0.0.1, the cloud metadata service or an internal host (SSRF). Only
// public unicast addresses pass; everything else is named by its kind in the refusal. IPv6 forms
// that embed an IPv4 address (mapped ::ffff:a.b.c.d, compatible ::a.b.c.d, NAT64 64:ff9b::/96,
// 6to4 2002::/16) are judged by the IPv4 address inside.

import { isIP } from "node:net";

export type AddressKind =
  | "public"
  | "loopback"
  | "private"
  | "link-local"
  | "multicast"
  | "unspecified"
  | "metadata"
  | "broadcast"
  | "reserved"
  | "invalid";

export interface AddressVerdict {
  kind: AddressKind;
  /** True only for "public". */
  allowed: boolean;
}

const verdict = (kind: AddressKind): AddressVerdict => ({ kind, allowed: kind === "public" });

/** Cloud metadata endpoints outside the ranges refused anyway (169.254.169.254 is link-local). */
const METADATA_V4 = new Set(["100.100.100.200", "192.0.0.192"]);

function parseV4(s: string): number[] | undefined {
  const parts = s.split(".");
  if (parts.length !== 4) return undefined;
  const out: number[] = [];
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p)) return undefined;
    const n = Number(p);
    if (n > 255) return undefined;
    out.push(n);
  }
  return out;
}

function classifyV4(b: number[]): AddressVerdict {
  const [a, c] = [b[0]!, b[1]!];
  const dotted = b.join(".");
  if (METADATA_V4.has(dotted)) return verdict("metadata");
  if (dotted === "169.254.169.254") return verdict("metadata");
  if (dotted === "255.255.255.255") return verdict("broadcast");
  if (a === 0) return verdict("unspecified"); // 0.0.0.0/8: "this host on this network"
  if (a === 127) return verdict("loopback");
  if (a === 10 || (a === 172 && c >= 16 && c <= 31) || (a === 192 && c === 168)) return verdict("private");
  if (a === 100 && c >= 64 && c <= 127) return verdict("private"); // 100.64/10, carrier-grade NAT
  if (a === 169 && c === 254) return verdict("link-local");
  if (a >= 224 && a <= 239) return verdict("multicast");
  if (a >= 240) return verdict("reserved");
  if (a === 192 && c === 0 && b[2] === 0) return verdict("reserved"); // 192.0.0/24, IETF protocol assignments
  if (a === 192 && c === 0 && b[2] === 2) return verdict("reserved"); // TEST-NET-1
  if (a === 198 && (c === 18 || c === 19)) return verdict("reserved"); // benchmarking
  if (a === 198 && c === 51 && b[2] === 100) return verdict("reserved"); // TEST-NET-2
  if (a === 203 && c === 0 && b[2] === 113) return verdict("reserved"); // TEST-NET-3
  if (a === 192 && c === 88 && b[2] === 99) return verdict("reserved"); // 6to4 relay anycast
  return verdict("public");
}

/** The 16 bytes of an IPv6 address (zone id dropped), or undefined. */
function parseV6(input: string): number[] | undefined {
  let s = input;
  const zone = s.indexOf("%");
  if (zone >= 0) s = s.slice(0, zone);
  if (isIP(s) !== 6) return undefined;
  let tail: number[] = [];
  const lastColon = s.lastIndexOf(":");
  if (s.slice(lastColon + 1).includes(".")) {
    const v4 = parseV4(s.slice(lastColon + 1));
    if (!v4) return undefined;
    tail = v4;
    s = s.slice(0, lastColon + 1) + "0:0"; // placeholder groups, replaced below
  }
  const [head, rest] = s.includes("::") ? s.split("::") : [s, undefined];
  const groups = (x: string | undefined) => (x ? x.split(":").filter((g) => g !== "") : []);
  const h = groups(head);
  const r = rest === undefined ? [] : groups(rest);
  const missing = 8 - h.length - r.length;
  if (rest === undefined ? h.length !== 8 : missing < 0) return undefined;
  const all = [...h, ...Array<string>(rest === undefined ? 0 : missing).fill("0"), ...r];
  const bytes: number[] = [];
  for (const g of all) {
    const n = parseInt(g, 16);
    bytes.push(n >> 8, n & 0xff);
  }
  if (tail.length === 4) bytes.splice(12, 4, ...tail);
  return bytes;
}

function classifyV6(b: number[]): AddressVerdict {
  const zeroTo = (n: number) => b.slice(0, n).every((x) => x === 0);
  if (b.every((x) => x === 0)) return verdict("unspecified");
  if (zeroTo(15) && b[15] === 1) return verdict("loopback");
  // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated): the IPv4 address decides.
  if (zeroTo(10) && b[10] === 0xff && b[11] === 0xff) return classifyV4(b.slice(12));
  if (zeroTo(12)) return classifyV4(b.slice(12));
  // 64:ff9b::/96 and 64:ff9b:1::/48 (NAT64): translated to the IPv4 address inside.
  if (b[0] === 0x00 && b[1] === 0x64 && b[2] === 0xff && b[3] === 0x9b) return classifyV4(b.slice(12));
  // 2002::/16 (6to4): bytes 2..5 are an IPv4 address.
  if (b[0] === 0x20 && b[1] === 0x02) {
    const inner = classifyV4(b.slice(2, 6));
    return inner.allowed ? verdict("public") : inner;
  }
  if (b[0] === 0xff) return verdict("multicast");
  if (b[0] === 0xfe && (b[1]! & 0xc0) === 0x80) return verdict("link-local"); // fe80::/10
  if (b[0] === 0xfe && (b[1]! & 0xc0) === 0xc0) return verdict("private"); // fec0::/10, site-local (deprecated)
  if ((b[0]! & 0xfe) === 0xfc) {
    // fc00::/7, unique local; fd00:ec2::254 is AWS's IPv6 metadata service.
    const awsMetadata = b[0] === 0xfd && b[1] === 0 && b[2] === 0x0e && b[3] === 0xc2 && b.slice(4, 14).every((x) => x === 0) && b[14] === 0x02 && b[15] === 0x54;
    return verdict(awsMetadata ? "metadata" : "private");
  }
  if (b[0] === 0x20 && b[1] === 0x01 && b[2] === 0x0d && b[3] === 0xb8) return verdict("reserved"); // documentation
  if (b[0] === 0x20 && b[1] === 0x01 && b[2] === 0x00 && b[3] === 0x00) return verdict("reserved"); // Teredo (hides an IPv4 address)
  if (b[0] === 0x01 && b[1] === 0x00 && b.slice(2, 8).every((x) => x === 0)) return verdict("reserved"); // 100::/64 discard
  if ((b[0]! & 0xe0) !== 0x20) return verdict("reserved"); // outside 2000::/3, global unicast
  return verdict("public");
}

/** The kind of an IP address literal (v4 or v6, brackets allowed); "invalid" for anything else. */
export function classifyAddress(address: string): AddressVerdict {
  const a = address.trim().replace(/^\[|\]$/g, "");
  const v4 = parseV4(a);
  if (v4) return classifyV4(v4);
  const v6 = parseV6(a);
  if (v6) return classifyV6(v6);
  return verdict("invalid");
}

/** Why an address is refused, for messages: `127.0.0.1 is a loopback address`. */
export function refusal(address: string, v: AddressVerdict): string {
  const what: Record<AddressKind, string> = {
    public: "a public address",
    loopback: "a loopback address",
    private: "a private-network address",
    "link-local": "a link-local address",
    multicast: "a multicast address",
    unspecified: "an unspecified address",
    metadata: "a cloud metadata service address",
    broadcast: "the broadcast address",
    reserved: "a reserved (non-routable) address",
    invalid: "not an IP address",
  };
  return `${address} is ${what[v.kind]}`;
}
