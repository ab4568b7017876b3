/**
 * `nodectl` — the command line. It uses the public API in `mod.ts` like any other user.
 *
 * @module
 */
import process from "node:process";
import { parseArgs, type ParseArgsConfig } from "node:util";
import { cookie, id, knownNodes } from "./cli/admin.ts";
import { call, CALL_FLAGS, CALL_HELP } from "./cli/call.ts";
import { UsageError, type Values } from "./cli/common.ts";
import { demo } from "./cli/demo.ts";
import { serve, SERVE_FLAGS, SERVE_HELP } from "./cli/serve.ts";
import { EXIT_CODES, NodectlError, PROTOCOL_VERSION, VERSION } from "./mod.ts";

/** Exit code: success. */
export const EXIT_OK = 0;
/** Exit code: a failure that has no code of its own. */
export const EXIT_FAILURE = 1;
/** Exit code: bad command line (unknown command or flag, missing or malformed value). */
export const EXIT_USAGE = 2;

type Options = NonNullable<ParseArgsConfig["options"]>;

interface Command {
  summary: string;
  usage: string;
  details: string;
  options: Options;
  positionals?: boolean;
  run(values: Values, positionals: string[]): Promise<number>;
}

const COMMON: Options = { help: { type: "boolean", short: "h" } };
const CONFIG_DIR: Options = { "config-dir": { type: "string" } };
const NAME_FLAGS: Options = { name: { type: "string" }, sname: { type: "string" } };

const COMMANDS: Record<string, Command> = {
  serve: {
    summary: "run a node (private: SecretService; public: HTTP front that calls it)",
    usage: "nodectl serve --role private|public|private,public [flags]",
    details: SERVE_HELP,
    options: SERVE_FLAGS,
    run: (values) => serve(values),
  },
  call: {
    summary: "call a function of a service on a node and print the result",
    usage: "nodectl call [SERVICE.]FUNCTION [ARG...] --to NAME@HOST[:PORT] [flags]",
    details: CALL_HELP,
    options: CALL_FLAGS,
    positionals: true,
    run: (values, positionals) => call(values, positionals),
  },
  demo: {
    summary: "walk through the seed story with two local nodes, then clean up",
    usage: "nodectl demo",
    details: "  --keep               leave the temp directory (and its logs) behind",
    options: { keep: { type: "boolean" } },
    run: (values) => demo(values),
  },
  id: {
    summary: "print a node's public key fingerprint (created on first use)",
    usage: "nodectl id [--sname N | --name N@HOST | --call] [--config-dir DIR]",
    details: [
      "  --sname N / --name N@HOST  the node (default: private)",
      "  --call               the key `nodectl call` uses (give it to serve --admin-allow to let",
      "                       this user run SecretService.set_secret)",
      "  --config-dir DIR",
    ].join("\n"),
    options: { ...NAME_FLAGS, ...CONFIG_DIR, call: { type: "boolean" } },
    run: (values) => id(values),
  },
  "known-nodes": {
    summary: "list, forget or add pinned peer keys (like ssh's known_hosts)",
    usage: "nodectl known-nodes [list | forget NODE | add NODE BASE64KEY] [--config-dir DIR]",
    details: "  --config-dir DIR",
    options: CONFIG_DIR,
    positionals: true,
    run: (values, positionals) => knownNodes(values, positionals),
  },
  cookie: {
    summary: "show where the cookie comes from and its strength (creates it on first use)",
    usage: "nodectl cookie [new [--force]] [--config-dir DIR] [--cookie-file PATH]",
    details: [
      "  new                  write a fresh 256-bit cookie (0600) to the cookie file",
      "  --force              with new: replace an existing cookie file",
      "  --config-dir DIR     where the default cookie file lives",
      "  --cookie-file PATH   use PATH instead of <config-dir>/cookie",
    ].join("\n"),
    options: { ...CONFIG_DIR, "cookie-file": { type: "string" }, force: { type: "boolean" } },
    positionals: true,
    run: (values, positionals) => cookie(values, positionals),
  },
};

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
    "Exit codes: 0 success, 1 failure, 2 usage error, "
    + Object.entries(EXIT_CODES).map(([code, n]) => `${n} ${code}`).join(", ") + ".",
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

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, " ");
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
  const unexpected = /Unexpected argument '([^']+)'/.exec(msg);
  if (unexpected) return new UsageError(`unexpected argument '${unexpected[1]}'`, command);
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
        allowPositionals: command.positionals ?? false,
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
    if (err instanceof NodectlError) {
      process.stderr.write(`nodectl: ${oneLine(err.message)}\n`);
      return err.exitCode;
    }
    // Not a user error: still one line, but say it is unexpected.
    const message = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    process.stderr.write(`nodectl: unexpected error: ${oneLine(message)}\n`);
    return EXIT_FAILURE;
  }
}

if (import.meta.main) {
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
