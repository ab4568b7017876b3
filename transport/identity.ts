/**
 * A node's persistent static X25519 identity key: generated on first start, then the same key
 * on every start, so peers can pin it (`known_nodes.ts`).
 *
 * The file format is two lines of text:
 *
 *     nodectl-identity-v1
 *     <the 32-byte private key, standard base64 with padding (44 characters)>
 *
 * The file is created mode 0600 (directory 0700), complete and exclusively: two processes
 * starting at once agree on one key. A file that group or others can access is refused.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { dirname, join } from "node:path";
import { ConfigError } from "../errors.ts";
import { ensurePrivateDir, readPrivateFile, writeFileExclusive } from "./cookie.ts";
import {
  generateKeyPair,
  type KeyPair,
  keyPairFromPrivate,
  publicKeyFingerprint,
  wipe,
} from "./crypto.ts";

/** The first line of an identity file, naming its format. */
export const IDENTITY_HEADER = "nodectl-identity-v1";

/** A node's identity as loaded. */
export interface Identity {
  /** The static key pair (the private half is secret: never log it). */
  keyPair: KeyPair;
  /** `publicKeyFingerprint(keyPair.publicKey)`, for logs and messages. */
  fingerprint: string;
  /** True when this call generated the key and created the file. */
  created: boolean;
}

const WHAT = "identity file";
const BASE64_KEY = /^[A-Za-z0-9+/]{43}=$/;

function malformed(path: string, why: string): ConfigError {
  return new ConfigError(
    `${WHAT} ${path} is malformed (${why}): restore it from a backup, or move it away to have `
      + "a new identity generated (peers that pinned the old key will then refuse this node "
      + "until they forget it)",
  );
}

/** The file text for a private key. */
function formatIdentity(privateKey: Uint8Array): string {
  return `${IDENTITY_HEADER}\n${Buffer.from(privateKey).toString("base64")}\n`;
}

/** The key pair in an identity file's text; ConfigError naming `path` (never the content). */
function parseIdentity(text: string, path: string): KeyPair {
  const lines = text.split(/\r?\n/);
  while (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
  const [header, key, ...rest] = lines;
  if (header !== IDENTITY_HEADER) {
    if (header?.startsWith("nodectl-identity-")) {
      throw new ConfigError(
        `${WHAT} ${path} has format ${JSON.stringify(header)}, but this nodectl reads only `
          + `${IDENTITY_HEADER}: use the nodectl that wrote it`,
      );
    }
    throw malformed(path, `the first line is not ${IDENTITY_HEADER}`);
  }
  if (key === undefined || rest.length > 0 || !BASE64_KEY.test(key)) {
    throw malformed(path, "the second and last line must be a base64 32-byte key");
  }
  const raw = Buffer.from(key, "base64");
  try {
    if (raw.length !== 32) throw malformed(path, "the key is not 32 bytes");
    return keyPairFromPrivate(new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength));
  } finally {
    raw.fill(0);
  }
}

/**
 * The node's identity stored at `path`, creating it on first use: a fresh key pair written
 * (mode 0600, parent directories 0700) to a temporary file and linked into place only if `path`
 * still does not exist, so when two processes race, the loser discards its key and uses the
 * winner's. Throws ConfigError, naming the path and what to do, for a file that group or others
 * can access (`chmod 600`), malformed content, or I/O failure.
 */
export function loadOrCreateIdentity(path: string): Identity {
  let text = readPrivateFile(path, WHAT);
  let created = false;
  if (text === undefined) {
    ensurePrivateDir(dirname(path));
    const fresh = generateKeyPair();
    created = writeFileExclusive(path, formatIdentity(fresh.privateKey), WHAT);
    wipe(fresh.privateKey);
    // What is on disk is the identity, whether this call or a racing one wrote it.
    text = readPrivateFile(path, WHAT);
    if (text === undefined) {
      throw new ConfigError(`${WHAT} ${path} disappeared while being created; try again`);
    }
  }
  const keyPair = parseIdentity(text, path);
  return { keyPair, fingerprint: publicKeyFingerprint(keyPair.publicKey), created };
}

/**
 * Where a node keeps its identity inside the config directory: `<configDir>/identity/<name>`.
 * One file per node name, so two nodes run by one user on one host have distinct keys. Throws
 * ConfigError for a name that cannot be a file name.
 */
export function identityPath(configDir: string, nodeName: string): string {
  // deno-lint-ignore no-control-regex
  if (nodeName === "" || nodeName.startsWith(".") || /[/\\\x00-\x1f]/.test(nodeName)) {
    throw new ConfigError(
      `node name ${JSON.stringify(nodeName)} cannot name an identity file: `
        + "use letters, digits, '-', '_', '.', and '@'",
    );
  }
  return join(configDir, "identity", nodeName);
}
