// A process's CPU over a window, thread by thread. /proc/<pid>/task/<tid>/schedstat counts
// nanoseconds (stat's utime + stime count 10 ms ticks: too coarse for a few ms per second), but
// only for threads alive when read, so a sum over the live threads drops whenever a thread ends
// (libvips and onnxruntime end idle pool threads): summed before and after, a window could read
// negative. Deltas per thread avoid that: a thread alive at both ends counts its difference, one
// started in the window counts all it used, and one that ended in the window counts nothing (what
// it used between the first read and its end is lost; an ending pool thread was idle).

import { readdirSync, readFileSync } from "node:fs";

/** Nanoseconds on a CPU of each live thread of `pid`, by thread id. */
export type ThreadCpu = Map<number, number>;

export function threadCpu(pid: number): ThreadCpu {
  const out: ThreadCpu = new Map();
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      out.set(Number(tid), Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ")[0]));
    } catch {
      /* the thread ended between the listing and the read */
    }
  }
  return out;
}

/** CPU seconds a process used between two snapshots of its threads (never negative). */
export function cpuSecondsBetween(before: ThreadCpu, after: ThreadCpu): number {
  let ns = 0;
  for (const [tid, now] of after) ns += Math.max(0, now - (before.get(tid) ?? 0));
  return ns / 1e9;
}
