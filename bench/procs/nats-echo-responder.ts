// The raw-NATS reference, responder side: answers every request on a subject with its payload.
// Started as its own process by the dispatch case; prints READY once subscribed.
//   node dist/bench/procs/nats-echo-responder.js <nats-url> <subject>

import { connect } from "@nats-io/transport-node";

const [url, subject] = process.argv.slice(2);
if (!url || !subject) {
  process.stderr.write("usage: nats-echo-responder <nats-url> <subject>\n");
  process.exit(2);
}
const nc = await connect({ servers: url, name: "bench-echo-responder" });
nc.subscribe(subject, { callback: (err, msg) => void (err || msg.respond(msg.data)) });
await nc.flush();
process.stdout.write("READY\n");
process.on("SIGTERM", () => void nc.close().then(() => process.exit(0)));
