import { hostname } from "node:os";
import process from "node:process";
import { ConfigError } from "../errors.ts";
import { backoffDelay } from "../node/backoff.ts";
import {
  DEFAULT_PORT,
  formatAddress,
  formatNodeName,
  isLocalHost,
  parseNodeName,
  shortHostname,
  shortName,
} from "../node/names.ts";
import { defaultRunDir, isProcessAlive, RunDir } from "../node/run_dir.ts";
import { assert, assertEquals, assertThrows } from "./support/assert.ts";

const SHORT = hostname().split(".")[0]!;

function tempDir(): string {
  return Deno.makeTempDirSync({ prefix: "nodectl-names-test-" });
}

async function deadPid(): Promise<number> {
  const child = new Deno.Command("true").spawn();
  await child.status;
  return child.pid;
}

Deno.test("parseNodeName() reads name@host, name@host:port and IP literals", () => {
  assertEquals(parseNodeName("private@kyon.pl"), {
    name: "private@kyon.pl",
    alive: "private",
    host: "kyon.pl",
  });
  assertEquals(parseNodeName("private@kyon.pl:4371"), {
    name: "private@kyon.pl",
    alive: "private",
    host: "kyon.pl",
    port: 4371,
  });
  assertEquals(parseNodeName("p_1-x@10.0.0.2").host, "10.0.0.2");
  assertEquals(parseNodeName("p@NEWBORN").name, "p@NEWBORN");
  assertEquals(parseNodeName("p@host.example.").host, "host.example.");
});

Deno.test("parseNodeName() gives the same frozen result for a name it has seen", () => {
  const first = parseNodeName("cached@kyon.pl:4371");
  assert(Object.isFrozen(first));
  assertEquals(parseNodeName("cached@kyon.pl:4371"), first);
  assert(parseNodeName("cached@kyon.pl:4371") === first, "the remembered result");
  assertEquals(parseNodeName("cached@kyon.pl"), {
    name: "cached@kyon.pl",
    alive: "cached",
    host: "kyon.pl",
  });
  // A bad name is refused every time, not remembered.
  for (let i = 0; i < 2; i++) {
    assertThrows(() => parseNodeName("bad name@x"), ConfigError, "whitespace");
  }
  // Many distinct names: still parsed right once the memory is full and starts over.
  for (let i = 0; i < 3000; i++) assertEquals(parseNodeName(`n${i}@h`).alive, `n${i}`);
  assertEquals(parseNodeName("cached@kyon.pl:4371"), first);
});

Deno.test("parseNodeName() reads IPv6 literals bare or bracketed, with a port only in brackets", () => {
  assertEquals(parseNodeName("p@[::1]:4371"), {
    name: "p@[::1]",
    alive: "p",
    host: "::1",
    port: 4371,
  });
  assertEquals(parseNodeName("p@[fe80::1]"), { name: "p@[fe80::1]", alive: "p", host: "fe80::1" });
  assertEquals(parseNodeName("p@::1"), { name: "p@[::1]", alive: "p", host: "::1" });
  assertEquals(formatNodeName(parseNodeName("p@[::1]:9")), "p@[::1]:9");
  assertEquals(formatAddress({ host: "::1", port: 9 }), "[::1]:9");
  assertEquals(formatAddress({ host: "10.0.0.1", port: 9 }), "10.0.0.1:9");
});

Deno.test("a short name expands to name@<hostname up to the first dot>, like --sname", () => {
  assertEquals(shortHostname(), SHORT);
  assertEquals(shortName("private"), `private@${SHORT}`);
  assertEquals(parseNodeName("private"), {
    name: `private@${SHORT}`,
    alive: "private",
    host: SHORT,
  });
  assertThrows(() => shortName("a b"), ConfigError, "invalid node name 'a b'");
});

Deno.test("parseNodeName() rejects malformed names with one actionable line each", () => {
  const cases: [string, string][] = [
    ["x y", "invalid node name 'x y': the name contains whitespace"],
    ["", "invalid node name '': the name is empty; use name@host"],
    ["@host", "the name part before '@' is empty"],
    ["a!b@host", "may use only letters, digits, '_' and '-'"],
    ["a@", "nothing after '@'"],
    ["a@b@c", "more than one '@'"],
    ["a@:4370", "the host is empty"],
    ["a@h:0", "port '0' is not a number from 1 to 65535"],
    ["a@h:65536", "port '65536' is not a number from 1 to 65535"],
    ["a@h:http", "port 'http' is not a number"],
    ["a@[::1", "'[' without a closing ']'"],
    ["a@[host]:1", "'host' in brackets is not an IPv6 address"],
    ["a@[::1]x", "unexpected 'x' after ']'"],
    ["a@1.2.3.999", "'1.2.3.999' is not a valid IPv4 address"],
    ["a@-bad-.example", "is not a DNS name or IP address"],
    ["a@fe80::zz", "'fe80::zz' is not an IPv6 address; write name@[ipv6]:port"],
    [`a@${"x".repeat(254)}`, "longer than 253"],
    ["a".repeat(65), "1-64 chars"],
  ];
  for (const [text, why] of cases) {
    const err = assertThrows(() => parseNodeName(text), ConfigError, why);
    assert(err.message.startsWith(`invalid node name '${text}': `), err.message);
    assert(!err.message.includes("\n"), "one line");
    assertEquals(err.code, "config");
  }
});

Deno.test("the default port is 4370, next to but not epmd's 4369", () => {
  assertEquals(DEFAULT_PORT, 4370);
});

Deno.test("isLocalHost() knows this host's names and loopback addresses only", () => {
  for (const h of ["localhost", "127.0.0.1", "127.1.2.3", "::1", hostname(), SHORT]) {
    assert(isLocalHost(h), h);
  }
  for (const h of ["kyon.pl", "10.0.0.1", "::2", "128.0.0.1"]) assert(!isLocalHost(h), h);
});

Deno.test("the run directory defaults to $XDG_RUNTIME_DIR/nodectl, else /tmp/nodectl-<uid>", () => {
  const saved = process.env.XDG_RUNTIME_DIR;
  try {
    process.env.XDG_RUNTIME_DIR = "/run/user/1234";
    assertEquals(defaultRunDir(), "/run/user/1234/nodectl");
    delete process.env.XDG_RUNTIME_DIR;
    assertEquals(
      defaultRunDir(),
      `${Deno.env.get("TMPDIR") ?? "/tmp"}/nodectl-${process.getuid!()}`,
    );
  } finally {
    if (saved === undefined) delete process.env.XDG_RUNTIME_DIR;
    else process.env.XDG_RUNTIME_DIR = saved;
  }
});

Deno.test("the run directory is 0700 with 0600 files, and maps a node name to its port", () => {
  const base = tempDir();
  try {
    const path = `${base}/run`;
    const dir = new RunDir(path);
    assertEquals(Deno.statSync(path).mode! & 0o777, 0o700);
    const claim = dir.claim(parseNodeName("private@localhost"));
    assertEquals(dir.lookup("private"), undefined, "not published yet");
    claim.publish({ host: "0.0.0.0", port: 40123 });
    assertEquals(dir.lookup("private"), {
      name: "private@localhost",
      pid: Deno.pid,
      host: "127.0.0.1",
      port: 40123,
    });
    assertEquals(Deno.statSync(claim.file).mode! & 0o777, 0o600);
    assertEquals(dir.list().map((e) => e.name), ["private@localhost"]);
    assertEquals(
      [...Deno.readDirSync(path)].map((e) => e.name),
      ["private.json"],
      "no scratch files left",
    );
    claim.release();
    assertEquals(dir.lookup("private"), undefined);
    assertEquals([...Deno.readDirSync(path)].length, 0);
  } finally {
    Deno.removeSync(base, { recursive: true });
  }
});

Deno.test("an existing run directory that is too open is tightened to 0700", () => {
  const base = tempDir();
  try {
    Deno.chmodSync(base, 0o755);
    new RunDir(base);
    assertEquals(Deno.statSync(base).mode! & 0o777, 0o700);
  } finally {
    Deno.removeSync(base, { recursive: true });
  }
});

Deno.test({
  name: "a run directory owned by another user is refused",
  ignore: process.getuid?.() !== 0,
  fn() {
    const base = tempDir();
    try {
      Deno.chownSync(base, 12345, 12345);
      assertThrows(() => new RunDir(base), ConfigError, "belongs to uid 12345");
    } finally {
      Deno.removeSync(base, { recursive: true });
    }
  },
});

Deno.test("claiming a name a live process holds fails, naming the name and the pid", () => {
  const base = tempDir();
  try {
    const dir = new RunDir(base);
    const first = dir.claim(parseNodeName("private@localhost"));
    assertThrows(
      () => dir.claim(parseNodeName("private@localhost")),
      ConfigError,
      `node name private@localhost is already in use by pid ${Deno.pid}`,
    );
    const other = assertThrows(() => dir.claim(parseNodeName(`private@${SHORT}`)), ConfigError);
    assert(other.message.includes("(as private@localhost)"), other.message);
    first.release();
    dir.claim(parseNodeName("private@localhost")).release();
  } finally {
    Deno.removeSync(base, { recursive: true });
  }
});

Deno.test("an entry left by a dead process is taken over", async () => {
  const base = tempDir();
  try {
    const pid = await deadPid();
    assert(!isProcessAlive(pid));
    assert(isProcessAlive(Deno.pid));
    Deno.writeTextFileSync(
      `${base}/private.json`,
      JSON.stringify({ name: "private@localhost", pid, host: "127.0.0.1", port: 1, token: "x" }),
    );
    const dir = new RunDir(base);
    assertEquals(dir.lookup("private"), undefined, "a dead entry is not found");
    const claim = dir.claim(parseNodeName("private@localhost"));
    claim.publish({ host: "127.0.0.1", port: 2 });
    assertEquals(dir.lookup("private")?.pid, Deno.pid);
    claim.release();
    Deno.writeTextFileSync(`${base}/junk.json`, "not json");
    dir.claim(parseNodeName("junk@localhost")).release();
  } finally {
    Deno.removeSync(base, { recursive: true });
  }
});

Deno.test("release() leaves an entry that another process has since taken", () => {
  const base = tempDir();
  try {
    const dir = new RunDir(base);
    const claim = dir.claim(parseNodeName("p@localhost"));
    Deno.writeTextFileSync(
      claim.file,
      JSON.stringify({ name: "p@localhost", pid: 1, host: null, port: null, token: "other" }),
    );
    claim.release();
    assert(Deno.statSync(claim.file).isFile);
  } finally {
    Deno.removeSync(base, { recursive: true });
  }
});

Deno.test("reconnect backoff doubles from initialMs up to maxMs, with jitter in [half, all]", () => {
  const opts = { initialMs: 100, maxMs: 1000 };
  assertEquals(backoffDelay(0, opts, () => 0), 50);
  assertEquals(backoffDelay(0, opts, () => 1), 100);
  assertEquals(backoffDelay(3, opts, () => 1), 800);
  assertEquals(backoffDelay(4, opts, () => 1), 1000);
  assertEquals(backoffDelay(500, opts, () => 0.5), 750);
});
