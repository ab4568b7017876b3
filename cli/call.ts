/**
 * `nodectl call`: a short-lived hidden node that connects, calls one function, prints the result
 * and exits — with the error's exit code on failure.
 *
 * @module
 */
import { readFileSync } from "node:fs";
import process from "node:process";
import { Node, parseNodeName, SECRET_SERVICE, shortHostname } from "../mod.ts";
import {
  int,
  makeLogger,
  NODE_FLAGS,
  NODE_FLAGS_HELP,
  openNodeContext,
  str,
  UsageError,
  type Values,
} from "./common.ts";

/** Flags of `call`. */
export const CALL_FLAGS = {
  to: { type: "string" },
  json: { type: "boolean" },
  timeout: { type: "string" },
  ...NODE_FLAGS,
} as const;

/** Help text of `call`. */
export const CALL_HELP = [
  "  --to NODE            the node: NAME@HOST, NAME@HOST:PORT, or NAME (a node on this host)",
  '  --json               print the result as JSON (bytes as {"$bytes": base64}, big integers',
  '                       as {"$bigint": "digits"})',
  "  --timeout MS         one deadline for name lookup, connect, handshake and call (5000)",
  "",
  "FUNCTION is SERVICE.FUNCTION, or FUNCTION alone for SecretService. Each ARG is JSON when it",
  'parses as JSON (42, true, "text", [1,2], {"k":1}), else a string. An ARG of - is read from',
  "standard input as a string (keeps secret values out of argv and shell history).",
  NODE_FLAGS_HELP,
].join("\n");

/** Standard input as text, one trailing newline dropped: for values that must stay off argv. */
function stdinText(): string {
  let text: string;
  try {
    text = readFileSync(0, "utf8");
  } catch (err) {
    throw new UsageError(
      `cannot read the '-' argument from standard input: ${(err as Error).message}`,
      "call",
    );
  }
  return text.replace(/\r?\n$/, "");
}

function parseArg(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** JSON with bytes and big integers spelled out. */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_k, v) => {
    if (typeof v === "bigint") return { $bigint: v.toString() };
    if (v instanceof Uint8Array) return { $bytes: btoa(String.fromCharCode(...v)) };
    if (v instanceof Map) return Object.fromEntries(v);
    return v;
  });
}

/** The plain rendering: strings as they are, everything else as JSON. */
function plain(value: unknown): string {
  return typeof value === "string" ? value : toJson(value);
}

/** Runs `nodectl call`; resolves to the exit code (errors propagate to cli.ts). */
export async function call(values: Values, positionals: string[]): Promise<number> {
  const [target, ...rawArgs] = positionals;
  if (target === undefined) {
    throw new UsageError(
      "missing FUNCTION, e.g. 'nodectl call get_data --to private@host'",
      "call",
    );
  }
  const dot = target.lastIndexOf(".");
  const service = dot < 0 ? SECRET_SERVICE : target.slice(0, dot);
  const fn = dot < 0 ? target : target.slice(dot + 1);
  if (service === "" || fn === "") {
    throw new UsageError(`'${target}' is not [SERVICE.]FUNCTION`, "call");
  }
  const toText = str(values, "to");
  if (toText === undefined) {
    throw new UsageError("--to NODE is required, e.g. --to private@host", "call");
  }
  const to = toText.includes("@") ? toText : `${toText}@${shortHostname()}`;
  parseNodeName(to); // a malformed name fails here with a ConfigError naming it
  const timeoutMs = int(values, "timeout", "call") ?? 5000;
  if (rawArgs.filter((a) => a === "-").length > 1) {
    throw new UsageError("only one ARG can be '-' (read from standard input)", "call");
  }
  const log = makeLogger({ ...values, "log-level": str(values, "log-level") ?? "warn" }, "call");
  const name = `call-${process.pid}@${shortHostname()}`;
  const ctx = openNodeContext(values, "call", name, log, { hidden: true, identityName: "call" });
  const node = await Node.start({
    name,
    network: ctx.network,
    listen: false,
    hidden: true,
    runDir: ctx.runDir,
    log: (level, line) => log[level](line),
  });
  try {
    const args = rawArgs.map((a) => a === "-" ? stdinText() : parseArg(a));
    const result = await node.call(service, fn, args, { node: to, timeoutMs });
    process.stdout.write((values.json ? toJson(result) : plain(result)) + "\n");
    return 0;
  } finally {
    await node.stop();
  }
}
