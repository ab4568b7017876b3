/**
 * The CLI's own behaviour with the compiled binary: usage errors, exit codes per error kind,
 * cookie and key handling, pinning, and that no secret leaks into argv, logs or errors.
 */
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "./support/assert.ts";
import { ensureBinary } from "./support/binary.ts";
import { createNodeHome, runNodectl, startNode, stopAll } from "./support/processes.ts";
import { fileMode } from "./support/temp.ts";

Deno.test("serve refuses an unknown role, a name without a host, and role-less flags with exit 2", async () => {
  const home = createNodeHome();
  try {
    const role = await runNodectl(["serve", "--role", "secret"], home);
    assertEquals(role.code, 2);
    assertMatch(
      role.stderr,
      /^nodectl: unknown role 'secret': use private, public, or private,public/,
    );
    const name = await runNodectl(["serve", "--role", "private", "--name", "private"], home);
    assertEquals(name.code, 2);
    assertMatch(name.stderr, /--name needs NAME@HOST/);
    const http = await runNodectl(["serve", "--role", "private", "--http", "127.0.0.1:0"], home);
    assertEquals(http.code, 2);
    assertMatch(http.stderr, /--http and --private-node belong to the public role/);
    const badPrivate = await runNodectl(
      ["serve", "--role", "public", "--sname", "p", "--private-node", "pri vate@host"],
      home,
    );
    assertEquals(badPrivate.code, 11);
    assertMatch(badPrivate.stderr, /^nodectl: invalid node name 'pri vate@host'/);
    assertEquals(
      badPrivate.stderr.trim().split("\n").filter((l) => l.startsWith("nodectl:")).length,
      1,
    );
    const noRole = await runNodectl(["serve"], home);
    assertEquals(noRole.code, 2);
    assertMatch(noRole.stderr, /--role is required/);
  } finally {
    home.cleanup();
  }
});

Deno.test("call needs a function and --to, and reports a malformed node name as a config error", async () => {
  const home = createNodeHome();
  try {
    const noFn = await runNodectl(["call", "--to", "private"], home);
    assertEquals(noFn.code, 2);
    assertMatch(noFn.stderr, /missing FUNCTION/);
    const noTo = await runNodectl(["call", "get_data"], home);
    assertEquals(noTo.code, 2);
    assertMatch(noTo.stderr, /--to NODE is required/);
    const bad = await runNodectl(["call", "get_data", "--to", "pri vate@host"], home);
    assertEquals(bad.code, 11);
    assertMatch(bad.stderr, /^nodectl: invalid node name 'pri vate@host'/);
    const badTimeout = await runNodectl(
      ["call", "get_data", "--to", "x@y", "--timeout", "soon"],
      home,
    );
    assertEquals(badTimeout.code, 2);
    assertMatch(badTimeout.stderr, /--timeout must be a whole number/);
  } finally {
    home.cleanup();
  }
});

Deno.test("a weak cookie is refused (exit 11) without echoing it, unless --allow-weak-cookie", async () => {
  const home = createNodeHome("password123");
  try {
    const r = await runNodectl(["call", "get_data", "--to", "private@127.0.0.1:1"], home);
    assertEquals(r.code, 11);
    assertMatch(r.stderr, /cookie is too weak/);
    assert(!r.stderr.includes("password123"), "the cookie is never printed");
    assertEquals(r.stderr.trim().split("\n").length, 1);
    const allowed = await runNodectl(
      [
        "call",
        "get_data",
        "--to",
        "private@127.0.0.1:1",
        "--allow-weak-cookie",
        "--timeout",
        "2000",
      ],
      home,
    );
    assertEquals(allowed.code, 5, allowed.stderr); // past the cookie check: nothing listens on port 1
    assertMatch(allowed.stderr, /private@127\.0\.0\.1/);
  } finally {
    home.cleanup();
  }
});

Deno.test("cookie new writes a 0600 file in a 0700 directory, prints no cookie, and will not overwrite", async () => {
  const home = createNodeHome();
  try {
    const env = { NODECTL_COOKIE: "" };
    const made = await runNodectl(["cookie", "new"], home, { env });
    assertEquals(made.code, 0, made.stderr);
    const path = join(home.dir, "config", "nodectl", "cookie");
    const cookie = readFileSync(path, "utf8").trim();
    assertEquals(fileMode(path), 0o600);
    assertEquals(fileMode(join(home.dir, "config", "nodectl")), 0o700);
    assert(cookie.length >= 43);
    assert(!made.stdout.includes(cookie) && !made.stderr.includes(cookie));
    const again = await runNodectl(["cookie", "new"], home, { env });
    assertEquals(again.code, 2);
    assertMatch(again.stderr, /exists; pass --force/);
    assertEquals(readFileSync(path, "utf8").trim(), cookie);
    const forced = await runNodectl(["cookie", "new", "--force"], home, { env });
    assertEquals(forced.code, 0);
    assert(readFileSync(path, "utf8").trim() !== cookie);
  } finally {
    home.cleanup();
  }
});

Deno.test("a node's changed key is refused by name with both fingerprints and how to accept it", async () => {
  const home = createNodeHome();
  try {
    const first = await startNode([
      "--role",
      "private",
      "--sname",
      "keyed",
      "--listen",
      "127.0.0.1:0",
    ], home);
    const ok = await runNodectl(["call", "get_data", "--to", "keyed"], home);
    assertEquals(ok.code, 0, ok.stderr);
    assertEquals(ok.stdout, "secret data\n");
    const listed = await runNodectl(["known-nodes", "list"], home);
    assertMatch(listed.stdout, new RegExp(`^${first.name} SHA256:`, "m"));
    await first.process.stop();

    // Same name, new identity: what a man in the middle (or a reinstalled host) looks like.
    rmSync(join(home.dir, "config", "nodectl", "identity", first.name));
    await startNode(["--role", "private", "--sname", "keyed", "--listen", "127.0.0.1:0"], home);
    const refused = await runNodectl(["call", "get_data", "--to", "keyed"], home);
    assertEquals(refused.code, 7);
    assertMatch(refused.stderr, new RegExp(`${first.name}`));
    assertEquals((refused.stderr.match(/SHA256:/g) ?? []).length, 2, refused.stderr);
    assertMatch(refused.stderr, /known-nodes forget/);
    assertEquals(refused.stdout, "");

    const forget = await runNodectl(["known-nodes", "forget", first.name], home);
    assertEquals(forget.code, 0);
    const after = await runNodectl(["call", "get_data", "--to", "keyed"], home);
    assertEquals(after.code, 0, after.stderr);
  } finally {
    await stopAll();
    home.cleanup();
  }
});

Deno.test("a serving node keeps the cookie out of its argv and its log", async () => {
  const home = createNodeHome();
  try {
    const node = await startNode([
      "--role",
      "private",
      "--sname",
      "quiet",
      "--listen",
      "127.0.0.1:0",
    ], home);
    const cmdline = readFileSync(`/proc/${node.process.pid}/cmdline`, "utf8");
    assert(!cmdline.includes(home.cookie));
    await runNodectl(["call", "get_data", "--to", "quiet"], home);
    await runNodectl(["call", "get_data", "--to", "quiet"], home, {
      env: { NODECTL_COOKIE: "x".repeat(10) + home.cookie },
    });
    await node.process.stop();
    const log = node.process.lines.map((l) => l.text).join("\n");
    assert(!log.includes(home.cookie), "the log never holds the cookie");
    assertMatch(log, /SecretService started/);
    assertMatch(log, /cookie mismatch/);
  } finally {
    await stopAll();
    home.cleanup();
  }
});

Deno.test("call --json prints machine-readable results and errors keep their exit codes", async () => {
  const home = createNodeHome();
  try {
    await startNode(["--role", "private", "--sname", "jsonny", "--listen", "127.0.0.1:0"], home);
    const json = await runNodectl(["call", "get_data", "--to", "jsonny", "--json"], home);
    assertEquals(json.code, 0, json.stderr);
    assertEquals(JSON.parse(json.stdout), "secret data");
    const undef = await runNodectl(["call", "SecretService.drop_tables", "--to", "jsonny"], home);
    assertEquals(undef.code, 4);
    assertMatch(undef.stderr, /drop_tables/);
    const remote = await runNodectl(["call", "get_data", "nope", "--to", "jsonny"], home);
    assertEquals(remote.code, 8);
    assertMatch(remote.stderr, /no secret under key 'nope'/);
    const badarg = await runNodectl(["call", "get_data", "42", "--to", "jsonny"], home);
    assertEquals(badarg.code, 10);
    const admin = await runNodectl(
      ["call", "SecretService.set_secret", "k", "v", "--to", "jsonny"],
      home,
    );
    assertEquals(admin.code, 4, "a remote caller not on --admin-allow cannot set secrets");
    const nodes = await runNodectl(["call", "Node.nodes", "--to", "jsonny", "--json"], home);
    assertEquals(JSON.parse(nodes.stdout), [], "hidden callers are not listed");
    for (const r of [undef, remote, badarg, admin]) {
      assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
      assert(!/\n\s+at /.test(r.stderr), "no stack trace");
    }
  } finally {
    await stopAll();
    home.cleanup();
  }
});

Deno.test("set_secret works for the key listed with --admin-allow, survives kill -9 of the node, and a call over the size limit is payload_too_large", async () => {
  const home = createNodeHome();
  try {
    const id = await runNodectl(["id", "--call"], home);
    assertEquals(id.code, 0, id.stderr);
    const fingerprint = id.stdout.split(" ")[1]!;
    assertMatch(fingerprint, /^SHA256:/);
    const args = [
      "--role",
      "private",
      "--sname",
      "admin",
      "--listen",
      "127.0.0.1:0",
      "--admin-allow",
      fingerprint,
      "--max-message-size",
      "2048",
    ];
    const first = await startNode(args, home);
    // The new value comes on standard input ("-"), never on the command line.
    const child = new Deno.Command(await ensureBinary(), {
      args: ["call", "SecretService.set_secret", "default", "-", "--to", "admin"],
      env: home.env(),
      clearEnv: true,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode("rotated data\n"));
    await writer.close();
    const set = await child.output();
    assertEquals(set.code, 0, new TextDecoder().decode(set.stderr));
    // Acknowledged means durable: kill -9 the node right after, start it again, read it back.
    await first.process.stop({ signal: "SIGKILL" });
    await startNode(args, home);
    const got = await runNodectl(["call", "get_data", "--to", "admin"], home);
    assertEquals(got.stdout, "rotated data\n");
    const big = "x".repeat(4096);
    const setBig = await runNodectl([
      "call",
      "SecretService.set_secret",
      "big",
      big,
      "--to",
      "admin",
    ], home);
    assertEquals(setBig.code, 9, "the request itself is over the node's 2048-byte limit");
    assertMatch(setBig.stderr, /too large|over/i);
  } finally {
    await stopAll();
    home.cleanup();
  }
});
