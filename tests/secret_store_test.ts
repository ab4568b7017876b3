import { chmodSync, existsSync, mkdirSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import process from "node:process";
import { DatabaseSync } from "node:sqlite";
import { BadArgError, ConfigError } from "../errors.ts";
import {
  DEFAULT_KEY,
  MAX_KEY_LENGTH,
  MAX_VALUE_BYTES,
  SCHEMA_VERSION,
  SecretStore,
  SEED_VALUE,
  STORE_FILE,
} from "../services/secret_store.ts";
import { assert, assertEquals, assertMatch, assertThrows } from "./support/assert.ts";
import { fileMode, tempDirWrapper } from "./support/temp.ts";

const withTempDir = tempDirWrapper("nodectl-store-");

Deno.test(
  "open() on a new directory creates the schema and seeds 'secret data' under the default key",
  withTempDir((root) => {
    const dir = join(root, "data", "private");
    const store = SecretStore.open(dir);
    try {
      assertEquals(DEFAULT_KEY, "default");
      assertEquals(SEED_VALUE, "secret data");
      assertEquals(store.path, join(dir, STORE_FILE));
      assertEquals(store.get(), "secret data");
      assertEquals(store.get("default"), "secret data");
      assertEquals(store.keys(), ["default"]);
      assertEquals(store.info()?.version, 1);
    } finally {
      store.close();
    }
    const db = new DatabaseSync(join(dir, STORE_FILE));
    try {
      assertEquals(db.prepare("PRAGMA user_version").get()?.user_version, SCHEMA_VERSION);
      assertEquals(db.prepare("PRAGMA journal_mode").get()?.journal_mode, "wal");
      const columns = db.prepare("PRAGMA table_info(secrets)").all().map((c) => c.name);
      assertEquals(columns, ["key", "value", "version", "updated_at"]);
    } finally {
      db.close();
    }
  }),
);

Deno.test(
  "open() makes the data directory 0700 and secret.db, -wal and -shm 0600 even with umask 0",
  withTempDir((root) => {
    const dir = join(root, "data");
    const old = process.umask(0);
    let store: SecretStore | undefined;
    try {
      store = SecretStore.open(dir);
      store.set("k", "v");
    } finally {
      process.umask(old);
    }
    try {
      assertEquals(fileMode(dir), 0o700);
      const db = join(dir, STORE_FILE);
      assertEquals(fileMode(db), 0o600);
      // While the store is open in WAL mode both companion files exist.
      assert(existsSync(db + "-wal"), "secret.db-wal should exist while the store is open");
      assert(existsSync(db + "-shm"), "secret.db-shm should exist while the store is open");
      assertEquals(fileMode(db + "-wal"), 0o600);
      assertEquals(fileMode(db + "-shm"), 0o600);
    } finally {
      store.close();
    }
  }),
);

Deno.test(
  "open() takes group and other permissions away from an existing store and its WAL",
  withTempDir((dir) => {
    SecretStore.open(dir).close();
    const db = join(dir, STORE_FILE);
    writeFileSync(db + "-wal", "");
    chmodSync(db, 0o644);
    chmodSync(db + "-wal", 0o666);
    const store = SecretStore.open(dir);
    try {
      assertEquals(fileMode(db), 0o600);
      assertEquals(fileMode(db + "-wal"), 0o600);
      assertEquals(store.get(), "secret data");
    } finally {
      store.close();
    }
  }),
);

Deno.test(
  "reopening keeps the data and does not seed the default key again",
  withTempDir((dir) => {
    const first = SecretStore.open(dir);
    first.set(DEFAULT_KEY, "rotated");
    first.set("other", "x");
    first.close();
    const second = SecretStore.open(dir);
    assertEquals(second.get(), "rotated");
    assertEquals(second.get("other"), "x");
    assertEquals(second.info()?.version, 2);
    second.close();
    // Deleted by an operator: a later open must not bring the seed back.
    const raw = new DatabaseSync(join(dir, STORE_FILE));
    raw.prepare("DELETE FROM secrets WHERE key = ?").run(DEFAULT_KEY);
    raw.close();
    const third = SecretStore.open(dir);
    try {
      assertEquals(third.get(), undefined);
      assertEquals(third.keys(), ["other"]);
    } finally {
      third.close();
    }
  }),
);

Deno.test(
  "set() creates a key at version 1 and each rotation bumps the version",
  withTempDir((dir) => {
    const store = SecretStore.open(dir);
    try {
      const before = Date.now();
      assertEquals(store.set("api", "one"), 1);
      assertEquals(store.set("api", "two"), 2);
      assertEquals(store.set("api", "three"), 3);
      assertEquals(store.set(DEFAULT_KEY, "new default"), 2);
      assertEquals(store.get("api"), "three");
      assertEquals(store.get(), "new default");
      const info = store.info("api");
      assertEquals(info?.version, 3);
      assert((info?.updatedAt.getTime() ?? 0) >= before - 1000, "updatedAt is recent");
      assertEquals(store.keys(), ["api", "default"]);
      assertEquals(store.get("missing"), undefined);
      assertEquals(store.info("missing"), undefined);
      assertEquals(store.set("empty", ""), 1);
      assertEquals(store.get("empty"), "");
    } finally {
      store.close();
    }
  }),
);

Deno.test(
  "a write acknowledged before kill -9 is there after reopening",
  withTempDir(async (dir) => {
    const writer = new URL("./support/store_writer.ts", import.meta.url).pathname;
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", writer, dir, "durable=v1", "durable=v2", "default=rotated"],
      stdout: "piped",
      stderr: "piped",
      stdin: "null",
    }).spawn();
    let seen = "";
    const reader = child.stdout.getReader();
    const decoder = new TextDecoder();
    try {
      while (!seen.includes("\n")) {
        const { value, done } = await reader.read();
        if (done) break;
        seen += decoder.decode(value, { stream: true });
      }
      // Killed as soon as it says the write is done: no close, no checkpoint.
      child.kill("SIGKILL");
    } finally {
      reader.releaseLock();
    }
    const status = await child.status;
    await child.stdout.cancel();
    const stderr = new TextDecoder().decode(
      (await new Response(child.stderr).arrayBuffer()) as ArrayBuffer,
    );
    assertEquals(seen, "written 2\n", `child stderr: ${stderr}`);
    assertEquals(status.signal, "SIGKILL");
    // The rows live only in the WAL, which was never checkpointed into secret.db.
    assert(statSync(join(dir, STORE_FILE + "-wal")).size > 0, "the WAL holds the writes");
    const store = SecretStore.open(dir);
    try {
      assertEquals(store.get("durable"), "v2");
      assertEquals(store.info("durable")?.version, 2);
      assertEquals(store.get(), "rotated");
    } finally {
      store.close();
    }
  }),
);

Deno.test(
  "a corrupt secret.db is a ConfigError naming the path and what to do",
  withTempDir((dir) => {
    const path = join(dir, STORE_FILE);
    writeFileSync(path, "this is not an sqlite database, just some text ".repeat(200), {
      mode: 0o600,
    });
    const err = assertThrows(() => SecretStore.open(dir), ConfigError, path);
    assertMatch(err.message, /corrupt/);
    assertMatch(err.message, /backup|move it/);
    assertEquals(err.message.includes("\n"), false);
    assertEquals(err.exitCode, 11);
  }),
);

Deno.test(
  "a store with a newer schema version is refused with a ConfigError asking for an upgrade",
  withTempDir((dir) => {
    SecretStore.open(dir).close();
    const raw = new DatabaseSync(join(dir, STORE_FILE));
    raw.exec(`PRAGMA user_version = ${SCHEMA_VERSION + 1}`);
    raw.close();
    const err = assertThrows(() => SecretStore.open(dir), ConfigError, "upgrade nodectl");
    assertMatch(err.message, new RegExp(`schema version ${SCHEMA_VERSION + 1}`));
  }),
);

Deno.test(
  "open() refuses a data directory that is a file, a secret.db that is a directory or a symlink",
  withTempDir((root) => {
    const file = join(root, "plain-file");
    writeFileSync(file, "");
    assertThrows(() => SecretStore.open(file), ConfigError, "is not a directory");

    const dirWithDir = join(root, "a");
    mkdirSync(join(dirWithDir, STORE_FILE), { recursive: true });
    assertThrows(() => SecretStore.open(dirWithDir), ConfigError, join(dirWithDir, STORE_FILE));

    const dirWithLink = join(root, "b");
    mkdirSync(dirWithLink);
    symlinkSync(join(root, "elsewhere.db"), join(dirWithLink, STORE_FILE));
    assertThrows(() => SecretStore.open(dirWithLink), ConfigError, "symbolic link");
    assertEquals(existsSync(join(root, "elsewhere.db")), false);
  }),
);

Deno.test({
  name: "an unreadable secret.db is a ConfigError telling to fix its permissions",
  ignore: Deno.uid() === 0, // root reads any file
  fn: withTempDir((dir) => {
    SecretStore.open(dir).close();
    const path = join(dir, STORE_FILE);
    chmodSync(path, 0o000);
    try {
      const err = assertThrows(() => SecretStore.open(dir), ConfigError, path);
      assertMatch(err.message, /readable and writable/);
    } finally {
      chmodSync(path, 0o600);
    }
  }),
});

Deno.test(
  "set() and get() reject unusable keys and values with BadArgError",
  withTempDir((dir) => {
    const store = SecretStore.open(dir);
    try {
      assertThrows(() => store.set("", "v"), BadArgError, "1 to");
      assertThrows(() => store.set("k".repeat(MAX_KEY_LENGTH + 1), "v"), BadArgError, "1 to");
      assertThrows(() => store.set("a\nb", "v"), BadArgError, "control characters");
      assertThrows(() => store.set("k", 42 as unknown as string), BadArgError, "a number");
      assertThrows(() => store.set("k", "x".repeat(MAX_VALUE_BYTES + 1)), BadArgError, "at most");
      assertThrows(() => store.get(7 as unknown as string), BadArgError, "must be a string");
      assertEquals(store.keys(), ["default"]);
    } finally {
      store.close();
    }
  }),
);

Deno.test(
  "close() is idempotent and a closed store says so",
  withTempDir((dir) => {
    const store = SecretStore.open(dir);
    store.close();
    store.close();
    assertThrows(() => store.get(), Error, "is closed");
  }),
);
