import { installCrashGuard } from "../shared/crash-guard.js";
import type { Logger } from "../shared/logger.js";
import { warnIfExposed } from "../shared/exposure.js";
import type { GatewayOptions } from "./options.js";
import { Gateway } from "./server.js";

export interface RunningGateway {
  httpPort: number;
  stop(): Promise<void>;
}

/** The gateway process: the HTTP API in front of the coordinator at opts.addr. */
export async function startGatewayProcess(opts: GatewayOptions, log: Logger): Promise<RunningGateway> {
  const guard = installCrashGuard(log, () => {});
  if (opts.urlSigningKeyGenerated) {
    log.warn(
      "no --url-signing-key (SHOAL_URL_SIGNING_KEY): using a random key, so image URLs stop working when this gateway restarts and are refused by other gateways; give every gateway the same key",
    );
  }
  warnIfExposed(log, "the HTTP gateway", opts.httpHost, [
    { condition: true, why: "over plain HTTP: API keys, prompts and image URLs cross the network in the clear (put a TLS-terminating proxy in front)" },
  ]);
  const gateway = new Gateway(opts, log);
  const httpPort = await gateway.start();
  log.info({ http: `${opts.httpHost}:${httpPort}`, coordinator: opts.addr, urlTtlMs: opts.urlTtlMs }, "gateway serving");
  let stopping: Promise<void> | undefined;
  return {
    httpPort,
    stop: () =>
      (stopping ??= (async () => {
        await gateway.stop();
        guard.uninstall();
      })()),
  };
}
