// Test certificates made with `openssl` at test time (never committed): a CA, a server
// certificate for 127.0.0.1 and localhost, a client certificate, and a second, unrelated CA with
// a client certificate of its own (for "wrong CA" cases). EC P-256 keys, valid for a day.

import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export interface TestCerts {
  dir: string;
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** An unrelated CA, and a client certificate it signed. */
  otherCa: string;
  otherClientCert: string;
  otherClientKey: string;
}

function openssl(args: string[], cwd: string): void {
  try {
    execFileSync("openssl", args, { cwd, stdio: ["ignore", "pipe", "pipe"], timeout: 30_000 });
  } catch (err) {
    const e = err as { code?: string; stderr?: Buffer };
    if (e.code === "ENOENT") throw new Error("openssl not found: the TLS tests make their certificates with it (Debian: apt-get install openssl)");
    throw new Error(`openssl ${args[0]} failed: ${e.stderr?.toString() ?? String(err)}`);
  }
}

function makeCa(dir: string, name: string): void {
  writeFileSync(join(dir, `${name}.cnf`), `[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=Shoal test ${name}\n[v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n`);
  openssl(["req", "-x509", "-config", `${name}.cnf`, "-extensions", "v3_ca", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", `${name}.key`, "-out", `${name}.crt`, "-days", "1"], dir);
}

function makeLeaf(dir: string, name: string, ca: string, cn: string, ext: string): void {
  writeFileSync(join(dir, `${name}.cnf`), `[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=${cn}\n`);
  writeFileSync(join(dir, `${name}.ext`), ext);
  openssl(["req", "-new", "-config", `${name}.cnf`, "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", `${name}.key`, "-out", `${name}.csr`], dir);
  openssl(["x509", "-req", "-in", `${name}.csr`, "-CA", `${ca}.crt`, "-CAkey", `${ca}.key`, "-CAcreateserial", "-out", `${name}.crt`, "-days", "1", "-extfile", `${name}.ext`], dir);
}

export function makeTestCerts(parent: string): TestCerts {
  const dir = join(parent, "certs");
  mkdirSync(dir, { recursive: true });
  makeCa(dir, "ca");
  makeCa(dir, "other-ca");
  makeLeaf(dir, "server", "ca", "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n");
  makeLeaf(dir, "client", "ca", "shoal-test-client", "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n");
  makeLeaf(dir, "other-client", "other-ca", "shoal-test-intruder", "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n");
  const p = (f: string) => join(dir, f);
  return {
    dir,
    ca: p("ca.crt"),
    serverCert: p("server.crt"),
    serverKey: p("server.key"),
    clientCert: p("client.crt"),
    clientKey: p("client.key"),
    otherCa: p("other-ca.crt"),
    otherClientCert: p("other-client.crt"),
    otherClientKey: p("other-client.key"),
  };
}
