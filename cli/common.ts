/**
 * What every CLI command shares: usage errors, flag values, and opening a node's configuration
 * (cookie → PSK, identity key, known_nodes, run directory, network) from flags and environment.
 *
 * @module
 */
import { join } from "node:path";
import process from "node:process";
import {
  checkCookieStrength,
  ConfigError,
  createLogger,
  DEAD_PEER_TIMEOUT_MS,
  defaultConfigDir,
  defaultRunDir,
  derivePsk,
  identityPath,
  isLogLevel,
  KEEPALIVE_INTERVAL_MS,
  KNOWN_NODES_FILE_NAME,
  KnownNodes,
  loadCookie,
  loadOrCreateIdentity,
  type Logger,
  type Network,
  parseNodeName,
  secureNetwork,
  shortName,
  tcpDialer,
} from "../mod.ts";

/** A mistake in the command line; printed as one line with a usage hint, exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
  constructor(message: string, readonly command?: string) {
    super(message);
  }
}

/** Parsed flag values as node:util parseArgs returns them. */
export type Values = Record<string, string | boolean | (string | boolean)[] | undefined>;

/** A string flag's value, or undefined. */
export function str(values: Values, flag: string): string | undefined {
  const v = values[flag];
  return typeof v === "string" ? v : undefined;
}

/** A positive integer flag (milliseconds, ports), with a usage error naming the flag. */
export function int(
  values: Values,
  flag: string,
  command: string,
  min = 1,
  max = 2 ** 31,
): number | undefined {
  const v = str(values, flag);
  if (v === undefined) return undefined;
  if (!/^[0-9]+$/.test(v) || Number(v) < min || Number(v) > max) {
    throw new UsageError(
      `--${flag} must be a whole number from ${min} to ${max}, got '${v}'`,
      command,
    );
  }
  return Number(v);
}

/** `HOST:PORT`, `HOST`, `:PORT` or `[v6]:PORT`, with defaults for the missing half. */
export function hostPort(
  text: string,
  flag: string,
  command: string,
  defaults: { host: string; port: number },
): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s]*))(?::([0-9]{1,5}))?$/.exec(text);
  if (!m) throw new UsageError(`--${flag} '${text}' is not HOST:PORT`, command);
  const host = m[1] ?? (m[2] || defaults.host);
  const port = m[3] === undefined ? defaults.port : Number(m[3]);
  if (port > 65535) throw new UsageError(`--${flag} port ${port} is above 65535`, command);
  return { host, port };
}

/** The logger for a command, from --log-level. */
export function makeLogger(values: Values, command: string): Logger {
  const level = str(values, "log-level") ?? "info";
  if (!isLogLevel(level)) {
    throw new UsageError(
      `--log-level must be debug, info, warn, error or silent, got '${level}'`,
      command,
    );
  }
  return createLogger({ level });
}

/** Flags every node-running command accepts. */
export const NODE_FLAGS = {
  "config-dir": { type: "string" },
  "cookie-file": { type: "string" },
  "run-dir": { type: "string" },
  "allow-weak-cookie": { type: "boolean" },
  "strict-known-nodes": { type: "boolean" },
  "handshake-timeout": { type: "string" },
  "dead-peer-timeout": { type: "string" },
  "max-message-size": { type: "string" },
  "log-level": { type: "string" },
} as const;

/** Help text for NODE_FLAGS. */
export const NODE_FLAGS_HELP = [
  "  --config-dir DIR     cookie, identity keys, known_nodes (default $XDG_CONFIG_HOME/nodectl",
  "                       or ~/.config/nodectl)",
  "  --cookie-file PATH   read the cookie from PATH (default: $NODECTL_COOKIE, else",
  "                       <config-dir>/cookie, created with 256 random bits on first use)",
  "  --allow-weak-cookie  accept a cookie under 80 bits of estimated entropy",
  "  --strict-known-nodes accept only peers whose keys are listed in known_nodes",
  "  --run-dir DIR        where local nodes register name → port (default $XDG_RUNTIME_DIR/nodectl",
  "                       or /tmp/nodectl-<uid>)",
  "  --handshake-timeout MS  drop a peer that has not finished its handshake (5000)",
  "  --dead-peer-timeout MS  declare a silent peer down after MS (10000; keepalives every",
  "                       quarter of it, at most 2500)",
  "  --max-message-size BYTES  largest call or reply sent or accepted (67108864 = 64 MiB)",
  "  --log-level LEVEL    debug, info, warn, error or silent (info)",
].join("\n");

/** The node name from --name / --sname (or a default short name). */
export function nodeNameFrom(values: Values, command: string, defaultAlive: string): string {
  const long = str(values, "name");
  const short = str(values, "sname");
  if (long !== undefined && short !== undefined) {
    throw new UsageError("give either --name or --sname, not both", command);
  }
  if (long !== undefined) {
    const n = parseNodeName(long);
    if (n.port !== undefined) {
      throw new UsageError(
        `--name takes NAME@HOST without a port; use --listen for the port`,
        command,
      );
    }
    if (!long.includes("@")) {
      throw new UsageError(
        `--name needs NAME@HOST (for a short name use --sname ${long})`,
        command,
      );
    }
    return n.name;
  }
  return shortName(short ?? defaultAlive);
}

/** Everything a node needs besides its services. */
export interface NodeContext {
  configDir: string;
  runDir: string;
  network: Network;
  fingerprint: string;
  knownNodesPath: string;
}

/**
 * Loads the cookie (refusing a weak one), the node's identity key and known_nodes, and builds the
 * secure TCP network. Nothing secret is logged.
 */
export function openNodeContext(
  values: Values,
  command: string,
  nodeName: string,
  log: Logger,
  opts: { hidden: boolean; identityName?: string },
): NodeContext {
  const configDir = str(values, "config-dir") ?? defaultConfigDir(process.env);
  const cookieFile = str(values, "cookie-file");
  const loaded = loadCookie({
    env: process.env,
    configDir,
    create: true,
    ...(cookieFile !== undefined ? { cookieFile } : {}),
  });
  if (loaded.created) log.info(`created cookie file ${loaded.path} (mode 0600)`);
  checkCookieStrength(loaded.cookie, { allowWeak: values["allow-weak-cookie"] === true });
  const psk = derivePsk(loaded.cookie);
  const identity = loadOrCreateIdentity(identityPath(configDir, opts.identityName ?? nodeName));
  if (identity.created) log.info(`created identity key for ${nodeName}: ${identity.fingerprint}`);
  const knownNodesPath = join(configDir, KNOWN_NODES_FILE_NAME);
  const knownNodes = KnownNodes.load(knownNodesPath, {
    strict: values["strict-known-nodes"] === true,
  });
  const timeoutMs = int(values, "handshake-timeout", command);
  const deadPeerTimeoutMs = int(values, "dead-peer-timeout", command, 100) ?? DEAD_PEER_TIMEOUT_MS;
  const maxMessageSize = int(values, "max-message-size", command, 1024, 0xffff_ffff);
  const session = {
    ...(maxMessageSize !== undefined ? { maxMessageSize } : {}),
    deadPeerTimeoutMs,
    keepaliveIntervalMs: Math.min(KEEPALIVE_INTERVAL_MS, deadPeerTimeoutMs / 4),
    log: (line: string) => log.warn(line),
  };
  const network = secureNetwork(tcpDialer, {
    localName: nodeName,
    hidden: opts.hidden,
    identity: identity.keyPair,
    psk,
    knownNodes,
    log: (line) => log.warn(line),
    session,
    ...(timeoutMs !== undefined ? { timeoutMs } : {}),
  });
  return {
    configDir,
    runDir: str(values, "run-dir") ?? defaultRunDir(),
    network,
    fingerprint: identity.fingerprint,
    knownNodesPath,
  };
}

/** Re-exported for commands that need to raise it. */
export { ConfigError };
