/**
 * The run directory: which port each node on this host listens on, so callers on the same host
 * reach several nodes by name alone (Erlang's epmd does this over TCP; here it is a private
 * directory and nothing answers over the network). One file per node, named for the part of the
 * node name before `@` — like epmd, one `private` per host.
 *
 * The directory is 0700 and its files 0600. A node claims its name atomically on start (a
 * hard link that fails if the name exists) and removes its entry on stop; an entry left by a
 * process that is no longer alive is taken over.
 *
 * @module
 */
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  linkSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { ConfigError } from "../errors.ts";
import type { NodeName } from "./names.ts";

/** One registered node. */
export interface RunDirEntry {
  /** Full node name, `alive@host`. */
  readonly name: string;
  /** The registering process. */
  readonly pid: number;
  /** Where a caller on this host connects; null while the node is still starting. */
  readonly host: string | null;
  /** The listening port; null while the node is still starting. */
  readonly port: number | null;
}

interface StoredEntry extends RunDirEntry {
  readonly token: string;
}

/** `$XDG_RUNTIME_DIR/nodectl` when set, else `<tmpdir>/nodectl-<uid>`. */
export function defaultRunDir(): string {
  const xdg = process.env.XDG_RUNTIME_DIR;
  if (xdg) return join(xdg, "nodectl");
  const uid = typeof process.getuid === "function" ? process.getuid() : "user";
  return join(tmpdir(), `nodectl-${uid}`);
}

/** Whether a process with this pid exists (signal 0 probes without signalling). */
export function isProcessAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as { code?: string }).code === "EPERM";
  }
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function readEntry(file: string): StoredEntry | undefined {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, "utf8"));
  } catch {
    return undefined;
  }
  if (typeof raw !== "object" || raw === null) return undefined;
  const e = raw as Record<string, unknown>;
  if (
    typeof e.name !== "string" || typeof e.pid !== "number" || typeof e.token !== "string"
    || !(e.host === null || typeof e.host === "string")
    || !(e.port === null || typeof e.port === "number")
  ) {
    return undefined;
  }
  return { name: e.name, pid: e.pid, host: e.host, port: e.port, token: e.token };
}

function scratchPath(dir: string, alive: string, kind: string): string {
  return join(dir, `.${alive}.${process.pid}.${randomBytes(6).toString("hex")}.${kind}`);
}

function publicEntry(e: StoredEntry): RunDirEntry {
  return { name: e.name, pid: e.pid, host: e.host, port: e.port };
}

/**
 * A run directory. Creating one makes the directory (0700) if needed and refuses one that
 * belongs to another user.
 *
 * @example
 * ```ts
 * const dir = new RunDir("/tmp/nodectl-test");
 * const claim = dir.claim(parseNodeName("private@localhost"));
 * claim.publish({ host: "127.0.0.1", port: 40123 });
 * dir.lookup("private"); // { name: "private@localhost", pid, host: "127.0.0.1", port: 40123 }
 * claim.release();
 * ```
 */
export class RunDir {
  /** The directory's path. */
  readonly path: string;

  /** Opens (creating if needed) the run directory at `path`. */
  constructor(path: string = defaultRunDir()) {
    this.path = path;
    try {
      mkdirSync(path, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw new ConfigError(
        `cannot create run directory ${path}: ${errMessage(err)}; pass another runDir`,
      );
    }
    const st = lstatSync(path);
    if (!st.isDirectory()) {
      throw new ConfigError(`run directory ${path} is not a directory; pass another runDir`);
    }
    const uid = typeof process.getuid === "function" ? process.getuid() : undefined;
    if (uid !== undefined && st.uid !== uid) {
      throw new ConfigError(
        `run directory ${path} belongs to uid ${st.uid}, not ${uid}; remove it or pass another runDir`,
      );
    }
    if ((st.mode & 0o077) !== 0) chmodSync(path, 0o700);
  }

  /** The entry file for `alive`. */
  private file(alive: string): string {
    return join(this.path, `${alive}.json`);
  }

  /**
   * Claims `node`'s name for this process (its port is published later). Takes over an entry
   * left by a dead process.
   *
   * @throws ConfigError "node name private@host is already in use by pid N" when a live process
   *   holds the name.
   */
  claim(node: NodeName): RunDirClaim {
    const file = this.file(node.alive);
    const token = randomBytes(12).toString("hex");
    const entry: StoredEntry = { name: node.name, pid: process.pid, host: null, port: null, token };
    const tmp = scratchPath(this.path, node.alive, "tmp");
    const inUse = (pid: number, holder: string) =>
      new ConfigError(
        `node name ${node.name} is already in use by pid ${pid}`
          + (holder === node.name ? "" : ` (as ${holder})`) + "; stop it or pick another name",
      );
    writeFileSync(tmp, JSON.stringify(entry), { mode: 0o600, flag: "wx" });
    try {
      for (let attempt = 0; attempt < 5; attempt++) {
        try {
          linkSync(tmp, file);
          return new RunDirClaim(this.path, node.alive, entry);
        } catch (err) {
          if ((err as { code?: string }).code !== "EEXIST") {
            throw new ConfigError(
              `cannot register ${node.name} in ${this.path}: ${errMessage(err)}`,
            );
          }
        }
        const existing = readEntry(file);
        if (existing && isProcessAlive(existing.pid)) throw inUse(existing.pid, existing.name);
        // Stale: move it aside, then make sure what we moved is what we judged stale.
        const grave = scratchPath(this.path, node.alive, "stale");
        try {
          renameSync(file, grave);
        } catch {
          continue;
        }
        const moved = readEntry(grave);
        if (moved && moved.token !== existing?.token && isProcessAlive(moved.pid)) {
          try {
            linkSync(grave, file);
          } catch { /* someone else registered meanwhile; they keep it */ }
          unlinkSync(grave);
          throw inUse(moved.pid, moved.name);
        }
        unlinkSync(grave);
      }
      throw new ConfigError(
        `cannot register ${node.name}: ${file} keeps changing; remove it and retry`,
      );
    } finally {
      try {
        unlinkSync(tmp);
      } catch { /* already gone */ }
    }
  }

  /** The live entry for `alive` with its port published, if any. */
  lookup(alive: string): RunDirEntry | undefined {
    const e = readEntry(this.file(alive));
    if (!e || e.port === null || e.host === null || !isProcessAlive(e.pid)) return undefined;
    return publicEntry(e);
  }

  /** Every live, published entry. */
  list(): RunDirEntry[] {
    const out: RunDirEntry[] = [];
    for (const f of readdirSync(this.path)) {
      if (!f.endsWith(".json") || f.startsWith(".")) continue;
      const e = this.lookup(f.slice(0, -5));
      if (e) out.push(e);
    }
    return out.sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  }
}

/** A name held in a run directory; publish the port once listening, release on stop. */
export class RunDirClaim {
  #released = false;
  readonly #dir: string;
  readonly #alive: string;
  #entry: StoredEntry;

  /** Made by {@link RunDir.claim}. */
  constructor(dir: string, alive: string, entry: StoredEntry) {
    this.#dir = dir;
    this.#alive = alive;
    this.#entry = entry;
  }

  /** The entry's file. */
  get file(): string {
    return join(this.#dir, `${this.#alive}.json`);
  }

  /** Records where callers on this host connect. */
  publish(address: { host: string; port: number }): void {
    const host = address.host === "0.0.0.0" || address.host === ""
      ? "127.0.0.1"
      : address.host === "::"
      ? "::1"
      : address.host;
    const next = { ...this.#entry, host, port: address.port };
    if (readEntry(this.file)?.token !== next.token) {
      throw new ConfigError(`the run directory entry ${this.file} was taken over; restart`);
    }
    const tmp = scratchPath(this.#dir, this.#alive, "tmp");
    writeFileSync(tmp, JSON.stringify(next), { mode: 0o600, flag: "wx" });
    renameSync(tmp, this.file);
    this.#entry = next;
  }

  /** Removes the entry if it is still ours; idempotent. */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    const current = readEntry(this.file);
    if (current?.token !== this.#entry.token) return;
    try {
      unlinkSync(this.file);
    } catch { /* already gone */ }
  }
}
