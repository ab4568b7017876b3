/**
 * `nodectl` — the command line. It uses the public API in `mod.ts` like any other user.
 *
 * @module
 */
import process from "node:process";
import { parseArgs, type ParseArgsConfig } from "node:util";
import { PROTOCOL_VERSION, VERSION } from "./version.ts";

/** Exit codes shared by every command; per-error codes come from the node layer. */
export const EXIT_OK = 0;
/** Generic failure. */
export const EXIT_FAILURE = 1;
/** Bad command line: unknown command or flag, missing or malformed value. */
export const EXIT_USAGE = 2;

/** A mistake in the command line; printed as one line with a usage hint, exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
  constructor(message: string, readonly command?: string) {
    super(message);
  }
}

type Options = NonNullable<ParseArgsConfig["options"]>;
type Values = Record<string, string | boolean | string[] | boolean[] | undefined>;

interface Command {
  summary: string;
  usage: string;
  details: string;
  options: Options;
  run(values: Values, positionals: string[]): Promise<number>;
}

const COMMON: Options = { help: { type: "boolean", short: "h" } };

const COMMANDS: Record<string, Command> = {
  serve: {
    summary: "run a node (private: SecretService; public: HTTP front that calls it)",
    usage: "nodectl serve --role private|public|private,public [flags]",
    details: [
      "  --role R           private, public, or private,public (both in one process)",
      "  --name N@HOST      long node name (DNS name or IP)",
      "  --sname N          short node name, reachable from this host",
    ].join("\n"),
    options: {
      role: { type: "string" },
      name: { type: "string" },
      sname: { type: "string" },
    },
    run: () => notYet("serve"),
  },
  call: {
    summary: "call a function of a service on a node and print the result",
    usage: "nodectl call [SERVICE.]FUNCTION [ARG...] --to NAME@HOST[:PORT] [flags]",
    details: [
      "  --to NODE          the node to call (name@host, name@host:port, or a short name)",
      "  --json             print the result as JSON",
      "  --timeout MS       one deadline for resolve, connect, handshake and call (5000)",
    ].join("\n"),
    options: {
      to: { type: "string" },
      json: { type: "boolean" },
      timeout: { type: "string" },
    },
    run: () => notYet("call"),
  },
  demo: {
    summary: "walk through the seed story with two local nodes, then clean up",
    usage: "nodectl demo",
    details: "",
    options: {},
    run: () => notYet("demo"),
  },
};

async function notYet(name: string): Promise<number> {
  await Promise.resolve();
  process.stderr.write(`nodectl: '${name}' is not available in this build yet\n`);
  return EXIT_FAILURE;
}

function topHelp(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length));
  const lines = Object.entries(COMMANDS).map(([name, c]) =>
    `  ${name.padEnd(width)}  ${c.summary}`
  );
  return [
    `nodectl ${VERSION} — call named services on other machines over an encrypted Noise channel`,
    "",
    "Usage: nodectl <command> [flags]",
    "",
    "Commands:",
    ...lines,
    "",
    "Flags:",
    "  -h, --help     show help (also: nodectl <command> --help)",
    "  -V, --version  show version and protocol version",
    "",
    "Exit codes: 0 success, 1 failure, 2 usage error.",
  ].join("\n") + "\n";
}

function commandHelp(name: string, c: Command): string {
  return [
    `nodectl ${name} — ${c.summary}`,
    "",
    `Usage: ${c.usage}`,
    "",
    "Flags:",
    ...(c.details ? [c.details] : []),
    "  -h, --help         show this help",
  ].join("\n") + "\n";
}

/** Turns node:util parseArgs' messages into one line naming the offending flag. */
function usageFromParseError(err: unknown, command: string): UsageError {
  const msg = err instanceof Error ? err.message : String(err);
  const unknown = /Unknown option '([^']+)'/.exec(msg);
  if (unknown) return new UsageError(`unknown flag ${unknown[1]} for '${command}'`, command);
  const missing = /Option '([^']+)' argument missing/.exec(msg);
  if (missing) {
    const flag = missing[1]!.split(",").pop()!.trim().split(" ")[0];
    return new UsageError(`flag ${flag} needs a value`, command);
  }
  const first = msg.split("\n")[0] ?? msg;
  return new UsageError(first.replace(/\. To specify.*$/, ""), command);
}

/**
 * Runs nodectl with the given arguments and resolves to the process exit code. Output goes to
 * stdout and stderr; nothing here calls `process.exit`, so it is testable in-process.
 */
export async function main(args: string[]): Promise<number> {
  try {
    const [first, ...rest] = args;
    if (first === undefined || first === "-h" || first === "--help" || first === "help") {
      process.stdout.write(topHelp());
      return first === undefined ? EXIT_USAGE : EXIT_OK;
    }
    if (first === "-V" || first === "--version" || first === "version") {
      process.stdout.write(`nodectl ${VERSION} (protocol ${PROTOCOL_VERSION})\n`);
      return EXIT_OK;
    }
    if (first.startsWith("-")) throw new UsageError(`unknown flag ${first}`);
    const command = COMMANDS[first];
    if (!command) throw new UsageError(`unknown command '${first}'`);
    let parsed;
    try {
      parsed = parseArgs({
        args: rest,
        options: { ...COMMON, ...command.options },
        allowPositionals: true,
        strict: true,
      });
    } catch (err) {
      throw usageFromParseError(err, first);
    }
    if (parsed.values.help) {
      process.stdout.write(commandHelp(first, command));
      return EXIT_OK;
    }
    return await command.run(parsed.values as Values, parsed.positionals);
  } catch (err) {
    if (err instanceof UsageError) {
      const hint = err.command ? `nodectl ${err.command} --help` : "nodectl --help";
      process.stderr.write(`nodectl: ${err.message} (see '${hint}')\n`);
      return EXIT_USAGE;
    }
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`nodectl: ${message}\n`);
    return EXIT_FAILURE;
  }
}

if (import.meta.main) {
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
