// Preloaded into every Node process of a `shoal up` the bench profiles (NODE_OPTIONS=--import,
// because node refuses --cpu-prof in NODE_OPTIONS): samples the main thread's CPU with the
// inspector's profiler from start to exit and writes `<dir>/<pid>.cpuprofile`, which
// profile-summary.ts reads like a --cpu-prof file. Does nothing unless
// SHOAL_BENCH_CPU_PROFILE_DIR is set, and nothing in worker threads.

import { Session } from "node:inspector";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { isMainThread } from "node:worker_threads";

const dir = process.env.SHOAL_BENCH_CPU_PROFILE_DIR;
if (dir && isMainThread) {
  const session = new Session();
  session.connect();
  session.post("Profiler.enable");
  session.post("Profiler.start");
  // The main thread's inspector session answers synchronously, so this works in "exit".
  process.on("exit", () => {
    session.post("Profiler.stop", (err, result) => {
      if (!err) writeFileSync(join(dir, `${process.pid}.cpuprofile`), JSON.stringify(result.profile));
    });
  });
}
