// Wires the client commands into a commander program: flags, help text, and the one place
// where a command's outcome becomes process.exitCode. cli/main.ts owns the program and the
// server commands (up, coordinator, worker).

import { Command, InvalidArgumentError } from "commander";
import { createClients, DEFAULT_ADDR, type ShoalClients } from "./client.js";
import { clientTlsPaths, loadClientTls, type ClientTls, type ClientTlsPaths } from "./client-tls.js";
import * as commands from "./commands.js";
import { reportError } from "./error-report.js";
import type { Output } from "./output.js";

export interface ClientCommandDeps {
  out?: Output;
  err?: Output;
  /** Tests inject clients bound to a fake server. */
  createClients?: (addr: string, tls?: ClientTls) => ShoalClients;
}

const SUBMIT_HELP = `
Batch file shapes:
  [{"model": "imagegen-tiny", "params": {"prompt": "..."}}, ...]        a JSON array of items
  {"items": [...], "priority": 5, "labels": {...}, "idempotency_key": "...", "webhook": {"url": "..."}}
  {"requests": [{"prompt": "...", "width": 256, "height": 256, "style": "..."}, ...],
   "webhook_url": "...", "webhook_events": ["batch.completed"]}        the batch image API body
  JSONL: one item per line, {"model", "params"} or a flat request; # comments allowed
Items that name no model use imagegen-tiny, or --model. "-" reads the file from stdin.

Examples:
  shoal submit examples/demo-batch.json --wait
  shoal submit ads.jsonl --priority 5 --label campaign=spring --idempotency-key ads-2025-03
`;

export function registerClientCommands(program: Command, deps: ClientCommandDeps = {}): void {
  if (!program.options.some((o) => o.long === "--addr")) {
    program.option("--addr <host:port>", `coordinator gRPC address, or several comma-separated (standbys: the active one answers) (env SHOAL_ADDR, default ${DEFAULT_ADDR})`);
  }
  if (!program.options.some((o) => o.long === "--ca")) {
    program
      .option("--ca <file>", "PEM CA of the coordinator's TLS certificate; turns TLS on (env SHOAL_CA)")
      .option("--cert <file>", "PEM client certificate, for a coordinator that requires one (mTLS) (env SHOAL_CERT)")
      .option("--key <file>", "PEM private key of --cert (env SHOAL_KEY)");
  }
  const out = deps.out ?? process.stdout;
  const err = deps.err ?? process.stderr;
  const makeClients = deps.createClients ?? ((addr: string, tls?: ClientTls) => createClients(addr, undefined, { tls: tls ?? null }));

  const run = async (command: Command, body: (ctx: commands.CommandContext) => Promise<number>): Promise<void> => {
    const globals = command.optsWithGlobals<{ addr?: string } & ClientTlsPaths>();
    const addr = globals.addr ?? process.env.SHOAL_ADDR ?? DEFAULT_ADDR;
    let clients: ShoalClients;
    try {
      clients = makeClients(addr, loadClientTls(clientTlsPaths(globals)));
    } catch (e) {
      process.exitCode = reportError(e, err, { addr, debug: Boolean(process.env.SHOAL_DEBUG) });
      return;
    }
    try {
      const code = await body({ clients, out, err });
      if (code !== 0) process.exitCode = code;
    } catch (e) {
      process.exitCode = reportError(e, err, { addr, debug: Boolean(process.env.SHOAL_DEBUG) });
    } finally {
      clients.close();
    }
  };

  program
    .command("submit")
    .description("submit a batch file; prints the batch id, or follows it to the end with --wait")
    .argument("<file>", "batch file: JSON array, {items}, {requests} or JSONL; - for stdin")
    .option("-w, --wait", "follow the batch with a progress bar and print a summary; exit 1 if it FAILED")
    .option("-m, --model <name>", "model for items that name none (default imagegen-tiny)")
    .option("-p, --priority <n>", "higher runs first among active batches", intArg("--priority", -(2 ** 31), 2 ** 31 - 1))
    .option("--idempotency-key <key>", "a retried submit with the same key returns the first batch")
    .option("-l, --label <k=v>", "label the batch; repeatable", collect)
    .addHelpText("after", SUBMIT_HELP)
    .action(async (file: string, opts: commands.SubmitOptions, command: Command) =>
      run(command, (ctx) => commands.submit(ctx, file, opts)),
    );

  program
    .command("get")
    .description("show a batch: state, counts, timing, and every item once it is finished")
    .argument("<batch-id>")
    .option("--json", "print the whole batch as JSON")
    .action(async (id: string, opts: commands.GetOptions, command: Command) => run(command, (ctx) => commands.get(ctx, id, opts)));

  program
    .command("watch")
    .description("print a line per finished item, then the final state; exit 1 if the batch FAILED")
    .argument("<batch-id>")
    .action(async (id: string, _opts: unknown, command: Command) => run(command, (ctx) => commands.watch(ctx, id)));

  program
    .command("results")
    .description("download the outputs of a finished batch, verified, plus a results.json manifest")
    .argument("<batch-id>")
    .option("-o, --out <dir>", "folder to write into", "./out")
    .action(async (id: string, opts: commands.ResultsOptions, command: Command) =>
      run(command, (ctx) => commands.results(ctx, id, opts)),
    );

  program
    .command("workers")
    .description("list workers: state, load, free/total VRAM per GPU, resident models")
    .action(async (_opts: unknown, command: Command) => run(command, (ctx) => commands.workers(ctx)));

  program
    .command("models")
    .description("list models with their params and VRAM needs")
    .action(async (_opts: unknown, command: Command) => run(command, (ctx) => commands.models(ctx)));

  program
    .command("cancel")
    .description("cancel a batch: pending items become CANCELLED, running ones stop where possible")
    .argument("<batch-id>")
    .action(async (id: string, _opts: unknown, command: Command) => run(command, (ctx) => commands.cancel(ctx, id)));

  program
    .command("retry")
    .description("submit the retryable FAILED items of a batch as a new batch; prints its id")
    .argument("<batch-id>")
    .action(async (id: string, _opts: unknown, command: Command) => run(command, (ctx) => commands.retry(ctx, id)));

  program
    .command("list")
    .description("list batches, newest first")
    .option("-n, --page-size <n>", "batches per page", intArg("--page-size", 1, 1000))
    .option("--page-token <token>", "continue from a previous page")
    .action(async (opts: commands.ListOptions, command: Command) => run(command, (ctx) => commands.list(ctx, opts)));

  program
    .command("usage")
    .description("items and GPU-seconds per tenant and UTC day (succeeded items are what is charged), and the tenants' plan limits")
    .option("--tenant <name>", "one tenant's usage (an operator key may name any; a tenant key only its own)")
    .option("--since <YYYY-MM-DD>", "first UTC day shown (default: 30 days ago)", dayArg)
    .option("--json", "print the days and the plan limits as JSON (as GET /v1/usage answers; null: no limit of the tenant's own)")
    .action(async (opts: commands.UsageOptions, command: Command) => run(command, (ctx) => commands.usage(ctx, opts)));

  program
    .command("drain")
    .description("stop placing items on a worker; its in-flight items finish")
    .argument("<worker-id>")
    .action(async (id: string, _opts: unknown, command: Command) => run(command, (ctx) => commands.drain(ctx, id)));
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

function dayArg(value: string): string {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(value) || Number.isNaN(Date.parse(`${value}T00:00:00Z`))) throw new InvalidArgumentError("--since must be a date YYYY-MM-DD (UTC)");
  return value;
}

function intArg(flag: string, min: number, max: number): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (value.trim() === "" || !Number.isInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`${flag} must be an integer between ${min} and ${max}`);
    }
    return n;
  };
}
