/**
 * Key pinning in the manner of ssh's known_hosts: the first time a node is seen its static
 * public key is written down, and later a different key for the same name is refused. In
 * strict mode only the keys already listed are accepted.
 *
 * The file (`<configDir>/known_nodes`, mode 0600) holds one node a line:
 *
 *     # comment
 *     private@host  <its 32-byte X25519 public key, standard base64 (44 characters)>  [# comment]
 *
 * The first line for a name is the one that counts. Pins are appended with one O_APPEND write
 * of one whole line, after re-reading the file, so concurrent processes neither corrupt it nor
 * pin two keys for a name. The file is re-read whenever it changes on disk, so a running node
 * sees `nodectl known-nodes forget` at once.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import {
  closeSync,
  constants as fsConstants,
  fstatSync,
  fsyncSync,
  openSync,
  readSync,
  renameSync,
  statSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { basename, dirname, join } from "node:path";
import process from "node:process";
import { ConfigError } from "../errors.ts";
import { ensurePrivateDir, readCheckedFile, writeNewFile } from "./cookie.ts";
import { publicKeyFingerprint, randomBytes } from "./crypto.ts";

/** Name of the known-nodes file inside the config directory. */
export const KNOWN_NODES_FILE_NAME = "known_nodes";

/** What `check` found for a name and key. */
export type CheckResult =
  | { status: "known" }
  | { status: "new" }
  | { status: "changed"; pinned: Uint8Array };

/**
 * What `pin` did: "pinned" (this call wrote the line), "known" (that key was already pinned),
 * or "changed" (another key is pinned for the name — perhaps by a racing process — and nothing
 * was written).
 */
export type PinResult =
  | { status: "pinned" }
  | { status: "known" }
  | { status: "changed"; pinned: Uint8Array };

/** One pinned node, as `list` returns it. */
export interface KnownNode {
  /** The node name ("private@host"). */
  name: string;
  /** Its pinned static public key (32 bytes). */
  publicKey: Uint8Array;
  /** `publicKeyFingerprint(publicKey)`. */
  fingerprint: string;
}

const WHAT = "known_nodes file";
/** Bits that must be clear in the file's mode: nobody but the owner may add a pin. */
const FORBIDDEN_MODE = 0o022;
const BASE64_KEY = /^[A-Za-z0-9+/]{43}=$/;

/** A parsed line: which line of the file, and what it pins. */
interface Entry {
  line: number;
  name: string;
  publicKey: Uint8Array;
}

function sameKey(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function encodeKey(publicKey: Uint8Array): string {
  return Buffer.from(publicKey.buffer, publicKey.byteOffset, publicKey.byteLength)
    .toString("base64");
}

/** The node names this file can hold: no whitespace or control characters, not a comment. */
function checkName(name: string): void {
  // deno-lint-ignore no-control-regex
  if (name === "" || name.startsWith("#") || /[\s\x00-\x1f\x7f]/.test(name)) {
    throw new ConfigError(
      `cannot pin node name ${JSON.stringify(name)}: a node name has no spaces or control `
        + "characters and does not start with '#'",
    );
  }
}

function checkKey(publicKey: Uint8Array): void {
  if (publicKey.length !== 32) {
    throw new ConfigError(`cannot pin a ${publicKey.length}-byte key: keys are 32 bytes`);
  }
}

/** The entries in the file text; ConfigError naming the line for anything malformed. */
function parse(text: string, path: string): Entry[] {
  const entries: Entry[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === "" || line.startsWith("#")) continue;
    const [name, key, ...rest] = line.split(/\s+/);
    const restOk = rest.length === 0 || rest[0]!.startsWith("#");
    if (name === undefined || key === undefined || !restOk || !BASE64_KEY.test(key)) {
      // An unterminated last line may be a pin being appended right now: skip it this time.
      if (i === lines.length - 1) break;
      throw new ConfigError(
        `${path}:${i + 1} is malformed: each line must be "<node name> <base64 public key>"; `
          + "fix or delete that line",
      );
    }
    entries.push({ line: i, name, publicKey: new Uint8Array(Buffer.from(key, "base64")) });
  }
  return entries;
}

/** Identifies one version of the file on disk; undefined when it does not exist. */
function stamp(path: string): string | undefined {
  try {
    const st = statSync(path);
    return `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
  } catch (err) {
    if ((err as { code?: unknown }).code === "ENOENT") return undefined;
    throw new ConfigError(`cannot read ${WHAT} ${path}: ${(err as Error).message}`);
  }
}

/**
 * The pinned keys of known nodes, backed by a file. `check` says whether a key is the pinned
 * one; `pin` records a first-seen key; `forget` drops a node so its next key is accepted anew.
 * In strict mode (`strict`) the caller refuses "new" nodes instead of pinning them.
 */
export class KnownNodes {
  /** The file it reads and writes. */
  readonly path: string;
  /** Strict mode: only nodes already listed are accepted; "new" ones are refused. */
  readonly strict: boolean;
  #entries: Entry[] = [];
  #byName = new Map<string, Uint8Array>();
  #text = "";
  #stamp: string | undefined;

  private constructor(path: string, strict: boolean) {
    this.path = path;
    this.strict = strict;
  }

  /**
   * Reads the file at `path` (a missing file is an empty list; it is created by the first
   * `pin`). Throws ConfigError for a malformed line (naming it) or a file that other users can
   * write (with the `chmod 600` that fixes it).
   */
  static load(path: string, options: { strict: boolean }): KnownNodes {
    const known = new KnownNodes(path, options.strict);
    known.#reload(true);
    return known;
  }

  /** Re-reads the file if it changed since last read (or always, when `force`). */
  #reload(force: boolean): void {
    const before = stamp(this.path);
    if (!force && before === this.#stamp) return;
    const text = readCheckedFile(this.path, WHAT, FORBIDDEN_MODE) ?? "";
    const entries = parse(text, this.path);
    const byName = new Map<string, Uint8Array>();
    for (const e of entries) if (!byName.has(e.name)) byName.set(e.name, e.publicKey);
    this.#text = text;
    this.#entries = entries;
    this.#byName = byName;
    this.#stamp = before;
  }

  /**
   * Whether `publicKey` is the key pinned for `name`: "known" if so, "new" if nothing is
   * pinned for the name (refuse it in strict mode, else pin it once the handshake succeeds),
   * "changed" with the pinned key otherwise. Sees changes made to the file by other processes.
   */
  check(name: string, publicKey: Uint8Array): CheckResult {
    this.#reload(false);
    const pinned = this.#byName.get(name);
    if (pinned === undefined) return { status: "new" };
    if (sameKey(pinned, publicKey)) return { status: "known" };
    return { status: "changed", pinned: pinned.slice() };
  }

  /**
   * Pins `publicKey` for `name` unless a key is already pinned for it: re-reads the file, then
   * appends one line with a single O_APPEND write (creating the file 0600, its directory 0700),
   * then re-reads to see whose line came first if another process pinned the name meanwhile.
   * Pinning does not consult `strict`: it is how a node gets listed. Throws ConfigError for a
   * name with spaces, a key not 32 bytes long, or I/O failure.
   */
  pin(name: string, publicKey: Uint8Array): PinResult {
    checkName(name);
    checkKey(publicKey);
    this.#reload(true);
    const existing = this.#byName.get(name);
    if (existing !== undefined) {
      return sameKey(existing, publicKey)
        ? { status: "known" }
        : { status: "changed", pinned: existing.slice() };
    }
    this.#append(`${name} ${encodeKey(publicKey)}\n`);
    this.#reload(true);
    const winner = this.#byName.get(name);
    if (winner !== undefined && sameKey(winner, publicKey)) return { status: "pinned" };
    if (winner === undefined) {
      throw new ConfigError(`${WHAT} ${this.path} changed while pinning ${name}; try again`);
    }
    return { status: "changed", pinned: winner.slice() };
  }

  /**
   * Appends one line with one write, starting a new line if the file does not end in one (a
   * racing append can make that check see half a line; the result is an empty line, harmless).
   */
  #append(line: string): void {
    ensurePrivateDir(dirname(this.path));
    const flags = fsConstants.O_RDWR | fsConstants.O_APPEND | fsConstants.O_CREAT
      | fsConstants.O_NOFOLLOW;
    let fd: number;
    try {
      fd = openSync(this.path, flags, 0o600);
    } catch (err) {
      throw new ConfigError(`cannot write ${WHAT} ${this.path}: ${(err as Error).message}`);
    }
    try {
      const st = fstatSync(fd);
      const mode = st.mode & 0o777;
      if ((mode & FORBIDDEN_MODE) !== 0) {
        throw new ConfigError(
          `${WHAT} ${this.path} is writable by other users (mode 0${mode.toString(8)}): `
            + `run \`chmod 600 ${this.path}\``,
        );
      }
      let prefix = "";
      if (st.size > 0) {
        const last = new Uint8Array(1);
        readSync(fd, last, 0, 1, st.size - 1);
        if (last[0] !== 0x0a) prefix = "\n";
      }
      const bytes = Buffer.from(prefix + line, "utf8");
      const written = writeSync(fd, bytes, 0, bytes.length);
      if (written !== bytes.length) {
        throw new ConfigError(`short write to ${WHAT} ${this.path}; check it for a broken line`);
      }
      fsyncSync(fd);
    } catch (err) {
      if (err instanceof ConfigError) throw err;
      throw new ConfigError(`cannot write ${WHAT} ${this.path}: ${(err as Error).message}`);
    } finally {
      closeSync(fd);
    }
  }

  /**
   * Removes every line for `name` (the file is rewritten to a temporary file and renamed over
   * it, keeping comments and other lines); true when there was one. The next key `name`
   * presents is then "new". A pin appended by another process during the rewrite is retried
   * against, but a pin landing in the last instant may be lost (it is simply pinned again on
   * next contact).
   */
  forget(name: string): boolean {
    for (let attempt = 0; attempt < 5; attempt++) {
      this.#reload(true);
      const drop = new Set(this.#entries.filter((e) => e.name === name).map((e) => e.line));
      if (drop.size === 0) return false;
      const kept = this.#text.split("\n").filter((_, i) => !drop.has(i)).join("\n");
      const seen = this.#stamp;
      const nonce = Buffer.from(randomBytes(6)).toString("hex");
      const temp = join(
        dirname(this.path),
        `.${basename(this.path)}.${process.pid}.${nonce}.tmp`,
      );
      try {
        writeNewFile(temp, Buffer.from(kept, "utf8"));
        if (stamp(this.path) !== seen) continue; // someone appended: start over
        renameSync(temp, this.path);
      } catch (err) {
        throw new ConfigError(`cannot rewrite ${WHAT} ${this.path}: ${(err as Error).message}`);
      } finally {
        try {
          unlinkSync(temp);
        } catch { /* renamed into place, or never created */ }
      }
      this.#reload(true);
      return true;
    }
    throw new ConfigError(`${WHAT} ${this.path} keeps changing; try again`);
  }

  /** Every pinned node, in file order (the first line for each name). */
  list(): KnownNode[] {
    this.#reload(false);
    return [...this.#byName].map(([name, publicKey]) => ({
      name,
      publicKey: publicKey.slice(),
      fingerprint: publicKeyFingerprint(publicKey),
    }));
  }
}

/**
 * The one-line refusal for a node whose key differs from the pinned one: names the node, both
 * fingerprints, and how to accept the change if it is expected.
 */
export function keyChangedMessage(
  name: string,
  pinnedFingerprint: string,
  offeredFingerprint: string,
  path: string,
): string {
  return `node ${name} presented key ${offeredFingerprint}, but key ${pinnedFingerprint} is `
    + `pinned for it in ${path}: someone may be impersonating it; if its key changed on purpose, `
    + `run \`nodectl known-nodes forget ${name}\` or delete its line in ${path}`;
}

/** The one-line refusal, in strict mode, for a node not listed: how to list it. */
export function notListedMessage(name: string, fingerprint: string, path: string): string {
  return `node ${name} (key ${fingerprint}) is not listed in ${path}, and strict mode accepts `
    + `only listed nodes: to trust it, run \`nodectl known-nodes add ${name} <key>\` with the `
    + "base64 public key obtained from that node";
}
