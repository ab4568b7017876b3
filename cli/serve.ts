/**
 * `nodectl serve`: a long-running node. The private role holds the Secret database and serves
 * SecretService; the public role serves HTTP and reaches SecretService through PrivateAPI;
 * `private,public` runs both in one process, where PrivateAPI calls SecretService in-process.
 *
 * @module
 */
import process from "node:process";
import {
  DEFAULT_HTTP_HOST,
  DEFAULT_HTTP_PORT,
  DEFAULT_PORT,
  formatAddress,
  type HealthStatus,
  Node,
  parseNodeName,
  PrivateAPI,
  SECRET_SERVICE,
  secretService,
  SecretStore,
  type ServiceDefinition,
  startPublicService,
} from "../mod.ts";
import {
  hostPort,
  makeLogger,
  NODE_FLAGS,
  NODE_FLAGS_HELP,
  nodeNameFrom,
  openNodeContext,
  str,
  UsageError,
  type Values,
} from "./common.ts";
import { defaultDataDir } from "./paths.ts";

/** Flags of `serve`. */
export const SERVE_FLAGS = {
  role: { type: "string" },
  name: { type: "string" },
  sname: { type: "string" },
  listen: { type: "string" },
  http: { type: "string" },
  "private-node": { type: "string" },
  "data-dir": { type: "string" },
  "admin-allow": { type: "string", multiple: true },
  ...NODE_FLAGS,
} as const;

/** Help text of `serve`. */
export const SERVE_HELP = [
  "  --role R             private, public, or private,public (both in one process)",
  "  --sname N            short node name N@<this host>, for nodes on one host (default: the role)",
  "  --name N@HOST        long node name; HOST is a DNS name or IP others use to reach it",
  `  --listen HOST:PORT   where peers connect (default: long names 0.0.0.0:${DEFAULT_PORT}; short`,
  "                       names a free loopback port, published in the run directory)",
  `  --http HOST:PORT     public role: the HTTP front (default ${DEFAULT_HTTP_HOST}:${DEFAULT_HTTP_PORT})`,
  "  --private-node NODE  public role: the private node to call (default private@<this node's host>)",
  "  --data-dir DIR       private role: the Secret database (default $XDG_DATA_HOME/nodectl/<name>)",
  "  --admin-allow PEER   private role: a node name or key fingerprint allowed to call set_secret",
  "                       (repeatable; the local node is always allowed)",
  NODE_FLAGS_HELP,
].join("\n");

function parseRoles(values: Values): { isPrivate: boolean; isPublic: boolean } {
  const role = str(values, "role");
  if (role === undefined) {
    throw new UsageError("--role is required: private, public, or private,public", "serve");
  }
  const parts = role.split(",").map((r) => r.trim());
  for (const p of parts) {
    if (p !== "private" && p !== "public") {
      throw new UsageError(`unknown role '${p}': use private, public, or private,public`, "serve");
    }
  }
  return { isPrivate: parts.includes("private"), isPublic: parts.includes("public") };
}

/** Runs `nodectl serve` until SIGINT or SIGTERM; resolves to the exit code. */
export async function serve(values: Values): Promise<number> {
  const { isPrivate, isPublic } = parseRoles(values);
  const log = makeLogger(values, "serve");
  const name = nodeNameFrom(values, "serve", isPrivate ? "private" : "public");
  const parsed = parseNodeName(name);
  const isLong = str(values, "name") !== undefined;
  const listenText = str(values, "listen");
  // Without --listen the node decides: a long name listens on all interfaces at DEFAULT_PORT,
  // a short name on an ephemeral loopback port published in the run directory.
  const listen = listenText === undefined ? undefined : hostPort(listenText, "listen", "serve", {
    host: isLong ? "0.0.0.0" : "127.0.0.1",
    port: DEFAULT_PORT,
  });
  if (!isPublic && (values.http !== undefined || values["private-node"] !== undefined)) {
    throw new UsageError("--http and --private-node belong to the public role", "serve");
  }
  if (!isPrivate && (values["data-dir"] !== undefined || values["admin-allow"] !== undefined)) {
    throw new UsageError("--data-dir and --admin-allow belong to the private role", "serve");
  }

  // Checked before anything starts, so a bad name fails with nothing to clean up.
  const privateNode = isPublic ? (isPrivate ? name : resolvePrivateNode(values, parsed.host)) : "";
  const ctx = openNodeContext(values, "serve", name, log, { hidden: false });
  const cleanups: (() => Promise<void> | void)[] = [];
  const node = await Node.start({
    name,
    network: ctx.network,
    ...(listen ? { listen } : {}),
    runDir: ctx.runDir,
    log: (level, line) => log[level](line),
  });
  cleanups.push(() => node.stop());
  try {
    if (isPrivate) {
      const dataDir = str(values, "data-dir") ?? defaultDataDir(process.env, parsed.alive);
      const store = SecretStore.open(dataDir);
      cleanups.push(() => store.close());
      const adminAllow = (values["admin-allow"] as string[] | undefined) ?? [];
      node.register(SECRET_SERVICE, secretService(store, { adminAllow, log }));
      log.info("SecretService started");
    }
    if (isPublic) {
      const api = new PrivateAPI(
        (service, fn, args) => node.call(service, fn, args, { node: privateNode }),
        privateNode,
      );
      const checkHealth = async (): Promise<HealthStatus> => {
        if (privateNode === name) return { ok: true };
        try {
          await node.connect(privateNode, { timeoutMs: 3000 });
          return { ok: true };
        } catch (err) {
          return { ok: false, reason: (err as Error).message };
        }
      };
      const http = await startPublicService({
        http: hostPort(str(values, "http") ?? "", "http", "serve", {
          host: DEFAULT_HTTP_HOST,
          port: DEFAULT_HTTP_PORT,
        }),
        api,
        privateNode,
        checkHealth,
        log,
      });
      cleanups.push(() => http.close());
    }
    node.register("Node", nodeInfoService(node));
    const where = node.listenAddress ? formatAddress(node.listenAddress) : "(not listening)";
    log.info(`node ${name} ready on ${where} (key ${ctx.fingerprint})`);
  } catch (err) {
    await runCleanups(cleanups);
    throw err;
  }
  await waitForSignal(log);
  await runCleanups(cleanups);
  log.info(`node ${name} stopped`);
  return 0;
}

function resolvePrivateNode(values: Values, ownHost: string): string {
  const given = str(values, "private-node");
  if (given === undefined) return `private@${ownHost}`;
  if (!given.includes("@")) {
    throw new UsageError(`--private-node needs NAME@HOST[:PORT], got '${given}'`, "serve");
  }
  parseNodeName(given); // a malformed name fails at start, not on the first request
  return given;
}

async function runCleanups(cleanups: (() => Promise<void> | void)[]): Promise<void> {
  for (const c of cleanups.reverse()) {
    try {
      await c();
    } catch { /* best effort while stopping */ }
  }
}

function waitForSignal(log: ReturnType<typeof makeLogger>): Promise<void> {
  return new Promise((resolve) => {
    const stop = (signal: string) => {
      process.off("SIGINT", onInt);
      process.off("SIGTERM", onTerm);
      log.info(`${signal} received, stopping`);
      resolve();
    };
    const onInt = () => stop("SIGINT");
    const onTerm = () => stop("SIGTERM");
    process.on("SIGINT", onInt);
    process.on("SIGTERM", onTerm);
  });
}

/**
 * A read-only introspection service every served node has, like calling `Node.list` in a remote
 * shell: `Node.nodes` lists the connected (non-hidden) nodes, `Node.services` the registered
 * services.
 */
function nodeInfoService(node: Node): ServiceDefinition {
  return {
    functions: {
      nodes: () => node.nodes(),
      services: () => node.registered(),
    },
  };
}
