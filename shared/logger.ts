import { pino, type Logger, type LevelWithSilent } from "pino";
import pretty from "pino-pretty";

export type { Logger };

export type LogFormat = "json" | "pretty";

export interface LoggerOptions {
  level: LevelWithSilent;
  format: LogFormat;
  /** Bound to every line: the process's component ("coordinator", "worker", "up"). */
  component: string;
  base?: Record<string, unknown>;
}

/**
 * One root logger per process. JSON by default (what log shippers want); `pretty` for people at
 * a terminal. Prompts, params and keys are never logged: callers log batch and item ids. (No
 * redaction pass: it costs on every line, and there is nothing to redact.)
 */
export function createLogger(opts: LoggerOptions): Logger {
  const options = {
    level: opts.level,
    base: { component: opts.component, ...opts.base },
  };
  if (opts.format === "pretty") {
    return pino(options, pretty({ colorize: process.stderr.isTTY, destination: 2, sync: true, ignore: "pid,hostname" }));
  }
  return pino(options, pino.destination({ fd: 2, sync: false }));
}

export function defaultLogFormat(): LogFormat {
  return process.stderr.isTTY ? "pretty" : "json";
}

export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
