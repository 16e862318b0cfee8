// Keeps a long-running Shoal process serving when some code path fails in a way nobody
// handled. Node's default for an unhandled rejection is to exit, which turns one bad request or
// message into an outage for every client; every public entry already validates its input, so
// what reaches these handlers is a bug. It is logged with its stack, counted in
// `shoal_unexpected_errors_total{kind}` (alerted on) and the process goes on.

import type { Logger } from "./logger.js";

export type CrashKind = "unhandled_rejection" | "uncaught_exception";

export interface CrashGuard {
  /** Removes the handlers; idempotent. */
  uninstall(): void;
}

export function installCrashGuard(log: Logger, count: (kind: CrashKind) => void): CrashGuard {
  const report = (kind: CrashKind, err: unknown) => {
    try {
      count(kind);
      log.error({ err, kind }, "unexpected error; the process keeps running (this is a bug: please report it)");
    } catch {
      /* a failing logger must not turn this into a crash loop */
    }
  };
  const onRejection = (reason: unknown) => report("unhandled_rejection", reason);
  const onException = (err: Error) => report("uncaught_exception", err);
  process.on("unhandledRejection", onRejection);
  process.on("uncaughtException", onException);
  let installed = true;
  return {
    uninstall() {
      if (!installed) return;
      installed = false;
      process.off("unhandledRejection", onRejection);
      process.off("uncaughtException", onException);
    },
  };
}
