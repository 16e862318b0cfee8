// Errors shared by every Shoal process. Each carries a stable `code` so callers (and tests)
// branch on codes, never on message text.

export type ConfigErrorCode = "CONFIG_INVALID";

/** A flag, env var or config value is wrong; the message names the option. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
  readonly code: ConfigErrorCode = "CONFIG_INVALID";
  constructor(
    readonly option: string,
    message: string,
  ) {
    super(`${option}: ${message}`);
  }
}

/** A message from NATS that does not decode or breaks the protocol. Logged and dropped. */
export class ProtocolError extends Error {
  override readonly name = "ProtocolError";
  readonly code = "PROTOCOL_ERROR";
  constructor(
    readonly subject: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`${subject}: ${message}`, options);
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
