// Turns whatever a client command threw into a short message on stderr and an exit status.
// Expected errors (a refused batch, an unreachable coordinator, a bad flag) get one clear line
// and no stack trace; only a real bug shows its stack, because then the stack is the point.

import { ArtifactIntegrityError, BatchFileError, ClientError, UsageError } from "./errors.js";
import { EXIT_FAILURE, EXIT_USAGE } from "./commands.js";
import type { Output } from "./output.js";
import { ConfigError } from "../shared/errors.js";

export interface ReportContext {
  /** The coordinator address, to say where we failed to connect. */
  addr: string;
  /** Show stacks of unexpected errors (SHOAL_DEBUG=1). */
  debug?: boolean;
}

export function reportError(err: unknown, out: Output, ctx: ReportContext): number {
  const line = (text: string): void => void out.write(text + "\n");

  if (err instanceof BatchFileError) {
    if (err.problems.length === 1) line(`error: ${err.problems[0]}`);
    else {
      line(`error: ${err.file}: ${err.problems.length} problems`);
      for (const p of err.problems) line(`  ${p}`);
    }
    return EXIT_USAGE;
  }
  if (err instanceof ConfigError) {
    line(`error: ${err.message}`);
    return EXIT_USAGE;
  }
  if (err instanceof UsageError) {
    line(`error: ${err.message}`);
    return EXIT_USAGE;
  }
  if (err instanceof ClientError) return reportClientError(err, line, ctx);
  if (err instanceof ArtifactIntegrityError) {
    line(`error: ${err.message}`);
    return EXIT_FAILURE;
  }
  if (err instanceof Error && typeof (err as NodeJS.ErrnoException).code === "string" && (err as NodeJS.ErrnoException).syscall) {
    // A filesystem error (EACCES writing results, ENOSPC): the message names path and cause.
    line(`error: ${err.message}`);
    return EXIT_FAILURE;
  }
  if (err instanceof Error && err.name === "AbortError") {
    line("error: interrupted");
    return EXIT_FAILURE;
  }
  const message = err instanceof Error ? err.message : String(err);
  line(`error: ${message}`);
  if (ctx.debug && err instanceof Error && err.stack) line(err.stack);
  else line("(unexpected; SHOAL_DEBUG=1 shows the stack trace)");
  return EXIT_FAILURE;
}

function reportClientError(err: ClientError, line: (text: string) => void, ctx: ReportContext): number {
  switch (err.code) {
    case "INVALID_ARGUMENT": {
      const problems = err.fieldProblems;
      if (problems.length <= 1) line(`error: refused (INVALID_ARGUMENT): ${problems[0] ?? "invalid request"}`);
      else {
        line(`error: refused (INVALID_ARGUMENT), ${problems.length} problems:`);
        for (const p of problems) line(`  ${p}`);
      }
      return EXIT_USAGE;
    }
    case "UNAVAILABLE":
      line(
        `error: cannot reach the Shoal coordinator at ${ctx.addr} (UNAVAILABLE${err.details ? `: ${connectReason(err.details)}` : ""}); ` +
          "is it running? Start one with `shoal up`, or point --addr or SHOAL_ADDR at it" +
          (/ssl|tls|certificate|handshake/i.test(err.details) ? "; TLS failed: check --ca (SHOAL_CA), and --cert/--key (SHOAL_CERT, SHOAL_KEY) if it requires client certificates" : ""),
      );
      return EXIT_FAILURE;
    case "UNAUTHENTICATED":
      line(`error: UNAUTHENTICATED: ${err.details || "no valid API key"} (set SHOAL_API_KEY to a key the coordinator accepts)`);
      return EXIT_FAILURE;
    case "DEADLINE_EXCEEDED":
      line(`error: the coordinator at ${ctx.addr} did not answer in time (DEADLINE_EXCEEDED)`);
      return EXIT_FAILURE;
    default:
      line(`error: ${err.code}${err.details ? `: ${err.details}` : ""}`);
      return EXIT_FAILURE;
  }
}

/** grpc-js wraps the socket error in two sentences of its own; keep the socket error. */
function connectReason(details: string): string {
  return details
    .replace(/\s*Resolution note:.*$/s, "")
    .replace(/^No connection established\. Last error: (?:Error: )?/, "")
    .replace(/\.$/, "");
}
