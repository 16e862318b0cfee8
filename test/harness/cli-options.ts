// The flags and environment variables Shoal's server commands accept, read from the CLI's own
// option definitions (the same builders cli/main.ts uses), and a parse of a container's args and
// env through them: what a deployment file sets must be something the process takes.

import { Command, CommanderError } from "commander";
import { coordinatorOptionsFrom, commonOptions, coordinatorFlags, gatewayFlags, workerFlags, workerOptionsFrom } from "../../cli/server-commands.js";
import { gatewayOptionsFrom } from "../../gateway/options.js";

export const SERVER_COMMANDS = ["coordinator", "worker", "gateway"] as const;
export type ServerCommand = (typeof SERVER_COMMANDS)[number];

export function serverCommand(name: ServerCommand): Command {
  const cmd = new Command(name);
  if (name === "coordinator") commonOptions(coordinatorFlags(cmd));
  else if (name === "worker") commonOptions(workerFlags(cmd));
  else gatewayFlags(cmd);
  return cmd;
}

export function acceptedEnv(name: ServerCommand): Set<string> {
  return new Set(serverCommand(name).options.map((o) => o.envVar).filter((e): e is string => e !== undefined));
}

export function acceptedFlags(name: ServerCommand): Set<string> {
  return new Set(serverCommand(name).options.map((o) => o.long).filter((l): l is string => l !== undefined));
}

/**
 * Parses args and env the way `shoal <name>` does, then builds the component's options (which
 * checks every value). Throws with the CLI's own message on anything it would refuse.
 */
export function parseServer(name: ServerCommand, args: string[], env: Record<string, string>): Record<string, unknown> {
  const saved = { ...process.env };
  // Only the given environment: the test runner's own SHOAL_* must not leak in.
  for (const k of Object.keys(process.env)) if (k.startsWith("SHOAL_")) delete process.env[k];
  Object.assign(process.env, env);
  try {
    const cmd = serverCommand(name).exitOverride().configureOutput({ writeErr: () => {}, writeOut: () => {} });
    let raw: Record<string, unknown> = {};
    cmd.action((opts: Record<string, unknown>) => {
      raw = opts;
    });
    try {
      cmd.parse(args, { from: "user" });
    } catch (err) {
      throw new Error(`shoal ${name} ${args.join(" ")}: ${err instanceof CommanderError ? err.message : String(err)}`);
    }
    const r = raw as Record<string, string | boolean | undefined>;
    if (name === "coordinator") return coordinatorOptionsFrom(r) as unknown as Record<string, unknown>;
    if (name === "worker") return workerOptionsFrom(r) as unknown as Record<string, unknown>;
    return gatewayOptionsFrom(r) as unknown as Record<string, unknown>;
  } finally {
    for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    Object.assign(process.env, saved);
  }
}
