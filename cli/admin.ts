/**
 * Small administrative commands: `id` (this node's key fingerprint), `known-nodes` (the pinned
 * peer keys), `cookie` (where the cookie lives; create it).
 *
 * @module
 */
import { existsSync, unlinkSync } from "node:fs";
import { dirname, join } from "node:path";
import process from "node:process";
import {
  ConfigError,
  COOKIE_FILE_NAME,
  defaultConfigDir,
  ensurePrivateDir,
  estimateCookieBits,
  generateCookie,
  identityPath,
  KNOWN_NODES_FILE_NAME,
  KnownNodes,
  loadCookie,
  loadOrCreateIdentity,
  MIN_COOKIE_BITS,
  publicKeyFingerprint,
  writeFileExclusive,
} from "../mod.ts";
import { nodeNameFrom, str, UsageError, type Values } from "./common.ts";

function configDir(values: Values): string {
  return str(values, "config-dir") ?? defaultConfigDir(process.env);
}

/** `nodectl id [--sname N | --name N@H]`: the node's public key and fingerprint. */
export function id(values: Values): Promise<number> {
  // `nodectl call` runs as a hidden node with one identity per user, named "call".
  const name = values.call === true ? "call" : nodeNameFrom(values, "id", "private");
  const identity = loadOrCreateIdentity(identityPath(configDir(values), name));
  const pub = btoa(String.fromCharCode(...identity.keyPair.publicKey));
  process.stdout.write(`${name} ${identity.fingerprint} ${pub}\n`);
  return Promise.resolve(0);
}

/** `nodectl known-nodes list | forget NODE | add NODE BASE64KEY`. */
export function knownNodes(values: Values, positionals: string[]): Promise<number> {
  const path = join(configDir(values), KNOWN_NODES_FILE_NAME);
  const known = KnownNodes.load(path, { strict: false });
  const [action, ...rest] = positionals;
  switch (action ?? "list") {
    case "list":
      for (const n of known.list()) process.stdout.write(`${n.name} ${n.fingerprint}\n`);
      return Promise.resolve(0);
    case "forget": {
      const [node] = rest;
      if (node === undefined) {
        throw new UsageError("known-nodes forget needs a NODE", "known-nodes");
      }
      if (!known.forget(node)) {
        process.stderr.write(`nodectl: ${node} is not in ${path}\n`);
        return Promise.resolve(1);
      }
      process.stdout.write(`forgot ${node}; its key will be pinned again on next contact\n`);
      return Promise.resolve(0);
    }
    case "add": {
      const [node, key] = rest;
      if (node === undefined || key === undefined) {
        throw new UsageError(
          "known-nodes add needs NODE and its base64 key (from 'nodectl id' on that node)",
          "known-nodes",
        );
      }
      let bytes: Uint8Array;
      try {
        bytes = Uint8Array.from(atob(key), (c) => c.charCodeAt(0));
      } catch {
        bytes = new Uint8Array(0);
      }
      if (bytes.length !== 32) {
        throw new UsageError(
          "the key must be 32 bytes in base64, as 'nodectl id' prints it",
          "known-nodes",
        );
      }
      const result = known.pin(node, bytes);
      if (result.status === "changed") {
        process.stderr.write(
          `nodectl: ${node} is already pinned to another key (${
            publicKeyFingerprint(result.pinned)
          }); `
            + `run 'nodectl known-nodes forget ${node}' first\n`,
        );
        return Promise.resolve(1);
      }
      process.stdout.write(`${result.status === "known" ? "already pinned" : "pinned"} ${node}\n`);
      return Promise.resolve(0);
    }
    default:
      throw new UsageError(`unknown action '${action}': use list, forget or add`, "known-nodes");
  }
}

/**
 * `nodectl cookie`: where the cookie comes from and how strong it is (creates the default file).
 * `nodectl cookie new [--force]`: writes a fresh 256-bit cookie to the cookie file, 0600.
 */
export function cookie(values: Values, positionals: string[]): Promise<number> {
  const [action, ...extra] = positionals;
  if (extra.length > 0 || (action !== undefined && action !== "new" && action !== "show")) {
    throw new UsageError(
      `unknown action '${positionals.join(" ")}': use 'cookie', or 'cookie new'`,
      "cookie",
    );
  }
  if (action === "new") return newCookie(values);
  const cookieFile = str(values, "cookie-file");
  const loaded = loadCookie({
    env: process.env,
    configDir: configDir(values),
    create: true,
    ...(cookieFile !== undefined ? { cookieFile } : {}),
  });
  const bits = Math.floor(estimateCookieBits(loaded.cookie));
  const where = loaded.source === "env" ? "NODECTL_COOKIE" : loaded.path;
  const verdict = bits >= MIN_COOKIE_BITS ? "ok" : `too weak (need ${MIN_COOKIE_BITS})`;
  process.stdout.write(
    `cookie from ${where}${
      loaded.created ? " (just created, mode 0600)" : ""
    }: ~${bits} bits, ${verdict}\n`,
  );
  return Promise.resolve(0);
}

function newCookie(values: Values): Promise<number> {
  const path = str(values, "cookie-file") ?? join(configDir(values), COOKIE_FILE_NAME);
  if (existsSync(path)) {
    if (values.force !== true) {
      throw new UsageError(
        `${path} exists; pass --force to replace it (every node must then get the new one)`,
        "cookie",
      );
    }
    unlinkSync(path);
  }
  ensurePrivateDir(dirname(path));
  if (!writeFileExclusive(path, generateCookie() + "\n", "cookie file")) {
    throw new ConfigError(`${path} appeared while writing it; run the command again`);
  }
  process.stdout.write(
    `wrote a new 256-bit cookie to ${path} (mode 0600); copy that file to every node\n`,
  );
  return Promise.resolve(0);
}
