/**
 * Section 2 workloads: `Node.call` over encrypted and plain TCP, with the server node in this
 * process or in its own; the compiled binary; idle RSS; the bare-TCP round-trip floor.
 *
 * @module
 */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { Node } from "../node/node.ts";
import { type BenchContext, HOST, MiB } from "./context.ts";
import {
  allCpus,
  CAN_PIN,
  cpuMs,
  IS_DENO,
  pinned,
  pinSelf,
  type Rss,
  rssOf,
  scriptCommand,
  sleep,
  startChild,
  stopChild,
} from "./procs.ts";
import { BENCH_SERVICE, benchNetwork, benchService, type Mode, PSK_ENV, toHex } from "./setup.ts";
import { mbps, median, percentile } from "./stats.ts";
import { echoServer, pingPong } from "./tcp_echo.ts";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = dirname(HERE);
/** The single executable, if built. */
export const COMPILED = join(ROOT, "compiled", "nodectl");
const NODE24 = join(ROOT, "node_modules", ".bin", "node");

/** One node pair's figures (NaN: not measured). */
export interface NodeFigures {
  p50Us: number;
  p99Us: number;
  /** p50 of bare TCP ping-pong to an echo server placed like the node server, same period. */
  floorP50Us: number;
  callsPerSec: number;
  /** MB/s of 1 MiB replies with 1 and with 4 concurrent callers. */
  mb1: number;
  mb4: number;
  /** Median of Node.connect to a running node (TCP connect, handshake, hello). */
  connectUs: number;
  /**
   * CPU time per call with 32 callers: of this process (the client, and the server too when it
   * runs here) and of the server's own process (NaN when it runs here).
   */
  cpuHereUs: number;
  cpuServerUs: number;
}

/** Who to call and how. */
export interface Target {
  /** `name@host:port`. */
  node: string;
  /** A cheap call: service, function, args. */
  small: [string, string, unknown[]];
  /** Whether `Bench.blob` is there. */
  blob: boolean;
  /** The server's process, when it is not this one (for its CPU time). */
  serverPid?: number;
  /** A bare TCP echo server placed like the node server (the floor), if any. */
  echoPort?: number;
}

/** `n` sequential small calls; their round trips in µs. */
export async function sequentialCalls(client: Node, t: Target, n: number): Promise<number[]> {
  const [service, fn, args] = t.small;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await client.call(service, fn, args, { node: t.node });
    out.push((performance.now() - t0) * 1000);
  }
  return out;
}

/** `callers` concurrent loops of small calls for `ms`; the calls made and the seconds taken. */
export async function concurrentCalls(
  client: Node,
  t: Target,
  callers: number,
  ms: number,
): Promise<{ calls: number; seconds: number }> {
  const [service, fn, args] = t.small;
  const t0 = performance.now();
  const end = t0 + ms;
  let calls = 0;
  await Promise.all(Array.from({ length: callers }, async () => {
    while (performance.now() < end) {
      await client.call(service, fn, args, { node: t.node });
      calls++;
    }
  }));
  return { calls, seconds: (performance.now() - t0) / 1000 };
}

/** `total` calls returning 1 MiB, shared by `callers` concurrent loops; MB/s. */
export async function blobCalls(
  client: Node,
  t: Target,
  callers: number,
  total: number,
): Promise<number> {
  let next = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: callers }, async () => {
    while (next++ < total) {
      const r = await client.call(BENCH_SERVICE, "blob", [MiB], { node: t.node });
      if (!(r instanceof Uint8Array) || r.length !== MiB) throw new Error("bad blob reply");
    }
  }));
  return mbps(total * MiB, (performance.now() - t0) / 1000);
}

/** `n` fresh connects to a running node (disconnect first, untimed); µs each. */
export async function connectTimes(client: Node, t: Target, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    await client.disconnect(t.node);
    await sleep(2); // the server finishes its side of the close, untimed
    const t0 = performance.now();
    await client.connect(t.node);
    out.push((performance.now() - t0) * 1000);
  }
  return out;
}

/** The whole node workload against `t`, after a warm-up. */
export async function nodeFigures(
  ctx: BenchContext,
  client: Node,
  t: Target,
): Promise<NodeFigures> {
  const q = ctx.q;
  await sequentialCalls(client, t, q(1000, 100)); // connects, warms up
  // Calls and bare-TCP round trips in alternating batches, so both see the same machine state.
  const lat: number[] = [];
  const floor: number[] = [];
  const pp = t.echoPort === undefined ? undefined : await pingPong(t.echoPort);
  try {
    for (let i = 0; pp && i < q(500, 100); i++) await pp.roundTrip();
    for (let round = 0; round < q(20, 4); round++) {
      lat.push(...await sequentialCalls(client, t, 250));
      for (let i = 0; pp && i < 250; i++) floor.push(await pp.roundTrip());
    }
  } finally {
    pp?.close();
  }
  await concurrentCalls(client, t, 32, q(400, 100));
  const cpu0 = cpuMs(process.pid);
  const server0 = t.serverPid === undefined ? NaN : cpuMs(t.serverPid);
  const { calls, seconds } = await concurrentCalls(client, t, 32, q(2500, 400));
  const callsPerSec = calls / seconds;
  const cpuHereUs = (cpuMs(process.pid) - cpu0) * 1000 / calls;
  const cpuServerUs = t.serverPid === undefined
    ? NaN
    : (cpuMs(t.serverPid) - server0) * 1000 / calls;
  let mb1 = NaN;
  let mb4 = NaN;
  if (t.blob) {
    await blobCalls(client, t, 1, q(6, 2));
    mb1 = await blobCalls(client, t, 1, q(64, 8));
    mb4 = await blobCalls(client, t, 4, q(128, 16));
  }
  await connectTimes(client, t, q(5, 1));
  const conn = await connectTimes(client, t, q(60, 8));
  return {
    p50Us: percentile(lat, 50),
    p99Us: percentile(lat, 99),
    floorP50Us: percentile(floor, 50),
    callsPerSec,
    mb1,
    mb4,
    connectUs: median(conn),
    cpuHereUs,
    cpuServerUs,
  };
}

/** A client-only node (does not listen), with its own config dir. */
export async function clientNode(ctx: BenchContext, mode: Mode): Promise<Node> {
  const name = "benchclient@127.0.0.1";
  return await Node.start({
    name,
    network: benchNetwork(mode, name, ctx.psk, ctx.freshDir("cfg")),
    listen: false,
  });
}

/** A listening node serving `Bench`, in this process. */
export async function serverNode(ctx: BenchContext, mode: Mode, name: string): Promise<Node> {
  const server = await Node.start({
    name,
    network: benchNetwork(mode, name, ctx.psk, ctx.freshDir("cfg")),
    listen: { host: HOST, port: 0 },
    runDir: ctx.freshDir("run"),
  });
  server.register(BENCH_SERVICE, benchService());
  return server;
}

/** Both nodes in this process. */
export async function inProcess(ctx: BenchContext, mode: Mode): Promise<NodeFigures> {
  const name = "benchA@127.0.0.1";
  const server = await serverNode(ctx, mode, name);
  const client = await clientNode(ctx, mode);
  const echo = await startEcho("here");
  try {
    return await nodeFigures(ctx, client, {
      node: `${name}:${server.listenAddress!.port}`,
      small: [BENCH_SERVICE, "echo", ["ping"]],
      blob: true,
      echoPort: echo.port,
    });
  } finally {
    await echo.stop();
    await client.stop();
    await server.stop();
  }
}

/**
 * Starts bench/idle_node.ts in its own process (on CPU 1 when `pin`); resolves with the child,
 * its node port and, with `echo`, the port of its bare TCP echo server.
 */
export async function startIdleNode(
  ctx: BenchContext,
  mode: Mode,
  name: string,
  options: { echo?: boolean; pin?: boolean } = {},
) {
  const script = scriptCommand(join(HERE, "idle_node.ts"), [
    mode,
    name,
    ctx.freshDir("run"),
    ctx.freshDir("cfg"),
    ...(options.echo ? ["--echo"] : []),
  ]);
  const [cmd, args] = options.pin ? pinned(1, script) : script;
  const s = await startChild(cmd, args, {
    env: { ...process.env as Record<string, string>, [PSK_ENV]: toHex(ctx.psk) },
    stream: "stdout",
    ready: /^ready (\d+)(?: (\d+))?$/,
    timeoutMs: 30_000,
  });
  return {
    child: s.child,
    port: Number(s.match[1]),
    echoPort: s.match[2] === undefined ? undefined : Number(s.match[2]),
  };
}

/** Where the two-process layout runs: client and server pinned to CPUs 0 and 1, if possible. */
export const PLACEMENT = CAN_PIN
  ? "client on CPU 0, server on CPU 1 (taskset)"
  : "placed by the scheduler (no taskset)";

/**
 * The server node in its own process (bench/idle_node.ts), the client here; each pinned to its
 * own CPU when possible.
 */
export async function twoProcesses(ctx: BenchContext, mode: Mode): Promise<NodeFigures> {
  const name = "benchS@127.0.0.1";
  pinSelf("0");
  try {
    const { child, port, echoPort } = await startIdleNode(ctx, mode, name, {
      echo: true,
      pin: true,
    });
    const client = await clientNode(ctx, mode);
    try {
      return await nodeFigures(ctx, client, {
        node: `${name}:${port}`,
        small: [BENCH_SERVICE, "echo", ["ping"]],
        blob: true,
        ...(echoPort !== undefined ? { echoPort } : {}),
        ...(child.pid !== undefined ? { serverPid: child.pid } : {}),
      });
    } finally {
      await client.stop();
      await stopChild(child);
    }
  } finally {
    pinSelf(allCpus());
  }
}

/**
 * A bare TCP echo server (the round-trip floor): here, or in its own process (on CPU 1 when
 * pinning is possible, where the server under test runs).
 */
export async function startEcho(
  where: "here" | "process",
): Promise<{ port: number; stop(): Promise<void> }> {
  if (where === "here") {
    const { server, port } = await echoServer();
    return { port, stop: () => new Promise<void>((resolve) => server.close(() => resolve())) };
  }
  const [cmd, args] = pinned(1, scriptCommand(join(HERE, "tcp_echo.ts"), []));
  const s = await startChild(cmd, args, {
    stream: "stdout",
    ready: /^ready (\d+)$/,
    timeoutMs: 30_000,
  });
  return { port: Number(s.match[1]), stop: () => stopChild(s.child) };
}

/** Idle RSS figures (undefined when not measured) and the compiled binary's call figures. */
export interface RssFigures {
  /** bench/idle_node.ts under this runtime. */
  idleNode: Rss | undefined;
  compiled: Rss | undefined;
  bareDeno: Rss | undefined;
  bareNode: Rss | undefined;
  compiledFigures: NodeFigures | undefined;
  notes: string[];
}

async function settledRss(pid: number, settleMs: number): Promise<Rss> {
  await sleep(settleMs);
  return rssOf(pid);
}

/** RSS of a bare runtime idling on a timer. */
async function bareRuntimeRss(cmd: string, args: string[], settleMs: number): Promise<Rss> {
  const s = await startChild(cmd, args, { stream: "stdout", ready: /^ready$/, timeoutMs: 20_000 });
  try {
    return await settledRss(s.child.pid!, settleMs);
  } finally {
    await stopChild(s.child);
  }
}

/**
 * Idle RSS of a node (bench/idle_node.ts under Deno, and compiled/nodectl if built) and of the
 * bare runtimes; then calls against the compiled binary.
 */
export async function rssFigures(
  ctx: BenchContext,
  progress: (what: string) => void,
): Promise<RssFigures> {
  const settle = ctx.q(1500, 500);
  const idleScript = "console.log('ready'); setInterval(() => {}, 1e6);";
  const out: RssFigures = {
    idleNode: undefined,
    compiled: undefined,
    bareDeno: undefined,
    bareNode: undefined,
    compiledFigures: undefined,
    notes: [],
  };
  progress("idle RSS");
  const idle = await startIdleNode(ctx, "secure", "benchidle@127.0.0.1");
  try {
    out.idleNode = await settledRss(idle.child.pid!, settle);
  } finally {
    await stopChild(idle.child);
  }
  if (IS_DENO) out.bareDeno = await bareRuntimeRss(process.execPath, ["eval", idleScript], settle);
  if (existsSync(NODE24)) out.bareNode = await bareRuntimeRss(NODE24, ["-e", idleScript], settle);
  if (!existsSync(COMPILED)) {
    out.notes.push("compiled/nodectl is not built (deno task build): its rows are n/a");
    return out;
  }
  progress("compiled binary: idle RSS, then calls against it");
  const home = ctx.freshDir("home");
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME: home,
    XDG_CONFIG_HOME: join(home, "config"),
    XDG_DATA_HOME: join(home, "data"),
    XDG_STATE_HOME: join(home, "state"),
    XDG_CACHE_HOME: join(home, "cache"),
    XDG_RUNTIME_DIR: ctx.freshDir("xdgrun"),
    NODECTL_COOKIE: ctx.cookie,
  };
  const args = ["serve", "--role", "private", "--sname", "benchidle", "--listen", "127.0.0.1:0"];
  let started;
  pinSelf("0");
  try {
    const [cmd, cmdArgs] = pinned(1, [COMPILED, args]);
    started = await startChild(cmd, cmdArgs, {
      env,
      stream: "stderr",
      ready: /node (\S+) ready on ([\d.]+):(\d+)/,
      timeoutMs: 30_000,
    });
  } catch (err) {
    pinSelf(allCpus());
    out.notes.push(`compiled/nodectl did not start: ${(err as Error).message.slice(0, 300)}`);
    return out;
  }
  try {
    out.compiled = await settledRss(started.child.pid!, settle);
    const [, name, , port] = started.match;
    const client = await clientNode(ctx, "secure");
    const echo = await startEcho("process");
    try {
      out.compiledFigures = await nodeFigures(ctx, client, {
        node: `${name}:${port}`,
        small: ["Node", "services", []],
        blob: false,
        serverPid: started.child.pid!,
        echoPort: echo.port,
      });
    } finally {
      await echo.stop();
      await client.stop();
    }
  } catch (err) {
    out.notes.push(`calls to compiled/nodectl failed: ${(err as Error).message.slice(0, 300)}`);
  } finally {
    await stopChild(started.child);
    pinSelf(allCpus());
  }
  return out;
}
