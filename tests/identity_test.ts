import { Buffer } from "node:buffer";
import { chmodSync, existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ConfigError } from "../errors.ts";
import { keyPairFromPrivate, publicKeyFingerprint } from "../transport/crypto.ts";
import { IDENTITY_HEADER, identityPath, loadOrCreateIdentity } from "../transport/identity.ts";
import {
  assert,
  assertEquals,
  assertMatch,
  assertNotEquals,
  assertThrows,
} from "./support/assert.ts";
import { race, transportModuleUrl } from "./support/race.ts";
import { fileMode, tempDirWrapper } from "./support/temp.ts";

const withTempDir = tempDirWrapper("nodectl-identity-");

const KEY_B64 = Buffer.alloc(32, 7).toString("base64");

Deno.test(
  "loadOrCreateIdentity() creates a 0600 key file in a 0700 directory on first use",
  withTempDir((dir) => {
    const path = join(dir, "config", "identity", "private@host");
    const id = loadOrCreateIdentity(path);
    assertEquals(id.created, true);
    assertEquals(fileMode(path), 0o600);
    assertEquals(fileMode(join(dir, "config")), 0o700);
    assertEquals(fileMode(join(dir, "config", "identity")), 0o700);
    assertEquals(id.keyPair.publicKey.length, 32);
    assertEquals(id.keyPair.privateKey.length, 32);
    assertEquals(id.fingerprint, publicKeyFingerprint(id.keyPair.publicKey));
    assertEquals(keyPairFromPrivate(id.keyPair.privateKey).publicKey, id.keyPair.publicKey);
    const lines = readFileSync(path, "utf8").split("\n");
    assertEquals(lines[0], IDENTITY_HEADER);
    assertEquals(Buffer.from(lines[1]!, "base64"), Buffer.from(id.keyPair.privateKey));
    assertEquals(lines.length, 3);
    assertEquals(readdirSync(join(dir, "config", "identity")), ["private@host"]);
  }),
);

Deno.test(
  "loadOrCreateIdentity() returns the same key on every later load",
  withTempDir((dir) => {
    const path = join(dir, "identity");
    const first = loadOrCreateIdentity(path);
    const second = loadOrCreateIdentity(path);
    assertEquals(second.created, false);
    assertEquals(second.fingerprint, first.fingerprint);
    assertEquals(second.keyPair.publicKey, first.keyPair.publicKey);
    assertEquals(second.keyPair.privateKey, first.keyPair.privateKey);
    assertNotEquals(loadOrCreateIdentity(join(dir, "other")).fingerprint, first.fingerprint);
  }),
);

Deno.test(
  "loadOrCreateIdentity() reads a hand-written file in the documented format",
  withTempDir((dir) => {
    const path = join(dir, "identity");
    writeFileSync(path, `${IDENTITY_HEADER}\n${KEY_B64}\n`, { mode: 0o600 });
    const id = loadOrCreateIdentity(path);
    assertEquals(id.created, false);
    assertEquals(id.keyPair.privateKey, new Uint8Array(32).fill(7));
  }),
);

Deno.test(
  "loadOrCreateIdentity() refuses a key file group or others can read, saying how to fix it",
  withTempDir((dir) => {
    const path = join(dir, "identity");
    const id = loadOrCreateIdentity(path);
    const secret = Buffer.from(id.keyPair.privateKey).toString("base64");
    for (const loose of [0o640, 0o604, 0o660]) {
      chmodSync(path, loose);
      const err = assertThrows(() => loadOrCreateIdentity(path), ConfigError, `chmod 600 ${path}`);
      assert(!err.message.includes(secret));
      assert(!err.message.includes("\n"));
    }
    chmodSync(path, 0o600);
    assertEquals(loadOrCreateIdentity(path).fingerprint, id.fingerprint);
  }),
);

Deno.test(
  "loadOrCreateIdentity() reports malformed content in one line naming the path, not the content",
  withTempDir((dir) => {
    const path = join(dir, "identity");
    const cases = [
      "",
      `${KEY_B64}\n`,
      `${IDENTITY_HEADER}\n`,
      `${IDENTITY_HEADER}\nnot base64 at all!\n`,
      `${IDENTITY_HEADER}\n${Buffer.alloc(31, 7).toString("base64")}\n`,
      `${IDENTITY_HEADER}\n${KEY_B64}\nextra line\n`,
    ];
    for (const content of cases) {
      rmSync(path, { force: true });
      writeFileSync(path, content, { mode: 0o600 });
      const err = assertThrows(() => loadOrCreateIdentity(path), ConfigError, path);
      assertMatch(err.message, /malformed/);
      assert(!err.message.includes(KEY_B64), err.message);
      assert(!err.message.includes("\n"));
      // The broken file is left for the user to look at, not silently replaced.
      assertEquals(readFileSync(path, "utf8"), content);
    }
  }),
);

Deno.test(
  "loadOrCreateIdentity() says when a file is in another format version",
  withTempDir((dir) => {
    const path = join(dir, "identity");
    writeFileSync(path, `nodectl-identity-v9\n${KEY_B64}\n`, { mode: 0o600 });
    assertThrows(() => loadOrCreateIdentity(path), ConfigError, "nodectl-identity-v9");
  }),
);

Deno.test("identityPath() gives each node name its own file, and refuses path tricks", () => {
  assertEquals(identityPath("/c", "private@host"), join("/c", "identity", "private@host"));
  assertNotEquals(identityPath("/c", "public@host"), identityPath("/c", "private@host"));
  for (const bad of ["", "../x", "a/b", ".hidden", "a\\b"]) {
    assertThrows(() => identityPath("/c", bad), ConfigError, "identity file");
  }
});

Deno.test(
  "processes creating the same identity at once all end up with one key",
  withTempDir(async (dir) => {
    const path = join(dir, "nodectl", "identity", "private@host");
    const results = await race(
      dir,
      6,
      `
      const { loadOrCreateIdentity } = await import(${
        JSON.stringify(transportModuleUrl("identity.ts"))
      });
      const id = loadOrCreateIdentity(${JSON.stringify(path)});
      return { fingerprint: id.fingerprint, created: id.created };
    `,
    ) as { fingerprint: string; created: boolean }[];
    const final = loadOrCreateIdentity(path);
    for (const r of results) assertEquals(r.fingerprint, final.fingerprint);
    assertEquals(results.filter((r) => r.created).length, 1);
    assertEquals(fileMode(path), 0o600);
    assertEquals(readdirSync(join(dir, "nodectl", "identity")), ["private@host"]);
    assert(existsSync(path));
  }),
);
