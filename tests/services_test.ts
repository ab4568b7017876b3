import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  BadArgError,
  ConfigError,
  NodeDownError,
  RemoteError,
  TimeoutError,
  UndefError,
} from "../errors.ts";
import { createLogger, formatTime, isLogLevel, type Logger } from "../services/log.ts";
import { PrivateAPI } from "../services/private_api.ts";
import {
  DEFAULT_HTTP_HOST,
  DEFAULT_HTTP_PORT,
  type HealthStatus,
  type PublicServiceHandle,
  startPublicService,
} from "../services/public_service.ts";
import { NoSuchSecretError, SECRET_SERVICE, secretService } from "../services/secret_service.ts";
import { SecretStore } from "../services/secret_store.ts";
import type { CallContext, Caller, ServiceDefinition } from "../services/types.ts";
import {
  assert,
  assertEquals,
  assertMatch,
  assertRejects,
  assertThrows,
} from "./support/assert.ts";

// ---------------------------------------------------------------------------------------------
// helpers

const LOCAL: CallContext = { caller: "local" };

function peer(name: string, fingerprint = `SHA256:${name}-fp`): CallContext {
  return { caller: { name, publicKey: new Uint8Array(32), fingerprint, hidden: false } };
}

/** A store in a fresh temporary directory, closed and removed by `dispose`. */
function tempStore(): { store: SecretStore; dispose: () => void } {
  const dir = mkdtempSync(join(tmpdir(), "nodectl-services-"));
  const store = SecretStore.open(dir);
  return {
    store,
    dispose: () => {
      store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Calls a function of `service` the way the node would, honouring its allow map. */
function invoke(
  service: ServiceDefinition,
  ctx: CallContext,
  fn: string,
  args: unknown[],
): unknown {
  const f = service.functions[fn];
  if (!f) throw new UndefError(`no function ${fn}`);
  return f(ctx, ...args);
}

/** A logger that remembers its lines. */
function memoryLog(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  return { log: createLogger({ level: "debug", write: (l) => lines.push(l) }), lines };
}

// ---------------------------------------------------------------------------------------------
// log

Deno.test("the logger writes seed-style lines: HH:MM:SS.mmm, the level in brackets, the message", () => {
  const lines: string[] = [];
  const at = new Date(2024, 0, 2, 17, 7, 59, 889);
  const log = createLogger({ level: "debug", write: (l) => lines.push(l), now: () => at });
  log.info("SecretService started");
  log.warn("w");
  log.error("e");
  log.debug("d");
  assertEquals(lines, [
    "17:07:59.889 [info]  SecretService started",
    "17:07:59.889 [warn]  w",
    "17:07:59.889 [error] e",
    "17:07:59.889 [debug] d",
  ]);
  assertEquals(formatTime(new Date(2024, 0, 2, 3, 4, 5, 6)), "03:04:05.006");
});

Deno.test("the logger drops lines below its level and keeps every entry on one line", () => {
  const lines: string[] = [];
  const log = createLogger({ level: "warn", write: (l) => lines.push(l) });
  log.debug("hidden");
  log.info("hidden");
  log.warn("two\nlines\u001b[31m");
  assertEquals(lines.length, 1);
  assertMatch(lines[0] ?? "", /^\d\d:\d\d:\d\d\.\d{3} \[warn\] {2}two\\nlines\\x1b\[31m$/);
  const silent: string[] = [];
  createLogger({ level: "silent", write: (l) => silent.push(l) }).error("nothing");
  assertEquals(silent, []);
  assertEquals(isLogLevel("info"), true);
  assertEquals(isLogLevel("verbose"), false);
});

// ---------------------------------------------------------------------------------------------
// SecretService

Deno.test("get_data() returns 'secret data' and get_data(key) the secret under key", () => {
  const { store, dispose } = tempStore();
  try {
    const service = secretService(store);
    assertEquals(SECRET_SERVICE, "SecretService");
    assertEquals(Object.keys(service.functions).sort(), ["get_data", "set_secret"]);
    assertEquals(invoke(service, peer("public@host"), "get_data", []), "secret data");
    store.set("api", "token-1");
    assertEquals(invoke(service, peer("public@host"), "get_data", ["api"]), "token-1");
    assertEquals(invoke(service, LOCAL, "get_data", ["default"]), "secret data");
  } finally {
    dispose();
  }
});

Deno.test("get_data(key) for an unknown key throws 'no secret under key' naming it", () => {
  const { store, dispose } = tempStore();
  try {
    const service = secretService(store);
    const err = assertThrows(
      () => invoke(service, peer("public@host"), "get_data", ["nope"]),
      NoSuchSecretError,
      "no secret under key 'nope'",
    );
    assertEquals(err.key, "nope");
  } finally {
    dispose();
  }
});

Deno.test("get_data rejects wrong argument types and counts with BadArgError", () => {
  const { store, dispose } = tempStore();
  try {
    const service = secretService(store);
    const ctx = peer("public@host");
    assertThrows(() => invoke(service, ctx, "get_data", [42]), BadArgError, "got a number");
    assertThrows(() => invoke(service, ctx, "get_data", [null]), BadArgError, "got null");
    assertThrows(() => invoke(service, ctx, "get_data", [["a"]]), BadArgError, "got an array");
    assertThrows(() => invoke(service, ctx, "get_data", [""]), BadArgError, "1 to");
    assertThrows(() => invoke(service, ctx, "get_data", ["a", "b"]), BadArgError, "got 2");
  } finally {
    dispose();
  }
});

Deno.test("set_secret is allowed for local callers and returns the new version", () => {
  const { store, dispose } = tempStore();
  try {
    const service = secretService(store);
    assertEquals(service.allow?.["set_secret"], ["local"]);
    assertEquals(service.allow?.["get_data"], undefined);
    assertEquals(invoke(service, LOCAL, "set_secret", ["default", "rotated"]), 2);
    assertEquals(invoke(service, LOCAL, "set_secret", ["new", "n"]), 1);
    assertEquals(invoke(service, peer("public@host"), "get_data", []), "rotated");
  } finally {
    dispose();
  }
});

Deno.test("set_secret is refused for peers not on the admin allowlist and changes nothing", () => {
  const { store, dispose } = tempStore();
  try {
    const service = secretService(store, { adminAllow: ["admin@host", "SHA256:trusted"] });
    assertEquals(service.allow?.["set_secret"], ["local", "admin@host", "SHA256:trusted"]);
    const err = assertThrows(
      () => invoke(service, peer("public@host"), "set_secret", ["default", "evil"]),
      UndefError,
      "not allowed for public@host",
    );
    assertMatch(err.message, /admin allowlist/);
    // A peer calling itself "local" is still a peer.
    assertThrows(() => invoke(service, peer("local"), "set_secret", ["k", "v"]), UndefError);
    // A plain session has no fingerprint; an empty allowlist entry must not match it.
    const open = secretService(store, { adminAllow: [""] });
    assertThrows(() => invoke(open, peer("public@host", ""), "set_secret", ["k", "v"]), UndefError);
    assertEquals(store.get(), "secret data");
    assertEquals(store.keys(), ["default"]);
  } finally {
    dispose();
  }
});

Deno.test("set_secret is allowed for a peer allowlisted by node name or by key fingerprint", () => {
  const { store, dispose } = tempStore();
  try {
    const service = secretService(store, { adminAllow: ["admin@host", "SHA256:trusted"] });
    assertEquals(invoke(service, peer("admin@host"), "set_secret", ["k", "one"]), 1);
    assertEquals(
      invoke(service, peer("other@host", "SHA256:trusted"), "set_secret", ["k", "two"]),
      2,
    );
    assertEquals(store.get("k"), "two");
  } finally {
    dispose();
  }
});

Deno.test("set_secret rejects wrong argument types and counts with BadArgError", () => {
  const { store, dispose } = tempStore();
  try {
    const service = secretService(store);
    const set = (...args: unknown[]) => () => invoke(service, LOCAL, "set_secret", args);
    assertThrows(set("k"), BadArgError, "two arguments");
    assertThrows(set("k", "v", "x"), BadArgError, "two arguments");
    assertThrows(set(1, "v"), BadArgError, "the key must be a string, got a number");
    assertThrows(set("k", 1), BadArgError, "the value must be a string, got a number");
    assertThrows(set("k", new Uint8Array(2)), BadArgError, "got bytes");
    assertThrows(set("k", { v: 1 }), BadArgError, "got an object");
    assertThrows(set("", "v"), BadArgError, "1 to");
    assertEquals(store.keys(), ["default"]);
  } finally {
    dispose();
  }
});

Deno.test("set_secret logs the key, version and caller but never the value", () => {
  const { store, dispose } = tempStore();
  try {
    const { log, lines } = memoryLog();
    const service = secretService(store, { adminAllow: ["admin@host"], log });
    invoke(service, peer("admin@host", "SHA256:abc"), "set_secret", ["api", "hunter2-value"]);
    assertEquals(lines.length, 1);
    assertMatch(
      lines[0] ?? "",
      /\[info\] {2}secret 'api' set to version 1 by admin@host \(SHA256:abc\)$/,
    );
    assertEquals(lines.some((l) => l.includes("hunter2")), false);
  } finally {
    dispose();
  }
});

// ---------------------------------------------------------------------------------------------
// PrivateAPI

Deno.test("PrivateAPI.getData calls SecretService.get_data with no argument or the key", async () => {
  const calls: unknown[][] = [];
  const caller: Caller = (service, fn, args) => {
    calls.push([service, fn, args]);
    return Promise.resolve("secret data");
  };
  const api = new PrivateAPI(caller, "private@host");
  assertEquals(await api.getData(), "secret data");
  assertEquals(await api.getData("api"), "secret data");
  assertEquals(calls, [
    [SECRET_SERVICE, "get_data", []],
    [SECRET_SERVICE, "get_data", ["api"]],
  ]);
  assertEquals(api.node, "private@host");
});

Deno.test("PrivateAPI.getData passes call errors through and refuses a non-string reply", async () => {
  const down = new NodeDownError("private@host is down", "private@host");
  const failing = new PrivateAPI(() => Promise.reject(down), "private@host");
  const err = await assertRejects(() => failing.getData(), NodeDownError);
  assert(err === down, "the caller's error is passed through unchanged");
  const odd = new PrivateAPI(() => Promise.resolve(42), "private@host");
  await assertRejects(
    () => odd.getData(),
    BadArgError,
    "private@host answered SecretService.get_data with a number, expected a string",
  );
});

Deno.test("PrivateAPI reaches the real SecretService through an in-process caller", async () => {
  const { store, dispose } = tempStore();
  try {
    const service = secretService(store);
    const caller: Caller = (name, fn, args) =>
      name === SECRET_SERVICE
        ? Promise.resolve().then(() => invoke(service, peer("public@host"), fn, args))
        : Promise.reject(new Error(`no service ${name}`));
    const api = new PrivateAPI(caller, "private@host");
    assertEquals(await api.getData(), "secret data");
    await assertRejects(() => api.getData("missing"), NoSuchSecretError, "'missing'");
  } finally {
    dispose();
  }
});

// ---------------------------------------------------------------------------------------------
// PublicService

interface Fixture {
  service: PublicServiceHandle;
  base: string;
  lines: string[];
}

async function withPublic(
  setup: {
    getData?: (key?: string) => Promise<string>;
    checkHealth?: () => Promise<HealthStatus>;
    healthTimeoutMs?: number;
  },
  fn: (f: Fixture) => Promise<void>,
): Promise<void> {
  const { log, lines } = memoryLog();
  const service = await startPublicService({
    http: { host: "127.0.0.1", port: 0 },
    api: { getData: setup.getData ?? (() => Promise.resolve("secret data")) },
    privateNode: "private@host",
    checkHealth: setup.checkHealth ?? (() => Promise.resolve({ ok: true })),
    log,
    ...(setup.healthTimeoutMs === undefined ? {} : { healthTimeoutMs: setup.healthTimeoutMs }),
  });
  try {
    await fn({ service, base: `http://127.0.0.1:${service.port}`, lines });
  } finally {
    await service.close();
  }
}

async function get(
  url: string,
  init?: RequestInit,
): Promise<{ status: number; body: string; type: string; headers: Headers }> {
  const res = await fetch(url, init);
  const body = await res.text();
  return {
    status: res.status,
    body,
    type: res.headers.get("content-type") ?? "",
    headers: res.headers,
  };
}

Deno.test("PublicService defaults to 127.0.0.1:8080", () => {
  assertEquals(DEFAULT_HTTP_HOST, "127.0.0.1");
  assertEquals(DEFAULT_HTTP_PORT, 8080);
});

Deno.test("GET /data answers 200 text/plain with the secret from the private node", async () => {
  const asked: (string | undefined)[] = [];
  const getData = (key?: string) => {
    asked.push(key);
    return Promise.resolve(key === undefined ? "secret data" : `value of ${key}`);
  };
  await withPublic({ getData }, async ({ base, service, lines }) => {
    assert(service.port > 0, "a real port was bound");
    const r = await get(`${base}/data`);
    assertEquals(r.status, 200);
    assertEquals(r.type, "text/plain; charset=utf-8");
    assertEquals(r.body, "secret data");
    assertEquals(r.headers.get("cache-control"), "no-store");
    const k = await get(`${base}/data?key=api`);
    assertEquals(k.body, "value of api");
    assertEquals(asked, [undefined, "api"]);
    const empty = await get(`${base}/data?key=`);
    assertEquals(empty.status, 400);
    assertEquals(JSON.parse(empty.body).error, "badarg");
    assertEquals(asked.length, 2);
    assertEquals(lines.some((l) => l.includes("secret data") || l.includes("value of")), false);
  });
});

Deno.test("GET /data maps call failures to 502/504 one-line JSON without a stack", async () => {
  const failures: Record<string, Error> = {
    down: new NodeDownError("cannot reach private@host: connection refused", "private@host"),
    slow: new TimeoutError("no reply from private@host within 5000 ms"),
    remote: new RemoteError(
      "no secret under key 'x'",
      "Error: no secret\n    at get_data (x.ts:1:1)",
    ),
    bug: new Error("something odd\n    at somewhere (y.ts:2:2)"),
  };
  const getData = (key?: string) => Promise.reject(failures[key ?? ""]);
  await withPublic({ getData }, async ({ base, lines }) => {
    const cases: [string, number, string, string][] = [
      ["down", 502, "nodedown", "cannot reach private@host: connection refused"],
      ["slow", 504, "timeout", "no reply from private@host within 5000 ms"],
      ["remote", 502, "remote_error", "no secret under key 'x'"],
      ["bug", 502, "internal", "something odd"],
    ];
    for (const [key, status, code, message] of cases) {
      const r = await get(`${base}/data?key=${key}`);
      assertEquals(r.status, status, key);
      assertEquals(r.type, "application/json; charset=utf-8");
      assertEquals(r.body.includes("\n"), false);
      assertEquals(r.body.includes(" at "), false, `no stack in ${r.body}`);
      assertEquals(JSON.parse(r.body), { error: code, message, node: "private@host" });
    }
    assertEquals(lines.filter((l) => l.includes("[warn]") && l.includes("GET /data")).length, 4);
  });
});

Deno.test("GET /healthz answers 200 ok when the private node is reachable, 503 with the reason when not", async () => {
  let health: HealthStatus = { ok: true };
  await withPublic({ checkHealth: () => Promise.resolve(health) }, async ({ base }) => {
    const up = await get(`${base}/healthz`);
    assertEquals(up.status, 200);
    assertEquals(up.body, "ok");
    health = { ok: false, reason: "nodedown: connection refused" };
    const down = await get(`${base}/healthz`);
    assertEquals(down.status, 503);
    assertEquals(down.type, "text/plain; charset=utf-8");
    assertEquals(down.body, "private@host unavailable: nodedown: connection refused");
  });
});

Deno.test("GET /healthz answers 503 when the health check throws or does not answer in time", async () => {
  let mode: "throw" | "hang" = "throw";
  const checkHealth = () =>
    mode === "throw"
      ? Promise.reject(new NodeDownError("private@host: connection refused"))
      : new Promise<HealthStatus>(() => {});
  await withPublic({ checkHealth, healthTimeoutMs: 20 }, async ({ base }) => {
    const thrown = await get(`${base}/healthz`);
    assertEquals(thrown.status, 503);
    assertEquals(thrown.body, "private@host unavailable: private@host: connection refused");
    mode = "hang";
    const hung = await get(`${base}/healthz`);
    assertEquals(hung.status, 503);
    assertMatch(hung.body, /health check took longer than 20 ms/);
  });
});

Deno.test("PublicService answers 404 for other paths and 405 with Allow: GET for other methods", async () => {
  let called = 0;
  const getData = () => {
    called++;
    return Promise.resolve("secret data");
  };
  await withPublic({ getData }, async ({ base }) => {
    for (const path of ["/", "/data/", "/secret", "/healthz/x"]) {
      const r = await get(`${base}${path}`);
      assertEquals(r.status, 404, path);
      assertEquals(JSON.parse(r.body).error, "not_found");
    }
    for (const method of ["POST", "PUT", "DELETE"]) {
      const r = await get(`${base}/data`, { method, body: method === "DELETE" ? null : "x" });
      assertEquals(r.status, 405, method);
      assertEquals(r.headers.get("allow"), "GET");
      assertEquals(r.body.includes("secret data"), false);
    }
    assertEquals(called, 0);
  });
});

Deno.test("PublicService refuses a busy port with a ConfigError and close() is idempotent", async () => {
  const blocker = createServer();
  await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve));
  const port = (blocker.address() as { port: number }).port;
  try {
    const { log, lines } = memoryLog();
    const options = {
      http: { host: "127.0.0.1", port },
      api: { getData: () => Promise.resolve("secret data") },
      privateNode: "private@host",
      checkHealth: () => Promise.resolve({ ok: true as const }),
      log,
    };
    await assertRejects(() => startPublicService(options), ConfigError, "address is in use");
    await assertRejects(
      () => startPublicService({ ...options, http: { port: 70000 } }),
      ConfigError,
      "not valid",
    );
    const service = await startPublicService({ ...options, http: { host: "127.0.0.1", port: 0 } });
    assertMatch(
      lines.join("\n"),
      /\[info\] {2}PublicService listening on http:\/\/127\.0\.0\.1:\d+ \(private node private@host\)/,
    );
    await Promise.all([service.close(), service.close()]);
    await service.close();
    await assertRejects(() => fetch(`http://127.0.0.1:${service.port}/healthz`));
  } finally {
    await new Promise<void>((resolve) => blocker.close(() => resolve()));
  }
});
