import { describe, test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { classifyAddress, type AddressKind } from "../../coordinator/webhook-address.js";
import { jittered } from "../../coordinator/webhooks.js";

const kind = (a: string) => classifyAddress(a).kind;
const octet = fc.integer({ min: 0, max: 255 });

describe("webhook address classifier", () => {
  test("webhook address - known addresses get their kind", () => {
    const cases: [string, AddressKind][] = [
      ["127.0.0.1", "loopback"], ["127.255.3.4", "loopback"], ["::1", "loopback"], ["[::1]", "loopback"],
      ["10.1.2.3", "private"], ["172.16.0.1", "private"], ["172.31.255.255", "private"], ["192.168.1.1", "private"], ["100.64.0.1", "private"],
      ["fc00::1", "private"], ["fd12:3456::1", "private"], ["fec0::1", "private"],
      ["169.254.1.1", "link-local"], ["fe80::1", "link-local"], ["fe80::1%eth0", "link-local"],
      ["224.0.0.1", "multicast"], ["239.255.255.250", "multicast"], ["ff02::1", "multicast"],
      ["0.0.0.0", "unspecified"], ["0.1.2.3", "unspecified"], ["::", "unspecified"],
      ["169.254.169.254", "metadata"], ["100.100.100.200", "metadata"], ["192.0.0.192", "metadata"], ["fd00:ec2::254", "metadata"],
      ["255.255.255.255", "broadcast"], ["240.0.0.1", "reserved"], ["192.0.2.1", "reserved"], ["198.18.0.1", "reserved"], ["2001:db8::1", "reserved"], ["2001::1", "reserved"],
      // IPv4 inside IPv6: the IPv4 address decides.
      ["::ffff:127.0.0.1", "loopback"], ["::ffff:7f00:1", "loopback"], ["[::ffff:169.254.169.254]", "metadata"], ["::ffff:10.0.0.1", "private"],
      ["::127.0.0.1", "loopback"], ["64:ff9b::10.0.0.1", "private"], ["64:ff9b::7f00:1", "loopback"], ["2002:7f00:1::1", "loopback"], ["2002:a9fe:a9fe::", "metadata"],
      ["::ffff:8.8.8.8", "public"], ["2002:808:808::1", "public"],
      ["8.8.8.8", "public"], ["1.1.1.1", "public"], ["172.32.0.1", "public"], ["100.128.0.1", "public"], ["2606:4700:4700::1111", "public"], ["2a00:1450:4001:80b::200e", "public"],
      ["localhost", "invalid"], ["1.2.3", "invalid"], ["256.1.1.1", "invalid"], ["01.2.3.4x", "invalid"], ["", "invalid"], ["1:2:3:4:5:6:7:8:9", "invalid"],
    ];
    for (const [a, k] of cases) assert.equal(kind(a), k, a);
    for (const [a, k] of cases) assert.equal(classifyAddress(a).allowed, k === "public", a);
  });

  test("webhook address - every address in a refused IPv4 range is refused, in every IPv6 spelling too", () => {
    const refusedV4 = fc.oneof(
      fc.tuple(octet, octet, octet).map(([b, c, d]) => `127.${b}.${c}.${d}`),
      fc.tuple(octet, octet, octet).map(([b, c, d]) => `10.${b}.${c}.${d}`),
      fc.tuple(fc.integer({ min: 16, max: 31 }), octet, octet).map(([b, c, d]) => `172.${b}.${c}.${d}`),
      fc.tuple(octet, octet).map(([c, d]) => `192.168.${c}.${d}`),
      fc.tuple(octet, octet).map(([c, d]) => `169.254.${c}.${d}`),
      fc.tuple(fc.integer({ min: 224, max: 255 }), octet, octet, octet).map(([a, b, c, d]) => `${a}.${b}.${c}.${d}`),
      fc.tuple(octet, octet, octet).map(([b, c, d]) => `0.${b}.${c}.${d}`),
    );
    fc.assert(
      fc.property(refusedV4, (v4) => {
        const [a, b, c, d] = v4.split(".").map(Number) as [number, number, number, number];
        const hex = `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
        for (const form of [v4, `::ffff:${v4}`, `::ffff:${hex}`, `[::ffff:${v4}]`, `64:ff9b::${v4}`, `2002:${hex}::1`, `0:0:0:0:0:ffff:${hex}`]) {
          assert.equal(classifyAddress(form).allowed, false, form);
        }
      }),
      { numRuns: 300 },
    );
  });

  test("webhook address - a mapped IPv4 address is judged like the address itself", () => {
    fc.assert(
      fc.property(octet, octet, octet, octet, (a, b, c, d) => {
        const v4 = `${a}.${b}.${c}.${d}`;
        assert.equal(kind(`::ffff:${v4}`), kind(v4), v4);
      }),
      { numRuns: 500 },
    );
  });

  test("webhook retries - jitter keeps each delay within ±25 %", () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 600_000 }), fc.double({ min: 0, max: 0.999999, noNaN: true }), (ms, r) => {
      const j = jittered(ms, () => r);
      assert.ok(j >= Math.floor(ms * 0.75) && j <= Math.ceil(ms * 1.25), `${ms} → ${j}`);
    }));
    assert.notEqual(jittered(10_000, () => 0), jittered(10_000, () => 0.99));
  });
});
