import { decode as cborgDecode, encode as cborgEncode, type TagDecoder } from "cborg";
import { hostname } from "node:os";
import {
  AuthFailedError,
  BadArgError,
  ConfigError,
  NodectlError,
  NodeDownError,
  NoProcError,
  PayloadTooLargeError,
  ProtocolError,
  RemoteError,
  TimeoutError,
  UndefError,
} from "../errors.ts";
import { Deadlines, timed } from "../node/deadlines.ts";
import type { NodeEvent } from "../node/monitor.ts";
import { parseNodeName } from "../node/names.ts";
import { Node, type NodeOptions } from "../node/node.ts";
import {
  decodeErrorExtra,
  decodeMessage,
  decodeValue,
  encodeCall,
  encodeCast,
  encodeError,
  encodeHello,
  encodeMessage,
  encodeReply,
  encodeValue,
  errorFromWire,
  errorToWire,
  type Message,
} from "../node/protocol.ts";
import type { CallContext } from "../node/services.ts";
import { derivePsk } from "../transport/cookie.ts";
import { generateKeyPair } from "../transport/crypto.ts";
import { memoryDialer } from "../transport/memory_dialer.ts";
import {
  plainNetwork,
  secureNetwork,
  tcpDialer,
  type TransportDialer,
} from "../transport/network.ts";
import type { SessionOptions } from "../transport/session.ts";
import type { Network, Transport } from "../transport/types.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./support/assert.ts";
import {
  type FakeEndpointOptions,
  FakeNetwork,
  type FakeNetworkOptions,
} from "./support/fake_network.ts";

const SHORT = hostname().split(".")[0]!;
const PRIVATE = "private@hosta";
const PUBLIC = "public@hostb";

type StartOptions = Partial<Omit<NodeOptions, "name" | "network">> & {
  endpoint?: FakeEndpointOptions;
};

/** A fake network, a private run directory, and the nodes started on them. */
class Cluster {
  readonly net: FakeNetwork;
  readonly runDir = Deno.makeTempDirSync({ prefix: "nodectl-node-test-" });
  readonly nodes: Node[] = [];

  constructor(options: FakeNetworkOptions = {}) {
    this.net = new FakeNetwork(options);
  }

  async start(name: string, options: StartOptions = {}): Promise<Node> {
    const { endpoint, ...rest } = options;
    const node = await Node.start({
      name,
      network: this.net.endpoint(parseNodeName(name).name, {
        hidden: rest.hidden ?? false,
        ...endpoint,
      }),
      runDir: this.runDir,
      reconnect: { initialMs: 5, maxMs: 40 },
      ...rest,
    });
    this.nodes.push(node);
    return node;
  }

  async close(): Promise<void> {
    await Promise.all(this.nodes.map((n) => n.stop()));
    this.net.close();
    Deno.removeSync(this.runDir, { recursive: true });
  }
}

function test(
  name: string,
  fn: (c: Cluster) => Promise<void>,
  options: FakeNetworkOptions = {},
): void {
  Deno.test(name, async () => {
    const c = new Cluster(options);
    try {
      await fn(c);
    } finally {
      await c.close();
    }
  });
}

/** The seed's private node: SecretService.get_data() → "secret data". */
async function privateNode(c: Cluster, options: StartOptions = {}): Promise<Node> {
  const node = await c.start(PRIVATE, options);
  node.register("SecretService", { functions: { get_data: () => "secret data" } });
  return node;
}

/** Collects events from a monitor into an array as they come. */
function record(iter: AsyncIterableIterator<NodeEvent>): NodeEvent[] {
  const events: NodeEvent[] = [];
  void (async () => {
    for await (const e of iter) events.push(e);
  })();
  return events;
}

/** Waits (bounded) until `cond()` holds. */
async function until(cond: () => boolean, what: string, ms = 3000): Promise<void> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => resolve = r);
  return { promise, resolve };
}

// ---- the seed's step 2 --------------------------------------------------------------------------

test("a service registered on one node is not found on another, even once connected", async (c) => {
  await privateNode(c);
  const pub = await c.start(PUBLIC);
  pub.register("PublicService", { functions: { hello: () => "hi" } });
  const before = await assertRejects(
    () => pub.call("SecretService", "get_data"),
    NoProcError,
    "no service SecretService on public@hostb (it has: PublicService); "
      + "to call another node's service, pass { node }",
  );
  assertEquals([before.node, before.service, before.available], [
    PUBLIC,
    "SecretService",
    ["PublicService"],
  ]);
  await pub.connect(PRIVATE);
  await assertRejects(() => pub.call("SecretService", "get_data"), NoProcError, "public@hostb");
  assertEquals(await pub.call("SecretService", "get_data", [], { node: PRIVATE }), "secret data");
});

test("a call naming a node connects to it: Node.list before and after", async (c) => {
  const priv = await privateNode(c);
  const pub = await c.start(PUBLIC);
  assertEquals(pub.nodes(), []);
  assertEquals(await pub.call("SecretService", "get_data", [], { node: PRIVATE }), "secret data");
  assertEquals(pub.nodes(), [PRIVATE]);
  assertEquals(priv.nodes(), [PUBLIC]);
});

test("a node asked for a service it lacks says which node it is and what it has", async (c) => {
  await privateNode(c);
  const pub = await c.start(PUBLIC);
  const err = await assertRejects(
    () => pub.call("Nope", "f", [], { node: PRIVATE }),
    NoProcError,
    "no service Nope on private@hosta (it has: SecretService)",
  );
  assertEquals([err.node, err.service, err.available], [PRIVATE, "Nope", ["SecretService"]]);
  assertEquals(err.code, "noproc");
});

test("calling with the node's own name, or none, stays in process", async (c) => {
  const priv = await privateNode(c);
  assertEquals(await priv.call("SecretService", "get_data"), "secret data");
  assertEquals(await priv.call("SecretService", "get_data", [], { node: PRIVATE }), "secret data");
  assertEquals(
    await priv.call("SecretService", "get_data", [], { node: `${PRIVATE}:4370` }),
    "secret data",
  );
  await priv.connect(PRIVATE);
  assertEquals(priv.nodes(), []);
  assertEquals(c.net.connectAttempts(PRIVATE), 0);
});

test("connect() and disconnect() change Node.list on both sides", async (c) => {
  const priv = await privateNode(c);
  const pub = await c.start(PUBLIC);
  const events = record(pub.monitor());
  await pub.connect(PRIVATE);
  assertEquals([pub.nodes(), priv.nodes()], [[PRIVATE], [PUBLIC]]);
  assertEquals(await pub.disconnect(PRIVATE), true);
  await until(() => priv.nodes().length === 0, "private to see the disconnect");
  assertEquals(pub.nodes(), []);
  assertEquals(await pub.disconnect(PRIVATE), false);
  await until(() => events.length === 2, "two events");
  assertEquals(events[0], { type: "nodeup", node: PRIVATE, hidden: false });
  assertEquals(events[1]?.type, "nodedown");
});

test("connections are not transitive", async (c) => {
  const a = await c.start("a@hosta");
  const b = await c.start("b@hostb");
  const cc = await c.start("c@hostc");
  await a.connect("b@hostb");
  await cc.connect("b@hostb");
  assertEquals(a.nodes(), ["b@hostb"]);
  assertEquals(b.nodes(), ["a@hosta", "c@hostc"]);
  assertEquals(cc.nodes(), ["b@hostb"]);
});

// ---- errors -------------------------------------------------------------------------------------

test("only declared functions are callable; anything else is UndefError", async (c) => {
  const priv = await c.start(PRIVATE);
  priv.register("SecretService", {
    functions: { get_data: () => "secret data", put: (_ctx, v) => v },
  });
  const pub = await c.start(PUBLIC);
  for (const fn of ["nope", "constructor", "toString", "__proto__", "hasOwnProperty"]) {
    const err = await assertRejects(
      () => pub.call("SecretService", fn, [], { node: PRIVATE }),
      UndefError,
      `SecretService on private@hosta has no function '${fn}' (it has: get_data, put)`,
    );
    assertEquals(err.code, "undef");
  }
  await assertRejects(() => priv.call("SecretService", "nope"), UndefError, "has no function");
});

test("an allowlist admits listed peer names, key fingerprints and 'local' only", async (c) => {
  const priv = await c.start(PRIVATE);
  priv.register("SecretService", {
    functions: {
      get_data: () => "secret data",
      by_key: () => "by key",
      whoami: (ctx: CallContext) => ctx.caller === "local" ? "local" : ctx.caller.name,
    },
    allow: { get_data: [PUBLIC], by_key: ["SHA256:fake-other@hostc", "local"] },
  });
  const pub = await c.start(PUBLIC);
  const other = await c.start("other@hostc");
  assertEquals(await pub.call("SecretService", "get_data", [], { node: PRIVATE }), "secret data");
  assertEquals(await pub.call("SecretService", "whoami", [], { node: PRIVATE }), PUBLIC);
  const refused = await assertRejects(
    () => other.call("SecretService", "get_data", [], { node: PRIVATE }),
    UndefError,
    "SecretService.get_data on private@hosta refuses other@hostc: not in its allowlist",
  );
  assertEquals(refused.code, "undef");
  assertEquals(await other.call("SecretService", "by_key", [], { node: PRIVATE }), "by key");
  await assertRejects(
    () => pub.call("SecretService", "by_key", [], { node: PRIVATE }),
    UndefError,
    "refuses public@hostb",
  );
  await assertRejects(
    () => priv.call("SecretService", "get_data"),
    UndefError,
    "refuses local callers",
  );
  assertEquals(await priv.call("SecretService", "by_key"), "by key");
  assertEquals(await priv.call("SecretService", "whoami"), "local");
});

test("a service none of whose functions a peer may call is not listed to it", async (c) => {
  const priv = await c.start(PRIVATE);
  priv.register("Open", { functions: { f: () => 1 } });
  priv.register("Closed", { functions: { f: () => 1 }, allow: { f: ["someone@else"] } });
  const pub = await c.start(PUBLIC);
  const err = await assertRejects(
    () => pub.call("X", "f", [], { node: PRIVATE }),
    NoProcError,
    "(it has: Open)",
  );
  assertEquals(err.available, ["Open"]);
});

test("a remote function that throws gives RemoteError with its message and remote stack", async (c) => {
  const priv = await c.start(PRIVATE);
  priv.register("SecretService", {
    functions: {
      fail: () => {
        throw new TypeError("boom");
      },
      reject: () => Promise.reject("a string"),
    },
  });
  const pub = await c.start(PUBLIC);
  const err = await assertRejects(
    () => pub.call("SecretService", "fail", [], { node: PRIVATE }),
    RemoteError,
    "SecretService.fail on private@hosta threw TypeError: boom",
  );
  assertEquals(err.code, "remote_error");
  assert(err.remoteStack?.includes("TypeError: boom"), err.remoteStack);
  assert(err.remoteStack?.includes("    at "), "a stack trace");
  await assertRejects(
    () => pub.call("SecretService", "reject", [], { node: PRIVATE }),
    RemoteError,
    "threw Error: a string",
  );
  await assertRejects(() => priv.call("SecretService", "fail"), RemoteError, "threw TypeError");
});

test("a function's value, promise or thenable is the reply, in process or remote", async (c) => {
  const priv = await c.start(PRIVATE);
  priv.register("S", {
    functions: {
      value: () => "v",
      promise: async () => await Promise.resolve("p"),
      thenable: () => ({ then: (resolve: (v: unknown) => void) => resolve("t") }),
      none: () => {},
      rejectsLater: () => ({ then: (_: unknown, reject: (e: unknown) => void) => reject("later") }),
    },
  });
  const pub = await c.start(PUBLIC);
  for (const caller of [priv, pub]) {
    const node = PRIVATE;
    assertEquals(await caller.call("S", "value", [], { node }), "v");
    assertEquals(await caller.call("S", "promise", [], { node }), "p");
    assertEquals(await caller.call("S", "thenable", [], { node }), "t");
    assertEquals(await caller.call("S", "none", [], { node }), undefined);
    await assertRejects(
      () => caller.call("S", "rejectsLater", [], { node }),
      RemoteError,
      "S.rejectsLater on private@hosta threw Error: later",
    );
  }
});

test("error codes cross the wire and become the same class", async (c) => {
  const thrown: NodectlError[] = [
    new BadArgError("bad argument x"),
    new ConfigError("bad config"),
    new UndefError("no such thing"),
    new TimeoutError("too slow"),
    new NodeDownError("far away is down", "far@away"),
    new PayloadTooLargeError("too big"),
    new ProtocolError("nonsense"),
    new AuthFailedError("wrong cookie", "cookie_mismatch", "remote"),
    new NoProcError("no proc here", "far@away", "Svc", ["A", "B"]),
    new RemoteError("nested failure", "Error: nested\n    at somewhere"),
  ];
  const priv = await c.start(PRIVATE);
  priv.register("Thrower", {
    functions: {
      throw: (_ctx, i) => {
        throw thrown[i as number];
      },
    },
  });
  const pub = await c.start(PUBLIC);
  for (const [i, original] of thrown.entries()) {
    const err = await assertRejects(() => pub.call("Thrower", "throw", [i], { node: PRIVATE }));
    assertEquals(err.constructor, original.constructor);
    assertEquals((err as NodectlError).code, original.code);
    assertEquals(err.message, original.message);
    assertEquals((err as NodectlError).exitCode, original.exitCode);
  }
  const down = errorFromWire(errorToWire(thrown[4])) as NodeDownError;
  assertEquals(down.node, "far@away");
  const auth = errorFromWire(errorToWire(thrown[7])) as AuthFailedError;
  assertEquals([auth.reason, auth.refusedBy], ["cookie_mismatch", "remote"]);
  const noproc = errorFromWire(errorToWire(thrown[8])) as NoProcError;
  assertEquals([noproc.node, noproc.service, noproc.available], ["far@away", "Svc", ["A", "B"]]);
  const remote = errorFromWire(errorToWire(thrown[9])) as RemoteError;
  assertEquals(remote.remoteStack, "Error: nested\n    at somewhere");
  const unknown = errorFromWire({ code: "martian", message: "?", extra: {} });
  assert(unknown instanceof RemoteError && unknown.message.includes("unknown error code martian"));
});

test(
  "arguments too large for a session give PayloadTooLargeError; the session survives",
  async (c) => {
    const priv = await c.start(PRIVATE);
    priv.register("Echo", {
      functions: { echo: (_ctx, v) => v, big: () => new Uint8Array(4096) },
    });
    const pub = await c.start(PUBLIC);
    const err = await assertRejects(
      () => pub.call("Echo", "echo", [new Uint8Array(4096)], { node: PRIVATE }),
      PayloadTooLargeError,
      "arguments of Echo.echo for private@hosta are too large",
    );
    assertEquals(err.code, "payload_too_large");
    await assertRejects(
      () => pub.call("Echo", "big", [], { node: PRIVATE }),
      PayloadTooLargeError,
      "the reply of Echo.big on private@hosta is too large",
    );
    assertEquals(await pub.call("Echo", "echo", ["small"], { node: PRIVATE }), "small");
    assertEquals(pub.nodes(), [PRIVATE]);
  },
  { maxMessageSize: 1024 },
);

test("arguments that cannot be encoded fail with BadArgError before connecting", async (c) => {
  await c.start(PRIVATE);
  const pub = await c.start(PUBLIC);
  await assertRejects(
    () => pub.call("S", "f", [new Date()], { node: PRIVATE }),
    BadArgError,
    "arguments of S.f cannot be encoded: a Date cannot be sent",
  );
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  await assertRejects(
    () => pub.call("S", "f", [cyclic], { node: PRIVATE }),
    BadArgError,
    "contains itself",
  );
  await assertRejects(
    () => pub.call("S", "f", [() => 1], { node: PRIVATE }),
    BadArgError,
    "a function cannot be sent",
  );
  await assertRejects(
    () => pub.call("S", "f", "nope" as unknown as unknown[], { node: PRIVATE }),
    BadArgError,
    "must be an array",
  );
  assertEquals(pub.nodes(), []);
  assertEquals(c.net.connectAttempts(PUBLIC), 0);
});

test("a reply that cannot be encoded gives the caller BadArgError", async (c) => {
  const priv = await c.start(PRIVATE);
  priv.register("S", { functions: { now: () => new Date() } });
  const pub = await c.start(PUBLIC);
  await assertRejects(
    () => pub.call("S", "now", [], { node: PRIVATE }),
    BadArgError,
    "the reply of S.now on private@hosta cannot be encoded: a Date cannot be sent",
  );
});

test("undecodable or non-array arguments from a peer are answered with badarg", async (c) => {
  const priv = await c.start(PRIVATE);
  let ran = false;
  priv.register("S", {
    functions: {
      f: () => {
        ran = true;
      },
    },
  });
  const raw = await c.net.endpoint("raw@hostr").connect({ host: "hosta", port: 4370 }, {
    expectedName: PRIVATE,
  });
  const it = raw[Symbol.asyncIterator]();
  await raw.send(encodeMessage({ type: "hello", creation: "r1", hidden: false }));
  assertEquals((decodeMessage((await it.next()).value) as { type: string }).type, "hello");
  await raw.send(encodeMessage({
    type: "call",
    id: 7,
    service: "S",
    fn: "f",
    args: new Uint8Array([0xff, 0x01]),
  }));
  const reply = decodeMessage((await it.next()).value);
  assert(reply.type === "error" && reply.id === 7 && reply.code === "badarg", String(reply));
  assert(reply.message.includes("arguments of S.f sent to private@hosta cannot be decoded"));
  await raw.send(
    encodeMessage({ type: "call", id: 8, service: "S", fn: "f", args: encodeValue(1) }),
  );
  const second = decodeMessage((await it.next()).value);
  assert(second.type === "error" && second.code === "badarg" && second.message.includes("array"));
  assertEquals(ran, false);
  await raw.close();
});

test("a peer that does not start with hello, or sends garbage, is disconnected", async (c) => {
  const priv = await c.start(PRIVATE);
  priv.register("S", { functions: { f: () => 1 } });
  const raw = await c.net.endpoint("raw@hostr").connect({ host: "hosta", port: 4370 }, {
    expectedName: PRIVATE,
  });
  await raw.send(
    encodeMessage({ type: "call", id: 1, service: "S", fn: "f", args: encodeValue([]) }),
  );
  const reason = await raw.closed;
  assertEquals(reason.kind, "remote");
  assert(reason.message.includes("raw@hostr broke the protocol: expected hello, got call"));
  const raw2 = await c.net.endpoint("raw2@hostr").connect({ host: "hosta", port: 4370 }, {
    expectedName: PRIVATE,
  });
  await raw2.send(new Uint8Array([1, 2, 3]));
  assert((await raw2.closed).message.includes("malformed message"));
  assertEquals(priv.nodes(), []);
});

test("invalid node names in calls are ConfigErrors", async (c) => {
  const pub = await c.start(PUBLIC);
  await assertRejects(
    () => pub.call("S", "f", [], { node: "x y" }),
    ConfigError,
    "invalid node name 'x y'",
  );
  await assertRejects(() => pub.connect("a@b@c"), ConfigError, "more than one '@'");
  await assertRejects(() => pub.call("S", "f", [], { timeoutMs: 0 }), ConfigError, "timeoutMs");
  await assertRejects(
    () => Node.start({ name: "bad name", network: c.net.endpoint("x@y") }),
    ConfigError,
    "invalid node name 'bad name'",
  );
  await assertRejects(
    () =>
      Node.start({
        name: "x@y",
        network: c.net.endpoint("x@y"),
        listen: false,
        reconnect: { initialMs: 10, maxMs: 5 },
      }),
    ConfigError,
    "reconnect.initialMs must not exceed reconnect.maxMs",
  );
  assertThrows(
    () => pub.register("bad name", { functions: {} }),
    ConfigError,
    "invalid service name 'bad name'",
  );
  pub.register("S", { functions: {} });
  assertThrows(() => pub.register("S", { functions: {} }), ConfigError, "already registered");
  assertThrows(
    () => pub.register("T", { functions: {}, allow: { nope: [] } }),
    ConfigError,
    "allow names 'nope'",
  );
  assertEquals(pub.registered(), ["S"]);
  assertEquals(pub.unregister("S"), true);
  assertEquals(pub.registered(), []);
});

test("an unreachable node gives NodeDownError naming it", async (c) => {
  const pub = await c.start(PUBLIC);
  const err = await assertRejects(
    () => pub.call("S", "f", [], { node: "ghost@hostz" }),
    NodeDownError,
    "cannot reach ghost@hostz at hostz:4370: connection refused",
  );
  assertEquals(err.node, "ghost@hostz");
  assertEquals(pub.nodes(), []);
});

test("a node answering under another name fails the call with AuthFailedError", async (c) => {
  await privateNode(c);
  const pub = await c.start(PUBLIC);
  const err = await assertRejects(
    () => pub.call("S", "f", [], { node: "impostor@hosta" }),
    AuthFailedError,
    "hosta:4370 is private@hosta, not impostor@hosta",
  );
  assertEquals(err.reason, "name_mismatch");
});

// ---- deadlines ----------------------------------------------------------------------------------

test("one 1 s deadline covers a connect that never completes: TimeoutError at ~1 s", async (c) => {
  const pub = await c.start(PUBLIC);
  c.net.blackhole("hosta:4370");
  const started = Date.now();
  await assertRejects(
    () => pub.call("S", "f", [], { node: PRIVATE, timeoutMs: 1000 }),
    TimeoutError,
    "call S.f on private@hosta timed out after 1000 ms while connecting",
  );
  const elapsed = Date.now() - started;
  assert(elapsed >= 950 && elapsed < 3000, `failed after ${elapsed} ms`);
  await assertRejects(
    () => pub.connect(PRIVATE, { timeoutMs: 50 }),
    TimeoutError,
    "connecting to private@hosta timed out after 50 ms",
  );
});

test("a reply that never comes times out with TimeoutError, and the session stays up", async (c) => {
  const priv = await c.start(PRIVATE);
  const never = deferred();
  priv.register("S", { functions: { hang: () => never.promise, ok: () => "ok" } });
  const pub = await c.start(PUBLIC);
  await assertRejects(
    () => pub.call("S", "hang", [], { node: PRIVATE, timeoutMs: 100 }),
    TimeoutError,
    "call S.hang on private@hosta timed out after 100 ms waiting for the reply",
  );
  assertEquals(await pub.call("S", "ok", [], { node: PRIVATE }), "ok");
  await assertRejects(
    () => priv.call("S", "hang", [], { timeoutMs: 20 }),
    TimeoutError,
    "in the local service",
  );
  never.resolve();
});

// ---- connection management ----------------------------------------------------------------------

test("simultaneous connects from both sides settle on one session; nothing in flight fails", async (c) => {
  const a = await c.start("a@hosta");
  const b = await c.start("b@hostb");
  for (const n of [a, b]) n.register("Echo", { functions: { echo: (_ctx, v) => v } });
  const calls: Promise<unknown>[] = [];
  for (let i = 0; i < 20; i++) {
    calls.push(a.call("Echo", "echo", [i], { node: "b@hostb" }));
    calls.push(b.call("Echo", "echo", [-i - 100], { node: "a@hosta" }));
  }
  await Promise.all([a.connect("b@hostb"), b.connect("a@hosta"), ...calls]);
  assertEquals(
    await Promise.all(calls),
    Array.from({ length: 40 }, (_, i) => i % 2 === 0 ? i / 2 : -(i - 1) / 2 - 100),
  );
  assertEquals(c.net.sessionsOpened("a@hosta", "b@hostb"), 2, "both sides did connect");
  await until(() => c.net.openSessions("a@hosta", "b@hostb") === 1, "one session");
  assertEquals([a.nodes(), b.nodes()], [["b@hostb"], ["a@hosta"]]);
  assertEquals(await a.call("Echo", "echo", ["x"], { node: "b@hostb" }), "x");
  assertEquals(await b.call("Echo", "echo", ["y"], { node: "a@hosta" }), "y");
  assertEquals(c.net.openSessions("a@hosta", "b@hostb"), 1);
});

test("simultaneous connects settle on one whichever side's name sorts first", async (c) => {
  const z = await c.start("zed@hosta");
  const y = await c.start("aye@hostb");
  const events = record(z.monitor());
  await Promise.all([z.connect("aye@hostb"), y.connect("zed@hosta")]);
  await until(() => c.net.openSessions("zed@hosta", "aye@hostb") === 1, "one session");
  assertEquals([z.nodes(), y.nodes()], [["aye@hostb"], ["zed@hosta"]]);
  assertEquals(events, [{ type: "nodeup", node: "aye@hostb", hidden: false }]);
});

test("simultaneous connects with random latency always settle on one session", async (c) => {
  for (let round = 0; round < 25; round++) {
    const [na, nb] = [`a${round}@hosta${round}`, `b${round}@hostb${round}`];
    const a = await c.start(na);
    const b = await c.start(nb);
    for (const n of [a, b]) n.register("Echo", { functions: { echo: (_ctx, v) => v } });
    const events = [record(a.monitor()), record(b.monitor())];
    const calls = Array.from({ length: 10 }, (_, i) =>
      i % 2 === 0
        ? a.call("Echo", "echo", [i], { node: nb })
        : b.call("Echo", "echo", [i], { node: na }));
    await Promise.all([a.connect(nb), b.connect(na)]);
    assertEquals(await Promise.all(calls), Array.from({ length: 10 }, (_, i) => i));
    await until(() => c.net.openSessions(na, nb) === 1, `one session in round ${round}`);
    assertEquals([a.nodes(), b.nodes()], [[nb], [na]]);
    assertEquals(await b.call("Echo", "echo", ["after"], { node: na }), "after");
    assertEquals(events.map((e) => e.map((x) => x.type)), [["nodeup"], ["nodeup"]]);
  }
}, { jitterMs: 5 });

test("after a lost connection the node reconnects with backoff", async (c) => {
  const priv = await privateNode(c);
  const pub = await c.start(PUBLIC);
  const events = record(pub.monitor());
  await pub.connect(PRIVATE);
  c.net.reset(PUBLIC, PRIVATE);
  await until(() => events.length >= 3, "nodedown then nodeup");
  assertEquals(events[0], { type: "nodeup", node: PRIVATE, hidden: false });
  const down = events[1]!;
  assert(down.type === "nodedown" && down.reason.kind === "error", JSON.stringify(down));
  assertEquals(events[2], { type: "nodeup", node: PRIVATE, hidden: false });
  assertEquals(pub.nodes(), [PRIVATE]);
  assertEquals(priv.nodes(), [PUBLIC]);
  assertEquals(await pub.call("SecretService", "get_data", [], { node: PRIVATE }), "secret data");
});

test("a node keeps retrying a peer that restarts, and reaches the new incarnation", async (c) => {
  const priv = await privateNode(c);
  const pub = await c.start(PUBLIC);
  const events = record(pub.monitor());
  assertEquals(await pub.call("SecretService", "get_data", [], { node: PRIVATE }), "secret data");
  await priv.stop();
  await until(() => events.length === 2, "nodedown");
  const attempts = c.net.connectAttempts(PUBLIC);
  await until(() => c.net.connectAttempts(PUBLIC) >= attempts + 3, "several retries");
  const again = await c.start(PRIVATE);
  again.register("SecretService", { functions: { get_data: () => "new secret" } });
  await until(() => pub.nodes().length === 1, "reconnected");
  assertEquals(events.map((e) => e.type), ["nodeup", "nodedown", "nodeup"]);
  assertEquals(await pub.call("SecretService", "get_data", [], { node: PRIVATE }), "new secret");
});

test("a peer that restarts unnoticed is recognised by its new incarnation: stale calls fail", async (c) => {
  const priv = await privateNode(c);
  const never = deferred();
  priv.register("Slow", { functions: { hang: () => never.promise } });
  const pub = await c.start(PUBLIC, { reconnect: false });
  pub.register("Slow", { functions: { hang: () => never.promise } });
  await pub.connect(PRIVATE);
  const events = record(priv.monitor());
  const stale = priv.call("Slow", "hang", [], { node: PUBLIC, timeoutMs: 10_000 });
  await new Promise((r) => setTimeout(r, 10));
  // public@hostb loses power: private@hosta is not told, its session stays open.
  c.net.vanish(PUBLIC);
  await pub.stop();
  assertEquals(priv.nodes(), [PUBLIC]);
  const pub2 = await c.start(PUBLIC);
  assert(pub2.creation !== pub.creation);
  assertEquals(await pub2.call("SecretService", "get_data", [], { node: PRIVATE }), "secret data");
  await assertRejects(
    () => stale,
    NodeDownError,
    "public@hostb went down during Slow.hang: public@hostb restarted",
  );
  assertEquals(events.map((e) => e.type), ["nodedown", "nodeup"]);
  assertEquals(priv.nodes(), [PUBLIC]);
  assertEquals(c.net.openSessions(PRIVATE, PUBLIC), 1);
  never.resolve();
});

test("disconnect() stops reconnecting, and asks the peer not to reconnect either", async (c) => {
  const priv = await privateNode(c);
  const pub = await c.start(PUBLIC);
  await pub.connect(PRIVATE);
  await priv.connect(PUBLIC);
  await priv.disconnect(PUBLIC);
  await until(() => pub.nodes().length === 0, "pub sees the disconnect");
  const attempts = c.net.connectAttempts(PUBLIC);
  await new Promise((r) => setTimeout(r, 100));
  assertEquals(c.net.connectAttempts(PUBLIC), attempts);
  assertEquals([pub.nodes(), priv.nodes()], [[], []]);
  assertEquals(await pub.call("SecretService", "get_data", [], { node: PRIVATE }), "secret data");
});

test("a node that was only called by a peer does not reconnect to it", async (c) => {
  const priv = await privateNode(c);
  const pub = await c.start(PUBLIC);
  await pub.connect(PRIVATE);
  await pub.disconnect(PRIVATE);
  await until(() => priv.nodes().length === 0, "disconnect");
  const attempts = c.net.connectAttempts(PRIVATE);
  await new Promise((r) => setTimeout(r, 100));
  assertEquals(c.net.connectAttempts(PRIVATE), attempts);
});

test("a partitioned peer is noticed: nodedown, and its in-flight calls fail with NodeDownError at once", async (c) => {
  const priv = await c.start(PRIVATE);
  const never = deferred();
  priv.register("S", { functions: { slow: () => never.promise } });
  const pub = await c.start(PUBLIC, { reconnect: false });
  const events = record(pub.monitor());
  await pub.connect(PRIVATE);
  const started = Date.now();
  const calls = [1, 2, 3].map(() =>
    pub.call("S", "slow", [], { node: PRIVATE, timeoutMs: 10_000 })
  );
  await new Promise((r) => setTimeout(r, 10));
  c.net.partition(PUBLIC, PRIVATE, { deadAfterMs: 50 });
  for (const call of calls) {
    const err = await assertRejects(
      () => call,
      NodeDownError,
      "private@hosta went down during S.slow: no traffic for 50 ms",
    );
    assertEquals(err.node, PRIVATE);
  }
  const elapsed = Date.now() - started;
  assert(elapsed < 3000, `took ${elapsed} ms, as if waiting for the 10 s deadline`);
  const down = events.find((e) => e.type === "nodedown");
  assert(down?.type === "nodedown" && down.reason.kind === "dead", JSON.stringify(events));
  assertEquals(pub.nodes(), []);
  never.resolve();
});

test("a hard-killed peer fails in-flight calls with NodeDownError at once", async (c) => {
  const priv = await c.start(PRIVATE);
  const never = deferred();
  priv.register("S", { functions: { slow: () => never.promise } });
  const pub = await c.start(PUBLIC, { reconnect: false });
  await pub.connect(PRIVATE);
  const call = pub.call("S", "slow", [], { node: PRIVATE, timeoutMs: 10_000 });
  await new Promise((r) => setTimeout(r, 10));
  c.net.kill(PRIVATE);
  await assertRejects(() => call, NodeDownError, "private@hosta went down during S.slow");
  assertEquals(pub.nodes(), []);
  never.resolve();
});

test("200 concurrent callers get their own replies: none lost, duplicated or mismatched", async (c) => {
  const priv = await c.start(PRIVATE);
  const seen = new Map<number, number>();
  priv.register("Echo", {
    functions: {
      echo: async (_ctx, i, payload) => {
        seen.set(i as number, (seen.get(i as number) ?? 0) + 1);
        await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 20)));
        return { i, payload };
      },
    },
  });
  const pubs = await Promise.all(["p1@h1", "p2@h2"].map((n) => c.start(n)));
  const results = await Promise.all(
    Array.from(
      { length: 200 },
      (_, i) => pubs[i % 2]!.call("Echo", "echo", [i, `payload-${i}`], { node: PRIVATE }),
    ),
  );
  for (const [i, r] of results.entries()) assertEquals(r, { i, payload: `payload-${i}` });
  assertEquals(seen.size, 200);
  assert([...seen.values()].every((n) => n === 1), "each call ran once");
  assertEquals(c.net.openSessions(), 2, "one session per pair of nodes");
});

// ---- values -------------------------------------------------------------------------------------

const SAMPLE = {
  bigints: [0n, 1n, -1n, 2n ** 64n, 2n ** 64n - 1n, -(2n ** 64n) - 1n, 2n ** 200n, -(3n ** 99n)],
  bytes: new Uint8Array([0, 1, 254, 255]),
  empty: new Uint8Array(0),
  map: new Map<unknown, unknown>([
    [1, "one"],
    ["two", 2n],
    [new Uint8Array([7]), new Map([["nested", [null, undefined]]])],
  ]),
  object: { a: 1.5, b: -7, c: "ß✓", d: true, e: false, f: null, g: [1, [2, [3]]] },
  numbers: [Number.MAX_SAFE_INTEGER, -Number.MAX_SAFE_INTEGER, 2 ** 60, 0.1, Infinity, -Infinity],
};

Deno.test("bigints, Uint8Arrays, Maps and objects round-trip through the codec", () => {
  assertEquals(decodeValue(encodeValue(SAMPLE)), SAMPLE);
  const bigs = decodeValue(encodeValue([1n, 2n ** 70n, -5n])) as unknown[];
  assert(bigs.every((b) => typeof b === "bigint"), "bigints stay bigints");
  assert(Number.isNaN(decodeValue(encodeValue(NaN))));
  const typed = decodeValue(encodeValue(new Uint16Array([1, 2])));
  assertEquals(typed, new Uint8Array([1, 0, 2, 0]));
  const proto = decodeValue(encodeValue(JSON.parse('{"__proto__": {"polluted": 1}}'))) as object;
  assertEquals(Object.getPrototypeOf(proto), Object.prototype);
  assertEquals(Object.keys(proto), ["__proto__"]);
  assertEquals(({} as Record<string, unknown>).polluted, undefined);
  assertThrows(() => decodeValue(new Uint8Array([0xd8, 0x63, 0x01])), BadArgError, "tag");
  assertThrows(() => encodeValue(new (class Point {})()), BadArgError, "a Point cannot be sent");
  assertThrows(() => encodeValue(Symbol("s")), BadArgError, "a symbol cannot be sent");
});

test("bigints, Uint8Arrays, Maps and objects round-trip through a remote call", async (c) => {
  const priv = await c.start(PRIVATE);
  priv.register("Echo", { functions: { echo: (_ctx, ...args) => args } });
  const pub = await c.start(PUBLIC);
  assertEquals(await pub.call("Echo", "echo", [SAMPLE, 2n ** 65n], { node: PRIVATE }), [
    SAMPLE,
    2n ** 65n,
  ]);
});

Deno.test("malformed protocol messages are ProtocolErrors", () => {
  for (
    const bad of [
      encodeValue([1]),
      encodeValue({ type: "call", id: -1, service: "S", fn: "f", args: new Uint8Array() }),
      encodeValue({ type: "reply", id: 1 }),
      encodeValue({ type: "hello", creation: 1, hidden: false }),
      encodeValue({ type: "warp" }),
      new Uint8Array([0xff]),
    ]
  ) {
    assertThrows(() => decodeMessage(bad), ProtocolError, "malformed message from peer");
  }
});

// ---- the message codec --------------------------------------------------------------------------

const MESSAGES: Message[] = [
  { type: "hello", creation: "0123456789abcdef", hidden: false },
  { type: "hello", creation: "c", hidden: true, max: 2 ** 32 - 1 },
  { type: "hello", creation: "", hidden: false, max: 0 },
  { type: "call", id: 1, service: "SecretService", fn: "get_data", args: encodeValue([]) },
  { type: "call", id: 2 ** 53 - 1, service: "Ünïcødé", fn: "ƒ✓", args: encodeValue([1n, "x"]) },
  { type: "cast", service: "S", fn: "note", args: encodeValue([{ a: 1 }]) },
  { type: "reply", id: 7, value: encodeValue(new Uint8Array(3000).fill(9)) },
  { type: "reply", id: 0, value: new Uint8Array(0) },
  {
    type: "error",
    id: 9,
    code: "remote_error",
    message: "S.f on a@b threw Error: boom",
    stack: "Error: boom\n    at f",
    extra: encodeValue({}),
  },
  {
    type: "error",
    id: 10,
    code: "noproc",
    message: "no service X",
    extra: encodeValue({ node: "a@b", service: "X", available: ["A"] }),
  },
  { type: "retire" },
  { type: "bye", reconnect: true },
  { type: "bye", reconnect: false },
];

/** Bytes before the value of a message that carries one; undefined for one that does not. */
function headerLength(m: Message, bytes: Uint8Array): number | undefined {
  switch (m.type) {
    case "call":
    case "cast":
      return bytes.length - m.args.length;
    case "reply":
      return bytes.length - m.value.length;
    case "error":
      return bytes.length - m.extra.length;
    default:
      return undefined;
  }
}

Deno.test("every message type round-trips through the message codec", () => {
  for (const m of MESSAGES) assertEquals(decodeMessage(encodeMessage(m)), m);
  // The encoders that take values write the same bytes as encoding the value separately.
  const args = [SAMPLE, "x"];
  assertEquals(
    encodeCall(5, "S", "f", args),
    encodeMessage({ type: "call", id: 5, service: "S", fn: "f", args: encodeValue(args) }),
  );
  assertEquals(
    encodeCast("S", "f", args),
    encodeMessage({ type: "cast", service: "S", fn: "f", args: encodeValue(args) }),
  );
  assertEquals(
    encodeReply(6, SAMPLE, "S", "f", "a@b"),
    encodeMessage({ type: "reply", id: 6, value: encodeValue(SAMPLE) }),
  );
  const wire = errorToWire(new NoProcError("none", "a@b", "X", ["A"]));
  const error = decodeMessage(encodeError(8, wire));
  assert(error.type === "error");
  assertEquals(decodeErrorExtra(error.extra, "S", "f", "a@b"), wire.extra);
  assertEquals(
    decodeMessage(encodeHello("c1", true, 1024)),
    { type: "hello", creation: "c1", hidden: true, max: 1024 },
  );
  assertEquals(decodeMessage(encodeHello("c1", false, undefined)), {
    type: "hello",
    creation: "c1",
    hidden: false,
  });
});

Deno.test("a message cut short in its header, or with bytes after it, is a ProtocolError", () => {
  for (const m of MESSAGES) {
    const bytes = encodeMessage(m);
    const header = headerLength(m, bytes);
    for (let cut = 0; cut < (header ?? bytes.length); cut++) {
      assertThrows(
        () => decodeMessage(bytes.subarray(0, cut)),
        ProtocolError,
        "malformed message from peer",
      );
    }
    if (header === undefined) {
      const longer = new Uint8Array([...bytes, 0]);
      assertThrows(() => decodeMessage(longer), ProtocolError, `1 bytes after a ${m.type}`);
    }
  }
});

Deno.test("a length field that runs past the end of the message is a ProtocolError", () => {
  const call = encodeMessage({ type: "call", id: 1, service: "S", fn: "f", args: encodeValue([]) });
  const service = call.slice();
  new DataView(service.buffer).setUint16(9, 0xffff); // after type and id
  assertThrows(() => decodeMessage(service), ProtocolError, "service name needs 65535 bytes");
  const fn = call.slice();
  new DataView(fn.buffer).setUint16(12, 500);
  assertThrows(() => decodeMessage(fn), ProtocolError, "function name needs 500 bytes");
  const error = encodeMessage({
    type: "error",
    id: 1,
    code: "badarg",
    message: "m",
    extra: encodeValue({}),
  });
  const message = error.slice();
  new DataView(message.buffer).setUint32(10 + 2 + 6, 0xffffffff); // type, id, flags, code
  assertThrows(() => decodeMessage(message), ProtocolError, "error message needs 4294967295");
  const hello = encodeMessage({ type: "hello", creation: "abc", hidden: false });
  hello[3] = 4; // creation length 4, 3 bytes there
  assertThrows(() => decodeMessage(hello), ProtocolError, "hello creation needs 4 bytes, 3 left");
});

Deno.test("unknown message types and flags, and out-of-range fields, are ProtocolErrors", () => {
  const bad: [number[] | Uint8Array, string][] = [
    [[], "message type needs 1 bytes, 0 left"],
    [[0], "unknown type 0"],
    [[8], "unknown type 8"],
    [[0xff], "unknown type 255"],
    [encodeValue({ type: "hello" }), "the peer runs an older nodectl"],
    [[1, 4, 0, 0], "hello flags 4"],
    [[5, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0xa0], "error flags 2"],
    [[7, 2], "bye reconnect 2"],
    [[4, 0, 0x20, 0, 0, 0, 0, 0, 0, 0xf6], "reply id is over 2^53-1"],
    [[3, 0, 2, 0xc3, 0x28, 0, 1, 0x66, 0x80], "service name is not valid UTF-8"],
  ];
  for (const [bytes, why] of bad) {
    assertThrows(() => decodeMessage(new Uint8Array(bytes)), ProtocolError, why);
  }
  const long = "x".repeat(1025);
  const tooLong = new Uint8Array([
    3,
    0,
    0,
    1025 >> 8,
    1025 & 0xff,
    ...new TextEncoder().encode(long),
  ]);
  assertThrows(() => decodeMessage(tooLong), ProtocolError, "function name is over 1024");
  assertThrows(() => encodeCall(1, "S", long, []), BadArgError, "at most 1024");
});

Deno.test("the value codec refuses malformed CBOR with BadArgError, allocating nothing first", () => {
  const bad: [number[], string][] = [
    [[], "ends early"],
    [[0x9f, 0x01, 0xff], "indefinite-length"],
    [[0x01, 0x02], "1 bytes after the end of the value"],
    [[0xa2, 0x61, 0x61, 0x01, 0x61, 0x61, 0x02], "duplicate map key"],
    [[0xd9, 0x01, 0x03, 0xa2, 0x01, 0x01, 0x01, 0x02], "duplicate map key"],
    [[0x5a, 0xff, 0xff, 0xff, 0xff, 0x00], "runs past the end"],
    [[0x9b, 0, 0, 0, 1, 0, 0, 0, 0, 0x01], "runs past the end"],
    [[0xbb, 0, 0, 0, 0, 0x80, 0, 0, 0, 0x01, 0x01], "runs past the end"],
    [[0x62, 0xc3, 0x28], "not valid UTF-8"],
    [[0xc2, 0x61, 0x61], "bignum tag without a byte string"],
    [[0xd9, 0x01, 0x03, 0x80], "tag 259 without a map"],
    [[0xd8, 0x63, 0x01], "tag 99 is not supported"],
    [[0xf0], "simple value 16"],
    [[0x1c], "reserved additional information 28"],
    [[0xfb, 0, 0], "a float64 needs 8 bytes"],
    [[0x81], "runs past the end"],
    [[0xa1, 0x61, 0x61], "ends early"],
  ];
  for (const [bytes, why] of bad) {
    assertThrows(() => decodeValue(new Uint8Array(bytes), "v"), BadArgError, why);
  }
  // Nested past what the stack allows: a BadArgError, not a crash.
  const deep = new Uint8Array(200_001).fill(0x81);
  deep[200_000] = 0;
  assertThrows(() => decodeValue(deep, "deep"), BadArgError, "deep cannot be decoded");
});

Deno.test("the value codec writes and reads standard CBOR: cborg agrees", () => {
  const TAGS: TagDecoder[] = [];
  TAGS[2] = (b: Uint8Array) =>
    BigInt("0x0" + [...b].map((x) => x.toString(16).padStart(2, "0")).join(""));
  TAGS[3] = (b: Uint8Array) => -1n - TAGS[2]!(b);
  TAGS[259] = (m: unknown) => m;
  const plain = {
    a: [1, -1, 23, 24, 255, 256, 65535, 65536, 2 ** 32, -(2 ** 40), 0.5, 1.1, -2.5e300],
    s: ["", "ascii", "ß✓ 😀", "x".repeat(100)],
    b: new Uint8Array([1, 2, 3]),
    n: [null, true, false],
    big: [0n, 255n, 2n ** 64n, -(2n ** 70n)],
  };
  assertEquals(cborgDecode(encodeValue(plain), { tags: TAGS }), plain);
  const map = new Map<unknown, unknown>([[1, "one"], ["k", [2]]]);
  assertEquals(cborgDecode(encodeValue(map), { tags: TAGS, useMaps: true }), map);
  // And what cborg writes (half floats, its own integer forms) reads back.
  const mixed = { f: [0.5, 1.5, 65504, -0.0000610351562, 1e-7, 1.1], i: [0, -24, 2 ** 53 - 1] };
  assertEquals(decodeValue(cborgEncode(mixed)), mixed);
  assertEquals(decodeValue(new Uint8Array([0xf9, 0x7c, 0x00])), Infinity);
  assert(Number.isNaN(decodeValue(new Uint8Array([0xf9, 0x7e, 0x00]))));
  assertEquals(decodeValue(new Uint8Array([0x1b, 0, 0x20, 0, 0, 0, 0, 0, 0])), 2n ** 53n);
  assertEquals(decodeValue(new Uint8Array([0x3b, 0, 0x20, 0, 0, 0, 0, 0, 0])), -(2n ** 53n) - 1n);
});

Deno.test("the value codec copies: decoded bytes share nothing with the message or the input", () => {
  const blob = new Uint8Array(5000).fill(1);
  const small = new Uint8Array([1, 2]);
  const value = { blob, nested: [[small, blob]] };
  const bytes = encodeValue(value);
  blob.fill(2); // the encoded message is a copy
  small[0] = 9;
  const back = decodeValue(bytes) as { blob: Uint8Array; nested: Uint8Array[][] };
  assertEquals(back.blob, new Uint8Array(5000).fill(1));
  assertEquals(back.nested[0]![0], new Uint8Array([1, 2]));
  bytes.fill(0); // and decoded values are copies of the message
  assertEquals(back.nested[0]![1], new Uint8Array(5000).fill(1));
  assertEquals(back.blob.byteLength, back.blob.buffer.byteLength);
});

Deno.test("an encoded message stays intact while many more, small and large, are encoded", () => {
  const first = encodeCall(1, "S", "f", ["first", 1n, new Uint8Array([1, 2, 3])]);
  const copy = first.slice();
  const big = "x".repeat(100_000);
  for (let i = 0; i < 5000; i++) {
    const m = i % 500 === 0
      ? encodeReply(i, [big, new Uint8Array(5000).fill(i & 0xff)], "S", "f", "n@h")
      : encodeCall(i, "S", "f", [i, "y".repeat(i % 300)]);
    if (i % 500 === 0) {
      const back = decodeMessage(m);
      assert(back.type === "reply");
      assertEquals(decodeValue(back.value), [big, new Uint8Array(5000).fill(i & 0xff)]);
    }
  }
  assertEquals(first, copy);
  const failed = () => encodeCall(2, "S", "f", [new Date()]);
  assertThrows(failed, BadArgError, "arguments of S.f cannot be encoded");
  assertEquals(first, copy);
  assertEquals(decodeValue(encodeValue("x")), "x");
  const value = encodeValue({ a: 1 });
  assertEquals(value.byteLength, value.buffer.byteLength); // a value handed out is its own
});

Deno.test("shared parts and deep values encode; a cycle at any depth is refused", () => {
  const shared = { x: 1 };
  assertEquals(decodeValue(encodeValue([shared, shared, { shared }])), [shared, shared, {
    shared,
  }]);
  let deep: unknown = "bottom";
  for (let i = 0; i < 1000; i++) deep = i % 2 ? [deep] : { d: deep };
  assertEquals(decodeValue(encodeValue(deep)), deep);
  for (const depth of [0, 5, 31, 32, 33, 200]) {
    const top: Record<string, unknown> = {};
    let at = top;
    for (let i = 0; i < depth; i++) at = (at.next = {}) as Record<string, unknown>;
    at.back = new Map([[1, [top]]]);
    assertThrows(() => encodeValue(top), BadArgError, "contains itself");
  }
  // A getter that sends while its own object is being encoded does not disturb it.
  const tricky = {
    get inner() {
      return decodeValue(encodeValue({ nested: [1, 2, 3] }));
    },
    after: "x".repeat(50),
  };
  assertEquals(decodeValue(encodeValue(tricky)), {
    inner: { nested: [1, 2, 3] },
    after: "x".repeat(50),
  });
});

test("a reply or error details that cannot be decoded fail only that call, with BadArgError", async (c) => {
  const priv = await c.start(PRIVATE);
  const raw = await c.net.endpoint("raw@hostr").connect({ host: "hosta", port: 4370 }, {
    expectedName: PRIVATE,
  });
  const it = raw[Symbol.asyncIterator]();
  await raw.send(encodeMessage({ type: "hello", creation: "r1", hidden: false }));
  assertEquals(decodeMessage((await it.next()).value).type, "hello");
  await until(() => priv.nodes().includes("raw@hostr"), "the raw peer to be up");
  const answers: Uint8Array[] = [
    new Uint8Array([0xff]),
    encodeValue([1]),
    encodeValue("fine"),
  ];
  const calls = answers.map((_, i) => priv.call("X", `f${i}`, [], { node: "raw@hostr" }));
  for (const [i, answer] of answers.entries()) {
    const call = decodeMessage((await it.next()).value);
    assert(call.type === "call" && call.fn === `f${i}`, call.type);
    await raw.send(
      i === 1
        ? encodeMessage({ type: "error", id: call.id, code: "undef", message: "no", extra: answer })
        : encodeMessage({ type: "reply", id: call.id, value: answer }),
    );
  }
  await assertRejects(
    () => calls[0]!,
    BadArgError,
    "the reply of X.f0 from raw@hostr cannot be decoded",
  );
  await assertRejects(
    () => calls[1]!,
    BadArgError,
    "the error details of X.f1 from raw@hostr are not a map",
  );
  assertEquals(await calls[2], "fine");
  assertEquals(priv.nodes(), ["raw@hostr"]);
  await raw.close();
});

test("a name over 1024 characters fails that call with BadArgError; the session stays up", async (c) => {
  const priv = await privateNode(c);
  const pub = await c.start(PUBLIC);
  assertEquals(await pub.call("SecretService", "get_data", [], { node: PRIVATE }), "secret data");
  await assertRejects(
    () => pub.call("SecretService", "f".repeat(1025), [], { node: PRIVATE }),
    BadArgError,
    "at most 1024",
  );
  assertEquals(await pub.call("SecretService", "get_data", [], { node: PRIVATE }), "secret data");
  assertEquals(priv.nodes(), [PUBLIC]);
});

Deno.test("deadlines fire once, never early, and not at all once removed", async () => {
  const fired: number[] = [];
  const due = new Map<number, number>();
  const list = new Deadlines();
  const removed = timed(() => fired.push(-1));
  list.add(removed, 5);
  for (const ms of [30, 1, 12, 0, 7]) {
    due.set(ms, performance.now() + ms);
    list.add(timed(() => fired.push(ms)), ms);
  }
  list.remove(removed);
  list.remove(removed); // twice is harmless
  // Many in one slot, every other one removed; one removed and filed again.
  const crowd = Array.from({ length: 100 }, (_, i) => timed(() => fired.push(100 + i)));
  for (const t of crowd) list.add(t, 3);
  for (let i = 0; i < 100; i += 2) list.remove(crowd[i]!);
  list.remove(crowd[1]!);
  list.add(crowd[1]!, 9);
  assertEquals(list.size, 55);
  await until(() => fired.length === 55, "every deadline to fire");
  assertEquals(
    [...fired].sort((a, b) => a - b),
    [0, 1, 7, 12, 30, ...Array.from({ length: 50 }, (_, i) => 101 + 2 * i)],
  );
  assertEquals(list.size, 0);
  for (const [ms, at] of due) assert(performance.now() >= at, `${ms} ms fired early`);
});

// ---- casts, hidden nodes, lifecycle ----------------------------------------------------------

test("cast runs the function remotely without a reply; remote failures are not reported", async (c) => {
  const priv = await c.start(PRIVATE);
  const got = deferred<unknown>();
  priv.register("S", { functions: { note: (_ctx, v) => got.resolve(v) } });
  const pub = await c.start(PUBLIC);
  await pub.cast("S", "note", [42n], { node: PRIVATE });
  assertEquals(await got.promise, 42n);
  await pub.cast("Nope", "f", [], { node: PRIVATE });
  await pub.cast("S", "nope", []);
  await assertRejects(() => pub.cast("S", "f", [new Date()], { node: PRIVATE }), BadArgError);
});

test("hidden nodes are left out of Node.list and monitors unless asked for", async (c) => {
  const priv = await privateNode(c);
  const events = record(priv.monitor());
  const all = record(priv.monitor({ hidden: true }));
  const cli = await c.start("cli@hostc", { hidden: true, listen: false });
  assertEquals(await cli.call("SecretService", "get_data", [], { node: PRIVATE }), "secret data");
  assertEquals(priv.nodes(), []);
  assertEquals(priv.nodes({ hidden: true }), ["cli@hostc"]);
  assertEquals(cli.nodes(), []);
  assertEquals(cli.nodes({ hidden: true }), [PRIVATE]);
  await cli.stop();
  await until(() => all.length === 2, "hidden nodeup and nodedown");
  assertEquals(all.map((e) => [e.type, e.node, e.hidden]), [
    ["nodeup", "cli@hostc", true],
    ["nodedown", "cli@hostc", true],
  ]);
  assertEquals(events, []);
  assertEquals(priv.nodes({ hidden: true }), []);
});

test("starting a second node with a name in use fails, naming the pid; after stop it is free", async (c) => {
  const first = await c.start(PRIVATE);
  await assertRejects(
    () => c.start(PRIVATE),
    ConfigError,
    `node name private@hosta is already in use by pid ${Deno.pid}`,
  );
  await first.stop();
  await c.start(PRIVATE);
});

test("nodes on this host are found by name alone through the run directory", async (c) => {
  const priv = await c.start(`private@${SHORT}`);
  priv.register("SecretService", { functions: { get_data: () => "secret data" } });
  const pub = await c.start(`public@${SHORT}`);
  assertEquals(priv.listenAddress?.host, "127.0.0.1");
  assert(priv.listenAddress!.port !== 4370, "a short name gets an ephemeral port");
  const entry = JSON.parse(Deno.readTextFileSync(`${c.runDir}/private.json`));
  assertEquals([entry.name, entry.port, entry.pid], [
    `private@${SHORT}`,
    priv.listenAddress!.port,
    Deno.pid,
  ]);
  assertEquals(await pub.call("SecretService", "get_data", [], { node: "private" }), "secret data");
  assertEquals(pub.nodes(), [`private@${SHORT}`]);
  await assertRejects(
    () => pub.call("SecretService", "get_data", [], { node: "private@localhost" }),
    NodeDownError,
    `no node private@localhost on this host: its 'private' node is private@${SHORT}`,
  );
  await assertRejects(
    () => pub.call("S", "f", [], { node: "nobody" }),
    NodeDownError,
    `cannot reach nobody@${SHORT} at ${SHORT}:4370 (not registered in ${c.runDir}`,
  );
  await priv.stop();
  assertEquals([...Deno.readDirSync(c.runDir)].map((e) => e.name), ["public.json"]);
});

test("a node name with a port is reached on that port", async (c) => {
  const priv = await c.start("private@hosta:4999");
  priv.register("S", { functions: { f: () => "ok" } });
  assertEquals(priv.name, "private@hosta");
  assertEquals(priv.listenAddress, { host: "0.0.0.0", port: 4999 });
  const pub = await c.start(PUBLIC);
  assertEquals(await pub.call("S", "f", [], { node: "private@hosta:4999" }), "ok");
  assertEquals(pub.nodes(), ["private@hosta"]);
});

test("a stopped node refuses calls and ends its monitors; peers see nodedown", async (c) => {
  const priv = await privateNode(c);
  const pub = await c.start(PUBLIC);
  const events = record(priv.monitor());
  const iter = pub.monitor();
  await pub.connect(PRIVATE);
  await pub.stop();
  await pub.stop();
  assertEquals(await iter.next(), {
    done: false,
    value: { type: "nodeup", node: PRIVATE, hidden: false },
  });
  assertEquals((await iter.next()).value?.type, "nodedown");
  assertEquals((await iter.next()).done, true);
  await assertRejects(() => pub.call("S", "f"), NodeDownError, "public@hostb is stopped");
  await until(() => events.length === 2, "nodedown on private");
  assert(
    events[1]?.type === "nodedown" && events[1].reason.message.includes("public@hostb stopped"),
  );
});

// ---- over the real session layer: plain and Noise sessions, in memory and over TCP --------------

const PSK = derivePsk("the node layer's test cookie, long enough to be strong");
const noop = () => {};
const SESSION: SessionOptions = {
  keepaliveIntervalMs: 40,
  deadPeerTimeoutMs: 300,
  maxMessageSize: 2 * 1024 * 1024,
  log: noop,
};

/**
 * A transport that can go silent: while frozen, sends and receipts are dropped, and a close is
 * not passed on (the peer keeps waiting) until it thaws.
 */
class FreezableTransport implements Transport {
  readonly closed: Promise<void>;
  #closeAsked!: () => void;
  constructor(private readonly inner: Transport, private readonly owner: NodeDialer) {
    const asked = new Promise<void>((resolve) => this.#closeAsked = resolve);
    this.closed = Promise.race([inner.closed, asked]);
  }
  get remoteAddress(): string {
    return this.inner.remoteAddress;
  }
  send(message: Uint8Array): Promise<void> {
    return this.owner.frozen ? Promise.resolve() : this.inner.send(message);
  }
  close(): void {
    this.#closeAsked();
    if (this.owner.frozen) this.owner.deferClose(this.inner);
    else this.inner.close();
  }
  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    const it = this.inner[Symbol.asyncIterator]();
    return {
      next: async () => {
        for (;;) {
          const r = await it.next();
          if (r.done || !this.owner.frozen) return r;
        }
      },
    };
  }
}

/** One node's dialer over a shared one: can freeze, counts its open transports. */
class NodeDialer implements TransportDialer {
  open = 0;
  #frozen = false;
  #deferred: Transport[] = [];
  constructor(private readonly inner: TransportDialer) {}
  get frozen(): boolean {
    return this.#frozen;
  }
  set frozen(value: boolean) {
    this.#frozen = value;
    if (!value) { for (const t of this.#deferred.splice(0)) t.close(); }
  }
  deferClose(t: Transport): void {
    this.#deferred.push(t);
  }
  #wrap(t: Transport): Transport {
    this.open++;
    void t.closed.then(() => this.open--);
    return new FreezableTransport(t, this);
  }
  listen(address: { host: string; port: number }, onTransport: (t: Transport) => void) {
    return this.inner.listen(address, (t) => onTransport(this.#wrap(t)));
  }
  async connect(address: { host: string; port: number }, signal?: AbortSignal) {
    return this.#wrap(await this.inner.connect(address, signal));
  }
}

interface Stack {
  readonly label: string;
  /** The name of node `alive` on this stack. */
  name(alive: string): string;
  /** Where node `alive` listens (undefined: the node's default). */
  listen(alive: string): { host: string; port: number } | undefined;
  network(name: string, dialer: NodeDialer, hidden: boolean): Network;
  dialer(): TransportDialer;
}

const memoryName = (alive: string) => `${alive}@host-${alive}`;
const memoryListen = (alive: string) => ({ host: `host-${alive}`, port: 4370 });
const secure = (name: string, dialer: NodeDialer, hidden: boolean) =>
  secureNetwork(dialer, {
    localName: name,
    hidden,
    identity: generateKeyPair(),
    psk: PSK,
    session: SESSION,
    log: noop,
  });

const STACKS: Stack[] = [
  {
    label: "plain sessions in memory",
    name: memoryName,
    listen: memoryListen,
    network: (name, dialer, hidden) =>
      plainNetwork(dialer, { localName: name, hidden, session: SESSION }),
    dialer: memoryDialer,
  },
  {
    label: "Noise sessions in memory",
    name: memoryName,
    listen: memoryListen,
    network: secure,
    dialer: memoryDialer,
  },
  {
    label: "Noise sessions over TCP",
    name: (alive) => `${alive}@localhost`,
    listen: () => undefined,
    network: secure,
    dialer: () => tcpDialer,
  },
];

class RealCluster {
  readonly runDir = Deno.makeTempDirSync({ prefix: "nodectl-node-real-" });
  readonly nodes: Node[] = [];
  readonly dialers = new Map<string, NodeDialer>();
  readonly shared: TransportDialer;
  constructor(readonly stack: Stack) {
    this.shared = stack.dialer();
  }

  async start(alive: string, options: StartOptions = {}): Promise<Node> {
    const name = this.stack.name(alive);
    const dialer = new NodeDialer(this.shared);
    this.dialers.set(name, dialer);
    const listen = this.stack.listen(alive);
    const node = await Node.start({
      name,
      network: this.stack.network(name, dialer, options.hidden ?? false),
      runDir: this.runDir,
      reconnect: { initialMs: 5, maxMs: 40 },
      ...(listen ? { listen } : {}),
      ...options,
    });
    this.nodes.push(node);
    return node;
  }

  async close(): Promise<void> {
    for (const d of this.dialers.values()) d.frozen = false;
    await Promise.all(this.nodes.map((n) => n.stop()));
    await until(() => [...this.dialers.values()].every((d) => d.open === 0), "transports closed");
    Deno.removeSync(this.runDir, { recursive: true });
  }
}

for (const stack of STACKS) {
  const realTest = (name: string, fn: (c: RealCluster) => Promise<void>) =>
    Deno.test(`${name} (${stack.label})`, async () => {
      const c = new RealCluster(stack);
      try {
        await fn(c);
      } finally {
        await c.close();
      }
    });

  realTest(
    "the seed's step 2: local names stay local, a call naming a node connects",
    async (c) => {
      const priv = await c.start("private");
      priv.register("SecretService", { functions: { get_data: () => "secret data" } });
      const pub = await c.start("public");
      await assertRejects(() => pub.call("SecretService", "get_data"), NoProcError, pub.name);
      assertEquals(pub.nodes(), []);
      assertEquals(
        await pub.call("SecretService", "get_data", [], { node: priv.name }),
        "secret data",
      );
      assertEquals([pub.nodes(), priv.nodes()], [[priv.name], [pub.name]]);
      await assertRejects(
        () => pub.call("Nope", "f", [], { node: priv.name }),
        NoProcError,
        `no service Nope on ${priv.name} (it has: SecretService)`,
      );
      await assertRejects(
        () => pub.call("SecretService", "nope", [], { node: priv.name }),
        UndefError,
        "has no function 'nope'",
      );
    },
  );

  realTest(
    "200 concurrent calls, some of them multi-frame, each get their own reply",
    async (c) => {
      const priv = await c.start("private");
      priv.register("Echo", {
        functions: {
          echo: async (_ctx, i, blob) => {
            await new Promise((r) => setTimeout(r, (i as number) % 7));
            return [i, blob];
          },
        },
      });
      const pub = await c.start("public");
      const blob = (i: number) =>
        i % 50 === 0 ? new Uint8Array(200_000).fill(i & 0xff) : new Uint8Array([i & 0xff]);
      const results = await Promise.all(
        Array.from(
          { length: 200 },
          (_, i) => pub.call("Echo", "echo", [i, blob(i)], { node: priv.name, timeoutMs: 20_000 }),
        ),
      );
      for (const [i, r] of results.entries()) {
        assertEquals(r, [i, blob(i)]);
      }
      assertEquals(c.dialers.get(pub.name)?.open, 1, "one transport");
    },
  );

  realTest(
    "values round-trip; a message over the session limit is PayloadTooLargeError",
    async (c) => {
      const priv = await c.start("private");
      priv.register("Echo", { functions: { echo: (_ctx, v) => v } });
      const pub = await c.start("public");
      const value = { ...SAMPLE, big: new Uint8Array(1024 * 1024).fill(7) };
      assertEquals(await pub.call("Echo", "echo", [value], { node: priv.name }), value);
      await assertRejects(
        () => pub.call("Echo", "echo", [new Uint8Array(3 * 1024 * 1024)], { node: priv.name }),
        PayloadTooLargeError,
        `arguments of Echo.echo for ${priv.name} are too large`,
      );
      assertEquals(await pub.call("Echo", "echo", ["still up"], { node: priv.name }), "still up");
    },
  );

  realTest(
    "a peer gone silent is declared dead: in-flight calls fail with NodeDownError",
    async (c) => {
      const priv = await c.start("private");
      const never = deferred();
      priv.register("S", { functions: { hang: () => never.promise } });
      const pub = await c.start("public", { reconnect: false });
      const events = record(pub.monitor());
      await pub.connect(priv.name);
      const started = Date.now();
      const call = pub.call("S", "hang", [], { node: priv.name, timeoutMs: 20_000 });
      await new Promise((r) => setTimeout(r, 20));
      c.dialers.get(priv.name)!.frozen = true;
      const err = await assertRejects(
        () => call,
        NodeDownError,
        `${priv.name} went down during S.hang`,
      );
      assertEquals(err.node, priv.name);
      assert(Date.now() - started < 10_000, "well before the 20 s deadline");
      await until(() => events.some((e) => e.type === "nodedown"), "nodedown");
      const down = events.find((e) => e.type === "nodedown");
      assert(down?.type === "nodedown" && down.reason.kind === "dead", JSON.stringify(down));
      never.resolve();
    },
  );

  realTest("after the peer is declared dead and comes back, the node reconnects", async (c) => {
    const priv = await c.start("private");
    priv.register("SecretService", { functions: { get_data: () => "secret data" } });
    const pub = await c.start("public");
    const events = record(pub.monitor());
    await pub.connect(priv.name);
    const dialer = c.dialers.get(priv.name)!;
    dialer.frozen = true;
    await until(() => events.some((e) => e.type === "nodedown"), "nodedown", 5000);
    dialer.frozen = false;
    await until(() => events.length === 3, "nodeup again", 5000);
    assertEquals(events.map((e) => e.type), ["nodeup", "nodedown", "nodeup"]);
    assertEquals(
      await pub.call("SecretService", "get_data", [], { node: priv.name }),
      "secret data",
    );
  });

  realTest("simultaneous connects settle on one session", async (c) => {
    const a = await c.start("a");
    const b = await c.start("b");
    for (const n of [a, b]) n.register("Echo", { functions: { echo: (_ctx, v) => v } });
    const calls = [
      a.call("Echo", "echo", [1], { node: b.name }),
      b.call("Echo", "echo", [2], { node: a.name }),
    ];
    await Promise.all([a.connect(b.name), b.connect(a.name)]);
    assertEquals(await Promise.all(calls), [1, 2]);
    await until(() => c.dialers.get(a.name)!.open === 1, "one transport left", 5000);
    assertEquals(c.dialers.get(b.name)!.open, 1);
    assertEquals([a.nodes(), b.nodes()], [[b.name], [a.name]]);
    assertEquals(await b.call("Echo", "echo", [3], { node: a.name }), 3);
  });

  realTest(
    "remote errors arrive as their own classes; hidden callers are not listed",
    async (c) => {
      const priv = await c.start("private");
      priv.register("S", {
        functions: {
          fail: () => {
            throw new Error("boom");
          },
          bad: () => {
            throw new BadArgError("bad key");
          },
          who: (ctx: CallContext) => ctx.caller === "local" ? "local" : ctx.caller.name,
        },
      });
      const cli = await c.start("cli", { hidden: true, listen: false });
      const err = await assertRejects(
        () => cli.call("S", "fail", [], { node: priv.name }),
        RemoteError,
        "threw Error: boom",
      );
      assert(err.remoteStack?.includes("boom"));
      await assertRejects(
        () => cli.call("S", "bad", [], { node: priv.name }),
        BadArgError,
        "bad key",
      );
      assertEquals(await cli.call("S", "who", [], { node: priv.name }), cli.name);
      assertEquals(priv.nodes(), []);
      assertEquals(priv.nodes({ hidden: true }), [cli.name]);
    },
  );
}

Deno.test("one 1 s deadline covers a TCP handshake that never completes: TimeoutError at ~1 s", async () => {
  const runDir = Deno.makeTempDirSync({ prefix: "nodectl-node-real-" });
  // Accepts connections and never says a word: the handshake would wait for its own 5 s limit.
  const silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of silent) conns.push(conn);
  })();
  const node = await Node.start({
    name: "public@localhost",
    network: secure("public@localhost", new NodeDialer(tcpDialer), true),
    listen: false,
    runDir,
  });
  try {
    const started = Date.now();
    await assertRejects(
      () =>
        node.call("S", "f", [], {
          node: `private@127.0.0.1:${silent.addr.port}`,
          timeoutMs: 1000,
        }),
      TimeoutError,
      "timed out after 1000 ms while connecting",
    );
    const elapsed = Date.now() - started;
    assert(elapsed >= 950 && elapsed < 3000, `failed after ${elapsed} ms`);
  } finally {
    await node.stop();
    silent.close();
    await accepting.catch(() => {});
    for (const conn of conns) {
      try {
        conn.close();
      } catch { /* closed by the peer */ }
    }
    Deno.removeSync(runDir, { recursive: true });
  }
});

Deno.test("an allowlist entry 'local' admits in-process callers only, never a peer calling itself local", async () => {
  const { ServiceRegistry } = await import("../node/services.ts");
  const registry = new ServiceRegistry("private@host");
  registry.register("Admin", {
    functions: { rotate: () => "rotated" },
    allow: { rotate: ["local", "SHA256:trusted"] },
  });
  assertEquals(await registry.invoke("Admin", "rotate", [], "local"), "rotated");
  const impostor = {
    name: "local",
    publicKey: new Uint8Array(32),
    fingerprint: "SHA256:other",
    hidden: false,
  };
  await assertRejects(() => registry.invoke("Admin", "rotate", [], impostor), UndefError);
  const trusted = { ...impostor, name: "admin@host", fingerprint: "SHA256:trusted" };
  assertEquals(await registry.invoke("Admin", "rotate", [], trusted), "rotated");
});
