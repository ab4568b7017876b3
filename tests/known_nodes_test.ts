import { Buffer } from "node:buffer";
import { chmodSync, existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ConfigError } from "../errors.ts";
import { generateKeyPair, publicKeyFingerprint } from "../transport/crypto.ts";
import { keyChangedMessage, KnownNodes, notListedMessage } from "../transport/known_nodes.ts";
import { assert, assertEquals, assertMatch, assertThrows } from "./support/assert.ts";
import { race, transportModuleUrl } from "./support/race.ts";
import { fileMode, tempDirWrapper } from "./support/temp.ts";

const withTempDir = tempDirWrapper("nodectl-known-");

const key = () => generateKeyPair().publicKey;
const b64 = (k: Uint8Array) => Buffer.from(k).toString("base64");

Deno.test(
  "a node never seen is new, and nothing is written until it is pinned",
  withTempDir((dir) => {
    const path = join(dir, "nodectl", "known_nodes");
    const known = KnownNodes.load(path, { strict: false });
    assertEquals(known.check("private@host", key()), { status: "new" });
    assertEquals(known.list(), []);
    assert(!existsSync(path));
  }),
);

Deno.test(
  "pin() records a key in a 0600 file; that key is then known and another one changed",
  withTempDir((dir) => {
    const path = join(dir, "nodectl", "known_nodes");
    const known = KnownNodes.load(path, { strict: false });
    const pinned = key();
    assertEquals(known.pin("private@host", pinned), { status: "pinned" });
    assertEquals(fileMode(path), 0o600);
    assertEquals(fileMode(join(dir, "nodectl")), 0o700);
    assertEquals(readFileSync(path, "utf8"), `private@host ${b64(pinned)}\n`);
    assertEquals(known.check("private@host", pinned), { status: "known" });
    assertEquals(known.check("private@host", key()), { status: "changed", pinned });
    assertEquals(known.check("public@host", pinned), { status: "new" });
  }),
);

Deno.test(
  "pin() of a name already pinned writes nothing: same key is known, another is changed",
  withTempDir((dir) => {
    const path = join(dir, "known_nodes");
    const known = KnownNodes.load(path, { strict: false });
    const first = key();
    known.pin("private@host", first);
    const before = readFileSync(path, "utf8");
    assertEquals(known.pin("private@host", first), { status: "known" });
    assertEquals(known.pin("private@host", key()), { status: "changed", pinned: first });
    assertEquals(readFileSync(path, "utf8"), before);
  }),
);

Deno.test(
  "pins survive a reload, and list() gives every node with its fingerprint in file order",
  withTempDir((dir) => {
    const path = join(dir, "known_nodes");
    const a = key(), b = key();
    const known = KnownNodes.load(path, { strict: false });
    known.pin("b@host", b);
    known.pin("a@host", a);
    const again = KnownNodes.load(path, { strict: false });
    assertEquals(again.check("a@host", a), { status: "known" });
    assertEquals(again.list(), [
      { name: "b@host", publicKey: b, fingerprint: publicKeyFingerprint(b) },
      { name: "a@host", publicKey: a, fingerprint: publicKeyFingerprint(a) },
    ]);
  }),
);

Deno.test(
  "forget() drops a node so its next key is new, keeping comments and other lines",
  withTempDir((dir) => {
    const path = join(dir, "known_nodes");
    const a = key(), b = key();
    writeFileSync(
      path,
      `# pinned by hand\na@host ${b64(a)}\nb@host ${b64(b)}  # the other one\n`,
      { mode: 0o600 },
    );
    const known = KnownNodes.load(path, { strict: false });
    assertEquals(known.forget("a@host"), true);
    assertEquals(known.check("a@host", a), { status: "new" });
    assertEquals(known.check("b@host", b), { status: "known" });
    assertEquals(
      readFileSync(path, "utf8"),
      `# pinned by hand\nb@host ${b64(b)}  # the other one\n`,
    );
    assertEquals(fileMode(path), 0o600);
    assertEquals(known.forget("a@host"), false);
    assertEquals(readdirSync(dir), ["known_nodes"]);
    const other = key();
    assertEquals(known.pin("a@host", other), { status: "pinned" });
    assertEquals(known.check("a@host", other), { status: "known" });
  }),
);

Deno.test(
  "a running node sees pins and forgets made by another process",
  withTempDir((dir) => {
    const path = join(dir, "known_nodes");
    const running = KnownNodes.load(path, { strict: false });
    const cli = KnownNodes.load(path, { strict: false });
    const old = key(), fresh = key();
    cli.pin("private@host", old);
    assertEquals(running.check("private@host", old), { status: "known" });
    assertEquals(running.check("private@host", fresh).status, "changed");
    cli.forget("private@host");
    assertEquals(running.check("private@host", fresh), { status: "new" });
    assertEquals(running.pin("private@host", fresh), { status: "pinned" });
  }),
);

Deno.test(
  "strict mode lists only the pinned keys: listed ones are known, others new or changed",
  withTempDir((dir) => {
    const path = join(dir, "known_nodes");
    const listed = key();
    KnownNodes.load(path, { strict: false }).pin("private@host", listed);
    const strict = KnownNodes.load(path, { strict: true });
    assertEquals(strict.strict, true);
    assertEquals(strict.path, path);
    assertEquals(strict.check("private@host", listed), { status: "known" });
    assertEquals(strict.check("stranger@host", key()), { status: "new" });
    assertEquals(strict.check("private@host", key()).status, "changed");
    assertEquals(KnownNodes.load(path, { strict: false }).strict, false);
  }),
);

Deno.test(
  "the first line for a name is the one that counts",
  withTempDir((dir) => {
    const path = join(dir, "known_nodes");
    const first = key(), second = key();
    writeFileSync(path, `n@h ${b64(first)}\nn@h ${b64(second)}\n`, { mode: 0o600 });
    const known = KnownNodes.load(path, { strict: false });
    assertEquals(known.check("n@h", first), { status: "known" });
    assertEquals(known.check("n@h", second), { status: "changed", pinned: first });
    assertEquals(known.list().length, 1);
    assertEquals(known.forget("n@h"), true);
    assertEquals(readFileSync(path, "utf8"), "");
  }),
);

Deno.test(
  "pin() starts a new line when a hand-edited file does not end in one",
  withTempDir((dir) => {
    const path = join(dir, "known_nodes");
    const a = key(), b = key();
    writeFileSync(path, `a@host ${b64(a)}`, { mode: 0o600 });
    const known = KnownNodes.load(path, { strict: false });
    assertEquals(known.pin("b@host", b), { status: "pinned" });
    assertEquals(readFileSync(path, "utf8"), `a@host ${b64(a)}\nb@host ${b64(b)}\n`);
    assertEquals(KnownNodes.load(path, { strict: false }).list().length, 2);
  }),
);

Deno.test(
  "a malformed line is reported by path and line number",
  withTempDir((dir) => {
    const path = join(dir, "known_nodes");
    for (
      const bad of [
        "private@host",
        "private@host not-base64!",
        `private@host ${Buffer.alloc(31).toString("base64")}`,
        `private@host ${b64(key())} trailing words`,
      ]
    ) {
      writeFileSync(path, `# comment\n\n${bad}\n`, { mode: 0o600 });
      const err = assertThrows(
        () => KnownNodes.load(path, { strict: false }),
        ConfigError,
        `${path}:3`,
      );
      assert(!err.message.includes("\n"));
    }
  }),
);

Deno.test(
  "a known_nodes file other users can write is refused with the chmod that fixes it",
  withTempDir((dir) => {
    const path = join(dir, "known_nodes");
    writeFileSync(path, `a@host ${b64(key())}\n`, { mode: 0o600 });
    chmodSync(path, 0o620);
    assertThrows(() => KnownNodes.load(path, { strict: false }), ConfigError, `chmod 600 ${path}`);
    chmodSync(path, 0o600);
    const known = KnownNodes.load(path, { strict: false });
    chmodSync(path, 0o602);
    assertThrows(() => known.pin("b@host", key()), ConfigError, `chmod 600 ${path}`);
    assertEquals(readFileSync(path, "utf8").split("\n").length, 2);
  }),
);

Deno.test(
  "pin() refuses names the file cannot hold and keys that are not 32 bytes",
  withTempDir((dir) => {
    const known = KnownNodes.load(join(dir, "known_nodes"), { strict: false });
    for (const bad of ["", "two words@host", "#comment", "tab\there", "nl\nx"]) {
      assertThrows(() => known.pin(bad, key()), ConfigError, "node name");
    }
    assertThrows(() => known.pin("a@host", new Uint8Array(31)), ConfigError, "32 bytes");
    assert(!existsSync(join(dir, "known_nodes")));
  }),
);

Deno.test("keyChangedMessage() names the node, both fingerprints and how to accept the change", () => {
  const msg = keyChangedMessage(
    "private@host",
    "SHA256:pinnedpinnedpinnedpinne",
    "SHA256:offeredofferedofferedoff",
    "/home/u/.config/nodectl/known_nodes",
  );
  assert(!msg.includes("\n"));
  assertMatch(msg, /private@host/);
  assertMatch(msg, /SHA256:pinnedpinnedpinnedpinne/);
  assertMatch(msg, /SHA256:offeredofferedofferedoff/);
  assertMatch(msg, /`nodectl known-nodes forget private@host`/);
  assertMatch(msg, /delete its line in \/home\/u\/\.config\/nodectl\/known_nodes/);
});

Deno.test("notListedMessage() names the node, its fingerprint, the file and how to add it", () => {
  const msg = notListedMessage("private@host", "SHA256:abcabcabcabcabcabcabca", "/k/known_nodes");
  assert(!msg.includes("\n"));
  assertMatch(msg, /SHA256:abcabcabcabcabcabcabca/);
  assertMatch(msg, /\/k\/known_nodes/);
  assertMatch(msg, /`nodectl known-nodes add private@host <key>`/);
});

Deno.test(
  "processes pinning at once neither corrupt the file nor pin two keys for one name",
  withTempDir(async (dir) => {
    const path = join(dir, "nodectl", "known_nodes");
    const writers = 4, each = 25;
    const results = await race(
      dir,
      writers,
      `
      const { KnownNodes } = await import(${JSON.stringify(transportModuleUrl("known_nodes.ts"))});
      const { generateKeyPair } = await import(${JSON.stringify(transportModuleUrl("crypto.ts"))});
      const known = KnownNodes.load(${JSON.stringify(path)}, { strict: false });
      const me = Deno.args[0].slice(-1);
      const shared = generateKeyPair().publicKey;
      const sharedResult = known.pin("shared@host", shared);
      for (let j = 0; j < ${each}; j++) {
        const r = known.pin("node-" + me + "-" + j + "@host", generateKeyPair().publicKey);
        if (r.status !== "pinned") throw new Error("lost a pin: " + r.status);
      }
      return { status: sharedResult.status, shared: btoa(String.fromCharCode(...shared)) };
    `,
    ) as { status: string; shared: string }[];

    const known = KnownNodes.load(path, { strict: false });
    const nodes = known.list();
    assertEquals(nodes.length, writers * each + 1);
    const text = readFileSync(path, "utf8");
    assert(text.endsWith("\n"));
    // Every line whole (an empty line, from the newline guard racing an append, is harmless).
    const lines = text.slice(0, -1).split("\n").filter((line) => line !== "");
    const sharedLines = lines.filter((line) => line.startsWith("shared@host "));
    assertEquals(lines.length - sharedLines.length, writers * each);
    for (const line of lines) assertMatch(line, /^\S+ [A-Za-z0-9+/]{43}=$/);
    const winners = results.filter((r) => r.status === "pinned");
    assertEquals(winners.length, 1);
    assertEquals(results.filter((r) => r.status === "changed").length, writers - 1);
    const shared = nodes.find((n) => n.name === "shared@host")!;
    assertEquals(b64(shared.publicKey), winners[0]!.shared);
    assertEquals(sharedLines[0], `shared@host ${winners[0]!.shared}`);
  }),
);
