import { Buffer } from "node:buffer";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { ConfigError } from "../errors.ts";
import {
  checkCookieStrength,
  derivePsk,
  estimateCookieBits,
  generateCookie,
  loadCookie,
  MIN_COOKIE_BITS,
} from "../transport/cookie.ts";
import {
  assert,
  assertEquals,
  assertMatch,
  assertNotEquals,
  assertThrows,
} from "./support/assert.ts";
import { race, transportModuleUrl } from "./support/race.ts";
import { fileMode, tempDirWrapper } from "./support/temp.ts";

const ERLANG_STYLE = "OUSXEQHLTDKZGXXTAKHZ";

const withTempDir = tempDirWrapper("nodectl-cookie-");

Deno.test("derivePsk() gives 32 bytes, the same for the same cookie and different for another", () => {
  const a = derivePsk(ERLANG_STYLE);
  assert(a instanceof Uint8Array);
  assertEquals(a.length, 32);
  assertEquals(derivePsk(ERLANG_STYLE), a);
  assertNotEquals(derivePsk(ERLANG_STYLE.slice(0, -1) + "Y"), a);
  assertNotEquals(derivePsk(ERLANG_STYLE.toLowerCase()), a);
});

Deno.test("derivePsk() matches the pinned scrypt vector (changing it is a protocol change)", () => {
  // scrypt(N=2^15, r=8, p=1, salt "nodectl/1 cookie psk"); also what Python's hashlib.scrypt gives.
  assertEquals(
    Buffer.from(derivePsk(ERLANG_STYLE)).toString("hex"),
    "3281ddd27457a7ce4ca73e11fff9107e18990005e613357ee644ea52f333653f",
  );
});

Deno.test("derivePsk() refuses an empty cookie", () => {
  assertThrows(() => derivePsk(""), ConfigError, "empty");
});

Deno.test("estimateCookieBits() rates an Erlang-style 20-uppercase-letter cookie ~94 bits", () => {
  const bits = estimateCookieBits(ERLANG_STYLE);
  assert(bits > 90 && bits < 98, `got ${bits}`);
  assert(bits >= MIN_COOKIE_BITS);
});

Deno.test("estimateCookieBits() rates dictionary words, repeats and sequences as weak", () => {
  for (
    const weak of [
      "password123",
      "Password123!",
      "secretsecretsecret",
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
      "abcdefghijklmnopqrstuvwxyz0123456789",
      "correcthorsebatterystaple",
      "qwertyuiop1234567890",
      "0123456789abcdef0123456789abcdef",
    ]
  ) {
    const bits = estimateCookieBits(weak);
    assert(bits < MIN_COOKIE_BITS, `"${weak}" rated ${bits} bits`);
  }
  assert(estimateCookieBits("password123") < 40);
});

Deno.test("estimateCookieBits() rates structure below random text of the same length", () => {
  const random = "kV3qZ8wN1xR5tB7m";
  assert(estimateCookieBits("abcdefghijklmnop") < estimateCookieBits(random) / 2);
  assert(estimateCookieBits("zzzzzzzzzzzzzzzz") < estimateCookieBits(random) / 2);
  assert(estimateCookieBits("kV3qkV3qkV3qkV3q") < estimateCookieBits(random) / 2);
});

Deno.test("estimateCookieBits() counts hex as 4 bits a character", () => {
  assertEquals(estimateCookieBits("9f2c4e7a1b8d3056"), 64);
  assertEquals(estimateCookieBits(""), 0);
});

Deno.test("checkCookieStrength() refuses a weak cookie without echoing it", () => {
  const cookie = "password123";
  const err = assertThrows(() => checkCookieStrength(cookie), ConfigError, "too weak");
  assert(!err.message.includes(cookie), err.message);
  assertMatch(err.message, /~\d+ bits of estimated entropy, need 80/);
  assertMatch(err.message, /nodectl cookie new/);
  assertMatch(err.message, /--allow-weak-cookie/);
  assert(!err.message.includes("\n"));
});

Deno.test("checkCookieStrength() names the cookie's source, not the cookie", () => {
  const err = assertThrows(
    () => checkCookieStrength("hunter2", { source: "NODECTL_COOKIE" }),
    ConfigError,
    "cookie from NODECTL_COOKIE is too weak",
  );
  assert(!err.message.includes("hunter2"));
});

Deno.test("checkCookieStrength() accepts a weak cookie with allowWeak, and a strong one", () => {
  assert(checkCookieStrength("password123", { allowWeak: true }) < MIN_COOKIE_BITS);
  assert(checkCookieStrength(ERLANG_STYLE) >= MIN_COOKIE_BITS);
});

Deno.test("generateCookie() gives distinct base64url cookies rated at least 256 bits", () => {
  const seen = new Set<string>();
  for (let i = 0; i < 200; i++) {
    const cookie = generateCookie();
    assertMatch(cookie, /^[A-Za-z0-9_-]{44}$/);
    assert(estimateCookieBits(cookie) >= 256, `${estimateCookieBits(cookie)} bits`);
    checkCookieStrength(cookie);
    seen.add(cookie);
  }
  assertEquals(seen.size, 200);
});

Deno.test(
  "loadCookie() creates the default cookie file 0600 in a 0700 directory, then reuses it",
  withTempDir((dir) => {
    const configDir = join(dir, "config", "nodectl");
    const first = loadCookie({ env: {}, configDir, create: true });
    const path = join(configDir, "cookie");
    assertEquals(first.source, "file");
    assertEquals(first.path, path);
    assertEquals(first.created, true);
    assertEquals(fileMode(path), 0o600);
    assertEquals(fileMode(configDir), 0o700);
    assertEquals(readFileSync(path, "utf8"), first.cookie + "\n");
    checkCookieStrength(first.cookie);

    const second = loadCookie({ env: {}, configDir, create: true });
    assertEquals(second.cookie, first.cookie);
    assertEquals(second.created, false);
    assertEquals(readdirSync(configDir), ["cookie"]);
  }),
);

Deno.test(
  "loadCookie() finds the default file under XDG_CONFIG_HOME, else ~/.config",
  withTempDir((dir) => {
    const xdg = loadCookie({ env: { XDG_CONFIG_HOME: join(dir, "xdg") }, create: true });
    assertEquals(xdg.path, join(dir, "xdg", "nodectl", "cookie"));
    const home = loadCookie({ env: { HOME: join(dir, "home") }, create: true });
    assertEquals(home.path, join(dir, "home", ".config", "nodectl", "cookie"));
    assertNotEquals(home.cookie, xdg.cookie);
  }),
);

Deno.test(
  "loadCookie() prefers NODECTL_COOKIE over the default file, and does not create the file",
  withTempDir((dir) => {
    const configDir = join(dir, "nodectl");
    const loaded = loadCookie({ env: { NODECTL_COOKIE: ERLANG_STYLE }, configDir, create: true });
    assertEquals(loaded, { cookie: ERLANG_STYLE, source: "env", created: false });
    assert(!existsSync(configDir));

    const fromFile = loadCookie({ env: {}, configDir, create: true });
    const again = loadCookie({ env: { NODECTL_COOKIE: ERLANG_STYLE }, configDir, create: true });
    assertEquals(again.cookie, ERLANG_STYLE);
    assertNotEquals(fromFile.cookie, ERLANG_STYLE);
  }),
);

Deno.test(
  "loadCookie() prefers an explicit cookie file over NODECTL_COOKIE, trimming its newline",
  withTempDir((dir) => {
    const path = join(dir, "my-cookie");
    writeFileSync(path, "XQZMWKPLRTVBNHYJGFDS\r\n", { mode: 0o600 });
    const loaded = loadCookie({
      env: { NODECTL_COOKIE: ERLANG_STYLE },
      cookieFile: path,
      configDir: join(dir, "nodectl"),
      create: true,
    });
    assertEquals(loaded, { cookie: "XQZMWKPLRTVBNHYJGFDS", source: "file", path, created: false });
  }),
);

Deno.test(
  "loadCookie() refuses a group-readable cookie file with the chmod that fixes it",
  withTempDir((dir) => {
    const path = join(dir, "cookie");
    writeFileSync(path, ERLANG_STYLE + "\n", { mode: 0o600 });
    chmodSync(path, 0o640);
    const err = assertThrows(
      () => loadCookie({ env: {}, configDir: dir, create: true }),
      ConfigError,
      `chmod 600 ${path}`,
    );
    assert(!err.message.includes(ERLANG_STYLE));
    assert(!err.message.includes("\n"));
    assertThrows(
      () => loadCookie({ env: {}, cookieFile: path, create: false }),
      ConfigError,
      `chmod 600 ${path}`,
    );
    chmodSync(path, 0o604);
    assertThrows(() => loadCookie({ env: {}, configDir: dir, create: true }), ConfigError, "chmod");
    chmodSync(path, 0o600);
    assertEquals(loadCookie({ env: {}, configDir: dir, create: true }).cookie, ERLANG_STYLE);
  }),
);

Deno.test(
  "loadCookie() refuses an empty cookie, naming where it came from",
  withTempDir((dir) => {
    assertThrows(
      () => loadCookie({ env: { NODECTL_COOKIE: "" }, configDir: dir, create: true }),
      ConfigError,
      "NODECTL_COOKIE is empty",
    );
    const path = join(dir, "cookie");
    writeFileSync(path, "\n", { mode: 0o600 });
    assertThrows(
      () => loadCookie({ env: {}, configDir: dir, create: true }),
      ConfigError,
      `cookie file ${path} is empty`,
    );
    assertThrows(
      () => loadCookie({ env: {}, cookieFile: path, create: false }),
      ConfigError,
      `cookie file ${path} is empty`,
    );
  }),
);

Deno.test(
  "loadCookie() refuses a multi-line cookie file without echoing it",
  withTempDir((dir) => {
    const path = join(dir, "cookie");
    writeFileSync(path, "FIRSTLINEXXXXXXXXXXX\nSECONDLINE\n", { mode: 0o600 });
    const err = assertThrows(
      () => loadCookie({ env: {}, cookieFile: path, create: false }),
      ConfigError,
      "more than one line",
    );
    assert(!err.message.includes("FIRSTLINE") && !err.message.includes("SECONDLINE"));
  }),
);

Deno.test(
  "loadCookie() without create reports a missing cookie and creates nothing",
  withTempDir((dir) => {
    const configDir = join(dir, "nodectl");
    assertThrows(
      () => loadCookie({ env: {}, configDir, create: false }),
      ConfigError,
      "NODECTL_COOKIE",
    );
    assert(!existsSync(configDir));
    assertThrows(
      () => loadCookie({ env: {}, cookieFile: join(dir, "missing"), create: true }),
      ConfigError,
      `cookie file ${join(dir, "missing")} does not exist`,
    );
    assert(!existsSync(join(dir, "missing")));
  }),
);

Deno.test(
  "loadCookie() leaves an existing config directory's mode alone",
  withTempDir((dir) => {
    const configDir = join(dir, "nodectl");
    mkdirSync(configDir, { mode: 0o755 });
    chmodSync(configDir, 0o755);
    const loaded = loadCookie({ env: {}, configDir, create: true });
    assertEquals(fileMode(configDir), 0o755);
    assertEquals(fileMode(loaded.path!), 0o600);
  }),
);

Deno.test(
  "nodes starting at once with no cookie file all end up with the same cookie",
  withTempDir(async (dir) => {
    const configDir = join(dir, "nodectl");
    const results = await race(
      dir,
      6,
      `
      const { loadCookie } = await import(${JSON.stringify(transportModuleUrl("cookie.ts"))});
      const r = loadCookie({ env: {}, configDir: ${JSON.stringify(configDir)}, create: true });
      return { cookie: r.cookie, created: r.created };
    `,
    ) as { cookie: string; created: boolean }[];
    const cookie = loadCookie({ env: {}, configDir, create: false }).cookie;
    for (const r of results) assertEquals(r.cookie, cookie);
    assertEquals(results.filter((r) => r.created).length, 1);
    assertEquals(readdirSync(configDir), ["cookie"]);
  }),
);
