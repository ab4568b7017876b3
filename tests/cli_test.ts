import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PROTOCOL_VERSION, VERSION } from "../version.ts";
import { assert, assertEquals, assertMatch } from "./support/assert.ts";
import { ensureBinary, runBinary } from "./support/binary.ts";

Deno.test("compiled binary runs standalone from an empty directory with no environment", async () => {
  const bin = await ensureBinary();
  const dir = mkdtempSync(join(tmpdir(), "nodectl-standalone-"));
  try {
    const copy = join(dir, "nodectl");
    copyFileSync(bin, copy);
    Deno.chmodSync(copy, 0o755);
    const version = await runBinary(["--version"], { binary: copy, clearEnv: true, cwd: dir });
    assertEquals(version.code, 0);
    assertEquals(version.stdout, `nodectl ${VERSION} (protocol ${PROTOCOL_VERSION})\n`);
    const help = await runBinary(["--help"], { binary: copy, clearEnv: true, cwd: dir });
    assertEquals(help.code, 0);
    assertMatch(help.stdout, /Usage: nodectl <command>/);
    assertMatch(help.stdout, /serve/);
    assertMatch(help.stdout, /call/);
    assertEquals(help.stderr, "");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

Deno.test("every command answers --help with its usage and exit 0", async () => {
  for (const command of ["serve", "call", "demo"]) {
    const r = await runBinary([command, "--help"]);
    assertEquals(r.code, 0, `${command} --help exited ${r.code}: ${r.stderr}`);
    assertMatch(r.stdout, new RegExp(`Usage: nodectl ${command}`));
  }
});

Deno.test("an unknown command gives one line naming it and exit 2", async () => {
  const r = await runBinary(["frobnicate"]);
  assertEquals(r.code, 2);
  assertEquals(r.stdout, "");
  assertEquals(r.stderr, "nodectl: unknown command 'frobnicate' (see 'nodectl --help')\n");
});

Deno.test("an unknown flag gives one line naming the flag and the command's help", async () => {
  const r = await runBinary(["serve", "--bogus"]);
  assertEquals(r.code, 2);
  assertEquals(
    r.stderr,
    "nodectl: unknown flag --bogus for 'serve' (see 'nodectl serve --help')\n",
  );
  const top = await runBinary(["--bogus"]);
  assertEquals(top.code, 2);
  assertEquals(top.stderr.split("\n").length, 2, "exactly one line");
  assertMatch(top.stderr, /unknown flag --bogus/);
});

Deno.test("a flag without its value is a usage error naming the flag", async () => {
  const r = await runBinary(["call", "get_data", "--to"]);
  assertEquals(r.code, 2);
  assertMatch(r.stderr, /^nodectl: flag --to needs a value \(see 'nodectl call --help'\)\n$/);
  assert(!r.stderr.includes("    at "), "no stack trace");
});

Deno.test("no arguments prints the overview and exits 2", async () => {
  const r = await runBinary([]);
  assertEquals(r.code, 2);
  assertMatch(r.stdout, /Commands:/);
});
