/**
 * The Secret database of the private node: an embedded SQLite file (`node:sqlite`) in WAL mode
 * with synchronous=FULL, so a write that `set()` acknowledged survives the process being killed.
 * The file is created 0600 before SQLite opens it (SQLite gives its -wal and -shm files the
 * database file's mode) inside a data directory created 0700.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import {
  chmodSync,
  closeSync,
  constants,
  fchmodSync,
  fstatSync,
  mkdirSync,
  openSync,
  statSync,
} from "node:fs";
import { join, resolve } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { BadArgError, ConfigError } from "../errors.ts";
import { typeName } from "./types.ts";

/** The key `get()` and `get_data()` read when none is given. */
export const DEFAULT_KEY = "default";
/** The value stored under {@link DEFAULT_KEY} when a store is first created. */
export const SEED_VALUE = "secret data";
/** File name of the database inside the data directory. */
export const STORE_FILE = "secret.db";
/** Schema version this code writes (SQLite `user_version`); older stores are migrated on open. */
export const SCHEMA_VERSION = 1;
/** Longest accepted key, in characters. */
export const MAX_KEY_LENGTH = 256;
/** Largest accepted value, in UTF-8 bytes. */
export const MAX_VALUE_BYTES = 1024 * 1024;
/** How long a statement waits for another connection's lock before failing (ms). */
export const DEFAULT_BUSY_TIMEOUT_MS = 5000;

/** Metadata of one stored secret (never its value). */
export interface SecretInfo {
  /** The key. */
  readonly key: string;
  /** 1 when first set, +1 on every later set. */
  readonly version: number;
  /** When it was last set. */
  readonly updatedAt: Date;
}

/** Options for {@link SecretStore.open}. */
export interface SecretStoreOptions {
  /** SQLite busy timeout in ms (default {@link DEFAULT_BUSY_TIMEOUT_MS}). */
  busyTimeoutMs?: number;
}

/** Schema migrations; `MIGRATIONS[n]` takes a store from user_version n to n + 1. */
const MIGRATIONS: ReadonlyArray<(db: DatabaseSync) => void> = [
  (db) => {
    db.exec(`CREATE TABLE secrets (
      key        TEXT PRIMARY KEY NOT NULL,
      value      TEXT NOT NULL,
      version    INTEGER NOT NULL,
      updated_at INTEGER NOT NULL
    ) STRICT`);
    db.prepare("INSERT INTO secrets (key, value, version, updated_at) VALUES (?, ?, 1, ?)")
      .run(DEFAULT_KEY, SEED_VALUE, Date.now());
  },
];

const REMEDY = `restore ${STORE_FILE} from a backup, or move it (and its -wal and -shm files) `
  + "aside to start a new store holding only the default secret";

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

type Failure = "corrupt" | "locked" | "access" | "other";

/** Sorts an SQLite failure by what the user has to do about it. */
function classify(err: unknown): Failure {
  const code = (err as { errcode?: unknown }).errcode;
  const primary = typeof code === "number" ? code & 0xff : -1;
  const msg = messageOf(err);
  // SQLITE_NOTADB, SQLITE_CORRUPT
  if (primary === 26 || primary === 11 || /not a database|malformed|corrupt/i.test(msg)) {
    return "corrupt";
  }
  // SQLITE_BUSY, SQLITE_LOCKED
  if (primary === 5 || primary === 6 || /database (table )?is locked|busy/i.test(msg)) {
    return "locked";
  }
  // SQLITE_CANTOPEN, SQLITE_READONLY, SQLITE_AUTH, SQLITE_PERM
  if ([14, 8, 23, 3].includes(primary) || /unable to open|readonly|permission/i.test(msg)) {
    return "access";
  }
  return "other";
}

/** Turns a failure to open or read the database into an actionable ConfigError. */
function storeError(path: string, err: unknown): ConfigError {
  if (err instanceof ConfigError) return err;
  const msg = messageOf(err);
  switch (classify(err)) {
    case "corrupt":
      return new ConfigError(`secret store ${path} is corrupt (${msg}); ${REMEDY}`);
    case "locked":
      return new ConfigError(
        `secret store ${path} is locked by another process (${msg}); stop the other private `
          + "node using this data directory, or pick another one",
      );
    case "access":
      return new ConfigError(
        `cannot open secret store ${path} (${msg}); make the file and its directory readable `
          + "and writable by this user",
      );
    case "other":
      return new ConfigError(`cannot use secret store ${path} (${msg}); ${REMEDY}`);
  }
}

/** Creates `dir` 0700 if missing; refuses a path that is not a directory. */
function ensureDataDir(dir: string): void {
  let exists = false;
  try {
    const st = statSync(dir);
    if (!st.isDirectory()) {
      throw new ConfigError(`data directory ${dir} is not a directory; pass a directory path`);
    }
    exists = true;
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    if ((err as { code?: string }).code !== "ENOENT") {
      throw new ConfigError(
        `cannot use data directory ${dir} (${messageOf(err)}); check its permissions`,
      );
    }
  }
  if (exists) return;
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    chmodSync(dir, 0o700); // whatever the umask did
  } catch (err) {
    throw new ConfigError(
      `cannot create data directory ${dir} (${messageOf(err)}); create it (mode 0700) or pick `
        + "a writable location",
    );
  }
}

/**
 * Creates the database file 0600 if missing (before SQLite sees it), refuses a symlink or a
 * non-regular file, and takes group/other permissions away from an existing file and its
 * -wal/-shm companions.
 */
function ensurePrivateFile(path: string): void {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW, 0o600);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === "ELOOP") {
      throw new ConfigError(
        `secret store ${path} is a symbolic link; replace it with the real file`,
      );
    }
    throw storeError(path, err);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) {
      throw new ConfigError(`secret store ${path} is not a regular file; move it aside`);
    }
    if ((st.mode & 0o077) !== 0) fchmodSync(fd, 0o600);
  } finally {
    closeSync(fd);
  }
  for (const suffix of ["-wal", "-shm"]) {
    try {
      const st = statSync(path + suffix);
      if ((st.mode & 0o077) !== 0) chmodSync(path + suffix, 0o600);
    } catch { /* absent */ }
  }
}

// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

/** Throws BadArgError unless `key` is a usable key: 1..MAX_KEY_LENGTH printable characters. */
export function checkKey(key: unknown): string {
  if (typeof key !== "string") {
    throw new BadArgError(`a secret key must be a string, got ${typeName(key)}`);
  }
  if (key.length === 0 || key.length > MAX_KEY_LENGTH) {
    throw new BadArgError(
      `a secret key must be 1 to ${MAX_KEY_LENGTH} characters long, got ${key.length}`,
    );
  }
  if (CONTROL.test(key)) {
    throw new BadArgError("a secret key must not contain control characters");
  }
  return key;
}

/** The private node's secrets, one row per key, in `<dataDir>/secret.db`. */
export class SecretStore {
  #db: DatabaseSync | undefined;

  private constructor(db: DatabaseSync, readonly path: string) {
    this.#db = db;
  }

  /**
   * Opens (creating on first use) the store in `dataDir`: the directory 0700, `secret.db` 0600,
   * WAL, synchronous=FULL, the schema migrated to {@link SCHEMA_VERSION}, and — only when the
   * store is created — {@link SEED_VALUE} under {@link DEFAULT_KEY}. Throws ConfigError, naming
   * the path and what to do, when the directory or database is unusable, corrupt or locked.
   */
  static open(dataDir: string, options: SecretStoreOptions = {}): SecretStore {
    const dir = resolve(dataDir);
    const path = join(dir, STORE_FILE);
    ensureDataDir(dir);
    ensurePrivateFile(path);
    let db: DatabaseSync | undefined;
    try {
      db = new DatabaseSync(path);
      const asked = options.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS;
      const busy = Number.isFinite(asked)
        ? Math.max(0, Math.floor(asked))
        : DEFAULT_BUSY_TIMEOUT_MS;
      db.exec(`PRAGMA busy_timeout = ${busy}`);
      const mode = db.prepare("PRAGMA journal_mode = WAL").get() as { journal_mode?: string };
      if (String(mode.journal_mode).toLowerCase() !== "wal") {
        throw new ConfigError(
          `secret store ${path} cannot use write-ahead logging (journal mode `
            + `${String(mode.journal_mode)}); put the data directory on a local filesystem`,
        );
      }
      db.exec("PRAGMA synchronous = FULL");
      migrate(db, path);
      const check = db.prepare("PRAGMA quick_check").all() as { quick_check?: string }[];
      const problems = check.map((r) => String(r.quick_check)).filter((s) => s !== "ok");
      if (problems.length > 0) {
        throw new ConfigError(`secret store ${path} is corrupt (${problems[0]}); ${REMEDY}`);
      }
      return new SecretStore(db, path);
    } catch (err) {
      try {
        db?.close();
      } catch { /* already broken */ }
      throw storeError(path, err);
    }
  }

  /** The value under `key` (default {@link DEFAULT_KEY}), or undefined if there is none. */
  get(key: string = DEFAULT_KEY): string | undefined {
    checkKey(key);
    const row = this.#run((db) =>
      db.prepare("SELECT value FROM secrets WHERE key = ?").get(key) as
        | { value: string }
        | undefined
    );
    return row?.value;
  }

  /** Version and update time of `key`, or undefined if there is none. */
  info(key: string = DEFAULT_KEY): SecretInfo | undefined {
    checkKey(key);
    const row = this.#run((db) =>
      db.prepare("SELECT version, updated_at FROM secrets WHERE key = ?").get(key) as
        | { version: number; updated_at: number }
        | undefined
    );
    return row && { key, version: row.version, updatedAt: new Date(row.updated_at) };
  }

  /**
   * Sets (or rotates) the secret under `key`, durably: when this returns, the write is on disk.
   * Returns the new version (1 for a new key). Throws BadArgError for an empty or over-long key
   * or a value over {@link MAX_VALUE_BYTES}.
   */
  set(key: string, value: string): number {
    checkKey(key);
    if (typeof value !== "string") {
      throw new BadArgError(`a secret value must be a string, got ${typeName(value)}`);
    }
    const bytes = Buffer.byteLength(value, "utf8");
    if (bytes > MAX_VALUE_BYTES) {
      throw new BadArgError(
        `a secret value must be at most ${MAX_VALUE_BYTES} bytes, got ${bytes}`,
      );
    }
    const row = this.#run((db) =>
      db.prepare(
        `INSERT INTO secrets (key, value, version, updated_at) VALUES (?, ?, 1, ?)
         ON CONFLICT (key) DO UPDATE
           SET value = excluded.value, version = secrets.version + 1,
               updated_at = excluded.updated_at
         RETURNING version`,
      ).get(key, value, Date.now()) as { version: number }
    );
    return row.version;
  }

  /** Every key, sorted. */
  keys(): string[] {
    const rows = this.#run((db) =>
      db.prepare("SELECT key FROM secrets ORDER BY key").all() as { key: string }[]
    );
    return rows.map((r) => r.key);
  }

  /** Closes the database; idempotent. Later calls throw. */
  close(): void {
    const db = this.#db;
    this.#db = undefined;
    db?.close();
  }

  #run<T>(fn: (db: DatabaseSync) => T): T {
    const db = this.#db;
    if (!db) throw new Error(`secret store ${this.path} is closed`);
    try {
      return fn(db);
    } catch (err) {
      // Corruption and lost access need the operator; anything else (disk full, I/O error, a
      // lock held too long) is passed on as it is.
      const failure = classify(err);
      if (failure === "corrupt" || failure === "access") throw storeError(this.path, err);
      throw err;
    }
  }
}

/** Brings the schema to SCHEMA_VERSION in one immediate transaction. */
function migrate(db: DatabaseSync, path: string): void {
  db.exec("BEGIN IMMEDIATE");
  try {
    const row = db.prepare("PRAGMA user_version").get() as { user_version: number };
    const from = row.user_version;
    if (from > SCHEMA_VERSION) {
      throw new ConfigError(
        `secret store ${path} has schema version ${from}, newer than this nodectl understands `
          + `(${SCHEMA_VERSION}); upgrade nodectl`,
      );
    }
    for (let v = from; v < SCHEMA_VERSION; v++) MIGRATIONS[v]?.(db);
    if (from !== SCHEMA_VERSION) db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
    db.exec("COMMIT");
  } catch (err) {
    try {
      db.exec("ROLLBACK");
    } catch { /* no transaction left */ }
    throw err;
  }
}
