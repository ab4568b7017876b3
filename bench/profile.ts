/**
 * Where the time goes: runs one bench workload under the V8 sampling profiler (node:inspector,
 * in-process) and prints self time per function and per source file, plus CPU time per
 * operation of this process (and of the server process, for `remote-*` workloads).
 *
 *     deno run --allow-all bench/profile.ts <workload> [--plain] [--alloc] [--seconds N]
 *       [--out file.cpuprofile]
 *
 * With `--alloc` it samples allocations (bytes allocated, collected or not) instead of CPU.
 *
 * Workloads: calls (sequential small calls), concurrent (32 callers), blob (1 MiB replies),
 * handshake (in-memory initiate/respond), pump (1 MiB messages through a memory NoiseSession
 * pair), tcp-pump (the same over TCP), remote-calls / remote-concurrent / remote-blob (server
 * node in its own process; only this, the client, side is profiled), remote-handshake (TCP
 * connect + handshake + close to bench/session_peer.ts in its own process; initiator profiled).
 *
 * @module
 */
import { writeFileSync } from "node:fs";
import { Session as Inspector } from "node:inspector";
import { dirname, join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import type { Node } from "../node/node.ts";
import { generateKeyPair } from "../transport/crypto.ts";
import { secureNetwork, tcpDialer } from "../transport/network.ts";
import { createContext, HOST, MiB } from "./context.ts";
import {
  blobCalls,
  clientNode,
  concurrentCalls,
  sequentialCalls,
  serverNode,
  startIdleNode,
  type Target,
} from "./node_bench.ts";
import { cpuMs, scriptCommand, startChild, stopChild } from "./procs.ts";
import { SESSION_PEER_NAME } from "./session_peer.ts";
import { BENCH_SERVICE, type Mode, PSK_ENV, toHex } from "./setup.ts";
import { num, table } from "./stats.ts";
import { handshakeConfig, memoryHandshakes, memoryPair, pump, tcpPair } from "./transport_bench.ts";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

interface HeapNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: HeapNode[];
}

const isOwn = (url: string) => /^(transport|node|services|bench)\//.test(url);

/** Allocated bytes per innermost project function, from a sampling heap profile. */
function summarizeAlloc(head: HeapNode, count: number, unit: string, top: number): string {
  const byOwn = new Map<string, number>();
  const bySite = new Map<string, number>();
  let total = 0;
  const walk = (n: HeapNode, own: string | undefined) => {
    const f = n.callFrame;
    const url = shortUrl(f.url);
    const here = `${f.functionName || "(anonymous)"}  ${url ? `${url}:${f.lineNumber + 1}` : ""}`;
    const key = isOwn(url) ? here : own;
    if (n.selfSize > 0) {
      total += n.selfSize;
      const k = key ?? "(outside project code)";
      byOwn.set(k, (byOwn.get(k) ?? 0) + n.selfSize);
      bySite.set(here, (bySite.get(here) ?? 0) + n.selfSize);
    }
    for (const c of n.children) walk(c, key);
  };
  walk(head, undefined);
  const rows = (m: Map<string, number>) =>
    [...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, top).map((
      [k, bytes],
    ) => [k, `${num(bytes / count)} B`, `${((bytes / total) * 100).toFixed(1)} %`]);
  return [
    `allocated: ${num(total / count)} B per ${unit} (sampled estimate)`,
    "",
    table(["allocating function", `per ${unit}`, "share"], rows(bySite)),
    "",
    table(["innermost project function (with its callees)", `per ${unit}`, "share"], rows(byOwn)),
  ].join("\n");
}

function post<T>(s: Inspector, method: string, params?: object): Promise<T> {
  return new Promise((resolve, reject) => {
    s.post(method, params ?? {}, (err: Error | null, res: unknown) => {
      if (err) reject(err);
      else resolve(res as T);
    });
  });
}

function shortUrl(url: string): string {
  if (url === "") return "";
  const root = new URL("..", import.meta.url).href;
  if (url.startsWith(root)) return url.slice(root.length);
  const npm = url.match(/\/npm\/registry\.npmjs\.org\/([^/]+)\/[^/]+\/(.*)$/);
  if (npm) return `npm:${npm[1]}/${npm[2]}`;
  return url.replace(/^ext:/, "ext:");
}

/** Self time per function and per file, from a V8 CPU profile. */
function summarize(p: Profile, top: number): string {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++) {
    const id = p.samples[i]!;
    self.set(id, (self.get(id) ?? 0) + (p.timeDeltas[i] ?? 0));
  }
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  const fnTime = new Map<string, number>();
  const fileTime = new Map<string, number>();
  for (const [id, us] of self) {
    const n = byId.get(id)!;
    const url = shortUrl(n.callFrame.url);
    const fn = n.callFrame.functionName || "(anonymous)";
    const key = url ? `${fn}  ${url}:${n.callFrame.lineNumber + 1}` : fn;
    fnTime.set(key, (fnTime.get(key) ?? 0) + us);
    const file = url || fn;
    fileTime.set(file, (fileTime.get(file) ?? 0) + us);
  }
  // Inclusive of runtime and library callees: each sample goes to the innermost frame of
  // this project's own code (transport/, node/, services/, bench/) on its stack.
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const ownTime = new Map<string, number>();
  for (const [id, us] of self) {
    let cur: number | undefined = id;
    let key: string | undefined;
    while (cur !== undefined) {
      const f = byId.get(cur)!.callFrame;
      const url = shortUrl(f.url);
      if (isOwn(url)) {
        key = `${f.functionName || "(anonymous)"}  ${url}:${f.lineNumber + 1}`;
        break;
      }
      cur = parent.get(cur);
    }
    const n = byId.get(id)!.callFrame;
    key ??= n.url ? "(runtime, outside project code)" : n.functionName;
    ownTime.set(key, (ownTime.get(key) ?? 0) + us);
  }
  const rows = (m: Map<string, number>) =>
    [...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, top).map((
      [k, us],
    ) => [k, `${num(us / 1000, 1)} ms`, `${((us / total) * 100).toFixed(1)} %`]);
  return [
    table(["self time by function", "self", "share"], rows(fnTime)),
    "",
    table(["self time by file", "self", "share"], rows(fileTime)),
    "",
    table(
      ["time by innermost project function (with its runtime/library callees)", "time", "share"],
      rows(ownTime),
    ),
  ].join("\n");
}

const HERE = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const workload = args[0] ?? "calls";
const mode: Mode = args.includes("--plain") ? "plain" : "secure";
const secondsArg = args.indexOf("--seconds");
const seconds = secondsArg >= 0 ? Number(args[secondsArg + 1]) : 3;
const alloc = args.includes("--alloc");
const outArg = args.indexOf("--out");
const out = outArg >= 0 ? args[outArg + 1] : undefined;
const ms = seconds * 1000;

const ctx = createContext(false);
const cleanups: (() => Promise<void>)[] = [];
let serverPid: number | undefined;

async function target(): Promise<{ client: Node; t: Target }> {
  const client = await clientNode(ctx, mode);
  cleanups.push(() => client.stop());
  const small: [string, string, unknown[]] = [BENCH_SERVICE, "echo", ["ping"]];
  if (workload.startsWith("remote-")) {
    const { child, port } = await startIdleNode(ctx, mode, "benchS@127.0.0.1");
    serverPid = child.pid;
    cleanups.push(() => stopChild(child));
    return { client, t: { node: `benchS@127.0.0.1:${port}`, small, blob: true } };
  }
  const server = await serverNode(ctx, mode, "benchA@127.0.0.1");
  cleanups.push(() => server.stop());
  return {
    client,
    t: { node: `benchA@127.0.0.1:${server.listenAddress!.port}`, small, blob: true },
  };
}

/** Prepares the workload; returns one run of it for `ms` and what it counts. */
async function prepare(): Promise<{ run(ms: number): Promise<number>; unit: string }> {
  const base = workload.replace(/^remote-/, "");
  if (base === "calls" || base === "concurrent" || base === "blob") {
    const { client, t } = await target();
    if (base === "calls") {
      return {
        unit: "call",
        run: async (ms) => {
          const end = performance.now() + ms;
          let n = 0;
          while (performance.now() < end) n += (await sequentialCalls(client, t, 100)).length;
          return n;
        },
      };
    }
    if (base === "concurrent") {
      return {
        unit: "call",
        run: async (ms) => (await concurrentCalls(client, t, 32, ms)).calls,
      };
    }
    return {
      unit: "1 MiB reply",
      run: async (ms) => {
        const end = performance.now() + ms;
        let n = 0;
        while (performance.now() < end) {
          await blobCalls(client, t, 1, 8);
          n += 8;
        }
        return n;
      },
    };
  }
  if (workload === "remote-handshake") {
    const [cmd, args] = scriptCommand(join(HERE, "session_peer.ts"), ["secure"]);
    const peer = await startChild(cmd, args, {
      env: { ...process.env as Record<string, string>, [PSK_ENV]: toHex(ctx.psk) },
      stream: "stdout",
      ready: /^ready (\d+)$/,
      timeoutMs: 30_000,
    });
    serverPid = peer.child.pid;
    cleanups.push(() => stopChild(peer.child));
    const network = secureNetwork(
      tcpDialer,
      handshakeConfig(ctx, "benchI@127.0.0.1", generateKeyPair(), true),
    );
    const port = Number(peer.match[1]);
    return {
      unit: "handshake",
      run: async (ms) => {
        const end = performance.now() + ms;
        let n = 0;
        while (performance.now() < end) {
          const s = await network.connect({ host: HOST, port }, {
            expectedName: SESSION_PEER_NAME,
          });
          await s.close();
          n++;
        }
        return n;
      },
    };
  }
  if (base === "handshake") {
    return {
      unit: "handshake",
      run: async (ms) => Math.round((await memoryHandshakes(ctx, true, ms)) * ms / 1000),
    };
  }
  if (base === "pump" || base === "tcp-pump") {
    const pair = base === "pump" ? await memoryPair(ctx, mode) : await tcpPair(ctx, mode);
    cleanups.push(() => pair.close());
    return {
      unit: "1 MiB message",
      run: async (ms) => {
        const end = performance.now() + ms;
        let n = 0;
        while (performance.now() < end) {
          await pump(pair, MiB, 8);
          n += 8;
        }
        return n;
      },
    };
  }
  throw new Error(`unknown workload '${workload}'`);
}

try {
  const w = await prepare();
  await w.run(Math.min(1000, ms / 2)); // warm up
  const inspector = new Inspector();
  inspector.connect();
  if (alloc) {
    await post(inspector, "HeapProfiler.enable");
    await post(inspector, "HeapProfiler.startSampling", {
      samplingInterval: 256,
      includeObjectsCollectedByMajorGC: true,
      includeObjectsCollectedByMinorGC: true,
    });
    const count = await w.run(ms);
    const { profile } = await post<{ profile: { head: HeapNode } }>(
      inspector,
      "HeapProfiler.stopSampling",
    );
    inspector.disconnect();
    console.log(`${workload} (${mode}): ${num(count)} × ${w.unit}`);
    console.log(summarizeAlloc(profile.head, count, w.unit, 25));
  } else {
    await cpuProfile(inspector, w);
  }
} finally {
  for (const c of cleanups.reverse()) await c().catch(() => {});
  ctx.dispose();
}

async function cpuProfile(
  inspector: Inspector,
  w: { run(ms: number): Promise<number>; unit: string },
): Promise<void> {
  await post(inspector, "Profiler.enable");
  await post(inspector, "Profiler.setSamplingInterval", { interval: 100 });
  const cpu0 = cpuMs(process.pid);
  const server0 = serverPid !== undefined ? cpuMs(serverPid) : 0;
  await post(inspector, "Profiler.start");
  const t0 = performance.now();
  const count = await w.run(ms);
  const wall = performance.now() - t0;
  const { profile } = await post<{ profile: Profile }>(inspector, "Profiler.stop");
  const cpu = cpuMs(process.pid) - cpu0;
  const serverCpu = serverPid !== undefined ? cpuMs(serverPid) - server0 : NaN;
  inspector.disconnect();
  if (out) writeFileSync(out, JSON.stringify(profile));
  const per = (v: number) => `${num((v * 1000) / count, 1)} µs`;
  console.log(`${workload} (${mode}): ${num(count)} × ${w.unit} in ${num(wall)} ms`);
  console.log(
    `  wall per ${w.unit}: ${per(wall)}; CPU of this process per ${w.unit}: ${per(cpu)}`
      + (serverPid !== undefined ? `; CPU of the server process: ${per(serverCpu)}` : ""),
  );
  console.log("  (CPU includes the profiler's own overhead)");
  console.log();
  console.log(summarize(profile, 30));
}
