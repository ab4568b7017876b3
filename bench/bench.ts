/**
 * `deno task bench` (`--quick` for a smoke run): nodectl's speed in one run, each figure printed
 * beside its limit or baseline, the Erlang/OTP 25 reference figures and the goal. Loopback only.
 *
 * 1. Transport (issue 3): Noise handshakes per second, session throughput for 1 MiB messages,
 *    and the raw ChaCha20-Poly1305 / X25519 speed of this runtime as the limit.
 * 2. Nodes (issue 4): call latency, concurrent calls per second, 1 MiB replies, connect time and
 *    idle RSS, encrypted (Noise over TCP) beside the plain-TCP baseline.
 *
 * Under Node 24 (the runtime of compiled/nodectl) the same file runs with
 * `node_modules/.bin/node --experimental-transform-types --no-warnings bench/bench.ts`.
 * `bench/profile.ts` runs one of these workloads under the V8 profiler: where the time goes.
 *
 * @module
 */
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { cpus, loadavg, release } from "node:os";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { type BenchContext, createContext, HOST } from "./context.ts";
import { inProcess, type NodeFigures, PLACEMENT, rssFigures, twoProcesses } from "./node_bench.ts";
import { IS_DENO, type Rss } from "./procs.ts";
import { dur, met, num, pct, ratio, table } from "./stats.ts";
import { transportFigures } from "./transport_bench.ts";

const QUICK = process.argv.includes("--quick");
const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** Erlang/OTP 25 figures quoted in issue 4. */
const OTP = {
  raw: { p50: 109, cps: 71_000, mb: 1700, reconnectMs: 2.4 },
  tls: { p50: 152, cps: 87_000, mb: 42, reconnectMs: 8.1 },
  rssMiB: 47,
};
/** Goals of issues 3 and 4 (encrypted figures). */
const GOAL = {
  handshakes: 2000,
  transportShare: 0.6,
  p50: 110,
  cps: 90_000,
  mb: 500,
  reconnectMs: 2.5,
  rssMiB: 47,
};

function log(line = ""): void {
  process.stdout.write(line + "\n");
}

function progress(what: string): void {
  process.stderr.write(`  … ${what}\n`);
}

const atMost = (v: number, goal: number) => Number.isFinite(v) ? v <= goal : undefined;
const atLeast = (v: number, goal: number) => Number.isFinite(v) ? v >= goal : undefined;
const mbs = (v: number) => Number.isFinite(v) ? `${num(v)} MB/s` : "n/a";
const mib = (v: number) => Number.isFinite(v) ? `${num(v, 1)} MiB` : "n/a";

function header(): void {
  const deno = (globalThis as { Deno?: { version: { deno: string; v8: string } } }).Deno;
  const runtime = deno
    ? `Deno ${deno.version.deno} (V8 ${deno.version.v8})`
    : `Node ${process.version} (V8 ${process.versions.v8})`;
  const cpu = cpus();
  let model = cpu[0]?.model ?? "unknown CPU";
  try {
    model = readFileSync("/proc/cpuinfo", "utf8").match(/model name\s*:\s*(.*)/)?.[1] ?? model;
  } catch { /* not Linux */ }
  log(`nodectl bench${QUICK ? " --quick (smoke run: few iterations, rough figures)" : ""}`);
  log(`${runtime}; ${cpu.length} cores, ${model}; Linux ${release()}; loopback ${HOST} only`);
  log(
    `tree: ${revision()}; load average at start: ${loadavg().map((l) => l.toFixed(2)).join(" ")}`,
  );
  log();
}

/** The commit measured, and whether library code differs from it (read-only git calls). */
function revision(): string {
  const git = (...args: string[]) =>
    spawnSync("git", args, {
      cwd: ROOT,
      encoding: "utf8",
      env: { ...process.env, GIT_OPTIONAL_LOCKS: "0" }, // never touch the index
    }).stdout?.trim() ?? "";
  const head = git("rev-parse", "--short", "HEAD") || "unknown commit";
  const dirty = git("status", "--porcelain", "--", "transport", "node", "services", "errors.ts");
  return dirty ? `${head} + uncommitted changes in library code` : head;
}

let failures = 0;

/** Runs one part of the bench; a failure is printed and the run goes on. */
async function attempt<T>(what: string, fn: () => Promise<T>): Promise<T | undefined> {
  try {
    return await fn();
  } catch (err) {
    failures++;
    log(`  ${what} FAILED: ${(err as Error).stack ?? err}`);
    log();
    return undefined;
  }
}

async function transportSection(ctx: BenchContext): Promise<void> {
  log("1. TRANSPORT (issue 3): Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s");
  log();
  const f = await transportFigures(ctx, progress);
  const raw = f.raw;
  log(table(["raw limit of this runtime", "figure"], [
    ["ChaCha20-Poly1305 encrypt, crypto.ts aeadEncrypt, 64 KiB", mbs(raw.encMBps)],
    ["ChaCha20-Poly1305 decrypt, crypto.ts aeadDecrypt, 64 KiB", mbs(raw.decMBps)],
    ["ChaCha20-Poly1305 encrypt, node:crypto directly, 64 KiB", mbs(raw.nodeEncMBps)],
    [
      `  pure JS for comparison: @noble/ciphers, 64 KiB (native ${
        (raw.encMBps / raw.nobleEncMBps).toFixed(1)
      }x)`,
      mbs(raw.nobleEncMBps),
    ],
    ["encrypt + decrypt of each byte on one thread", mbs(raw.encDecMBps)],
    ["X25519 DH, crypto.ts dh", `${num(raw.dhPerSec)} /s`],
    [
      `  pure JS for comparison: tweetnacl scalarMult (native ${
        (raw.dhPerSec / raw.tweetnaclDhPerSec).toFixed(1)
      }x)`,
      `${num(raw.tweetnaclDhPerSec)} /s`,
    ],
    ["X25519 key generation, crypto.ts generateKeyPair", `${num(raw.keygenPerSec)} /s`],
    ["handshake bound, both sides here (6 DH + 2 keygen)", `${num(raw.handshakeBound)} /s`],
  ]));
  log();
  const hsRow = (what: string, v: number): string[] => [
    what,
    `${num(v)} /s`,
    pct(v, raw.handshakeBound),
    `≥ ${num(GOAL.handshakes)} /s`,
    met(atLeast(v, GOAL.handshakes)),
  ];
  log(table(
    ["handshakes, sequential, BOTH sides in this process", "figure", "% of bound", "goal", "met?"],
    [
      hsRow("initiate/respond, memory transport, known_nodes", f.handshakesMemory),
      hsRow("initiate/respond, memory transport, no pinning", f.handshakesMemoryNoPinning),
      hsRow(
        `TCP connect + handshake, known_nodes (median ${dur(f.handshakesTcp.medianUs)})`,
        f.handshakesTcp.perSec,
      ),
    ],
  ));
  log("  Above, each handshake's CPU work for both the initiator and the responder is done on");
  log("  this one thread; a node serving handshakes does only the responder's half:");
  log();
  const cpu = f.handshakeCpu;
  log(table(
    ["handshake CPU per side, separate processes", "CPU", "per core", "goal", "met?"],
    [
      [
        "responder (TCP accept, handshake, close)",
        dur(cpu.responderUs),
        `${num(1e6 / cpu.responderUs)} /s`,
        `≥ ${num(GOAL.handshakes)} /s`,
        met(atLeast(1e6 / cpu.responderUs, GOAL.handshakes)),
      ],
      [
        "initiator (TCP connect, handshake, close)",
        dur(cpu.initiatorUs),
        `${num(1e6 / cpu.initiatorUs)} /s`,
        "",
        "",
      ],
    ],
  ));
  log("  CPU from /proc over sequential handshakes, client on CPU 0 and responder on CPU 1; it");
  log("  includes TCP connect/accept/close and V8's helper threads. 'per core' = 1 s / CPU.");
  log();
  const tpRow = (what: string, v: number, goal: boolean, oneProcess: boolean): string[] => [
    what,
    mbs(v),
    pct(v, raw.encMBps),
    oneProcess ? pct(v, raw.encDecMBps) : "-",
    goal ? "≥ 60 % of enc" : "(baseline)",
    goal ? met(atLeast(v, GOAL.transportShare * raw.encMBps)) : "",
  ];
  log(table(
    ["session throughput, 1 MiB messages", "figure", "% of enc", "% enc+dec", "goal", "met?"],
    [
      tpRow("NoiseSession, memory transport, one process", f.memorySecure, true, true),
      tpRow("NoiseSession, TCP, one process", f.tcpSecure, true, true),
      tpRow("NoiseSession, TCP, sender in another process", f.crossSecure, true, false),
      tpRow("plain session, memory transport, one process", f.memoryPlain, false, true),
      tpRow("plain session, TCP, one process", f.tcpPlain, false, true),
      tpRow("plain session, TCP, sender in another process", f.crossPlain, false, false),
      tpRow("bare TCP (node:net), sender in another process", f.crossTcp, false, false),
    ],
  ));
  log("  % of enc: of raw aeadEncrypt alone (the goal's yardstick). % enc+dec: of encrypting and");
  log("  decrypting every byte on one thread, which a pair in one process has to do.");
  log();
}

function cpuCell(f: NodeFigures): string {
  if (!Number.isFinite(f.cpuServerUs)) return dur(f.cpuHereUs);
  return `${dur(f.cpuHereUs)} + ${dur(f.cpuServerUs)}`;
}

function cpuTotal(f: NodeFigures): number {
  return f.cpuHereUs + (Number.isFinite(f.cpuServerUs) ? f.cpuServerUs : 0);
}

function nodeTable(title: string, enc: NodeFigures, plain: NodeFigures): string {
  const blank = ["", "", "", ""];
  return table([
    title,
    "encrypted",
    "plain TCP",
    "enc/plain",
    "OTP25 raw",
    "OTP25 TLS",
    "goal (enc)",
    "met?",
  ], [
    [
      "call round trip p50, sequential echo",
      dur(enc.p50Us),
      dur(plain.p50Us),
      ratio(enc.p50Us, plain.p50Us),
      dur(OTP.raw.p50),
      dur(OTP.tls.p50),
      `≤ ${dur(GOAL.p50)}`,
      met(atMost(enc.p50Us, GOAL.p50)),
    ],
    [
      "call round trip p99",
      dur(enc.p99Us),
      dur(plain.p99Us),
      ratio(enc.p99Us, plain.p99Us),
      ...blank,
    ],
    [
      "floor: bare TCP ping-pong p50, same period",
      dur(enc.floorP50Us),
      dur(plain.floorP50Us),
      "",
      ...blank,
    ],
    [
      "call p50 above the floor (nodectl's share)",
      dur(enc.p50Us - enc.floorP50Us),
      dur(plain.p50Us - plain.floorP50Us),
      ratio(enc.p50Us - enc.floorP50Us, plain.p50Us - plain.floorP50Us),
      ...blank,
    ],
    [
      "calls/s, 32 concurrent callers",
      num(enc.callsPerSec),
      num(plain.callsPerSec),
      ratio(enc.callsPerSec, plain.callsPerSec),
      num(OTP.raw.cps),
      num(OTP.tls.cps),
      `≥ ${num(GOAL.cps)}`,
      met(atLeast(enc.callsPerSec, GOAL.cps)),
    ],
    [
      Number.isFinite(enc.cpuServerUs)
        ? "CPU per call at 32 callers (client + server)"
        : "CPU per call at 32 callers (both nodes)",
      cpuCell(enc),
      cpuCell(plain),
      ratio(cpuTotal(enc), cpuTotal(plain)),
      ...blank,
    ],
    [
      "1 MiB replies, 1 caller",
      mbs(enc.mb1),
      mbs(plain.mb1),
      ratio(enc.mb1, plain.mb1),
      mbs(OTP.raw.mb),
      mbs(OTP.tls.mb),
      `≥ ${mbs(GOAL.mb)}`,
      met(atLeast(enc.mb1, GOAL.mb)),
    ],
    [
      "1 MiB replies, 4 callers",
      mbs(enc.mb4),
      mbs(plain.mb4),
      ratio(enc.mb4, plain.mb4),
      "",
      "",
      `≥ ${mbs(GOAL.mb)}`,
      met(atLeast(enc.mb4, GOAL.mb)),
    ],
    [
      "connect + handshake + hello, median",
      dur(enc.connectUs),
      dur(plain.connectUs),
      ratio(enc.connectUs, plain.connectUs),
      `${OTP.raw.reconnectMs} ms`,
      `${OTP.tls.reconnectMs} ms`,
      `≤ ${GOAL.reconnectMs} ms`,
      met(atMost(enc.connectUs, GOAL.reconnectMs * 1000)),
    ],
  ]);
}

async function nodesSection(ctx: BenchContext): Promise<void> {
  log("2. NODES (issue 4): Node.call, secureNetwork(tcpDialer) vs plainNetwork(tcpDialer)");
  log();
  log("  floor: bare TCP ping-pong (node:net, 16 B) against the server's own process, sampled in");
  log(
    "  batches alternating with the calls. Between two processes on different CPUs of a VM every",
  );
  log("  round trip also pays two inter-processor wake-ups, so the in-process table shows");
  log("  nodectl's own cost best.");
  log();
  await attempt("nodes in one process", async () => {
    progress("nodes in one process, encrypted");
    const enc = await inProcess(ctx, "secure");
    progress("nodes in one process, plain");
    const plain = await inProcess(ctx, "plain");
    log(nodeTable("both nodes in this process (one JS thread)", enc, plain));
    log();
  });
  await attempt("nodes in two processes", async () => {
    progress("server node in its own process, encrypted");
    const enc = await twoProcesses(ctx, "secure");
    progress("server node in its own process, plain");
    const plain = await twoProcesses(ctx, "plain");
    log(`server node in its own process (bench/idle_node.ts); ${PLACEMENT}`);
    log(nodeTable("two processes", enc, plain));
    log();
  });
  const rss = await rssFigures(ctx, progress);
  const c = rss.compiledFigures;
  if (c) {
    log(`server: compiled/nodectl serve (Node 24), client here; ${PLACEMENT}`);
    log(table(["compiled binary", "encrypted", "goal", "met?"], [
      [
        "call round trip p50, Node.services",
        dur(c.p50Us),
        `≤ ${dur(GOAL.p50)}`,
        met(atMost(c.p50Us, GOAL.p50)),
      ],
      ["call round trip p99", dur(c.p99Us), "", ""],
      ["floor: bare TCP ping-pong p50, same period", dur(c.floorP50Us), "", ""],
      ["call p50 above the floor (nodectl's share)", dur(c.p50Us - c.floorP50Us), "", ""],
      [
        "calls/s, 32 concurrent callers",
        num(c.callsPerSec),
        `≥ ${num(GOAL.cps)}`,
        met(atLeast(c.callsPerSec, GOAL.cps)),
      ],
      ["CPU per call at 32 callers (client + server)", cpuCell(c), "", ""],
      [
        "connect + handshake + hello, median",
        dur(c.connectUs),
        `≤ ${GOAL.reconnectMs} ms`,
        met(atMost(c.connectUs, GOAL.reconnectMs * 1000)),
      ],
    ]));
    log();
  }
  const rssRow = (what: string, r: Rss | undefined, goal: boolean): string[] => [
    what,
    mib(r?.total ?? NaN),
    mib(r?.anon ?? NaN),
    mib(r?.file ?? NaN),
    goal ? `${OTP.rssMiB} MiB` : "",
    goal ? `≤ ${GOAL.rssMiB} MiB` : "",
    goal ? met(atMost(r?.total ?? NaN, GOAL.rssMiB)) : "",
  ];
  log(
    table(
      ["idle RSS, once started and settled", "VmRSS", "anon", "file", "OTP25", "goal", "met?"],
      [
        rssRow(
          IS_DENO
            ? "node: bench/idle_node.ts, deno run"
            : "node: bench/idle_node.ts, node (+ TS loader)",
          rss.idleNode,
          true,
        ),
        rssRow("node: compiled/nodectl serve --role private", rss.compiled, true),
        rssRow("runtime alone: deno eval, idle timer", rss.bareDeno, false),
        rssRow("runtime alone: node 24 -e, idle timer", rss.bareNode, false),
      ],
    ),
  );
  log("  anon: the process's own memory (heaps); file: pages of the executable and libraries.");
  for (const note of rss.notes) log(`  note: ${note}`);
  log();
}

const started = performance.now();
// Every loop is bounded; this only guards against a hang nobody foresaw.
const watchdog = setTimeout(() => {
  process.stderr.write("bench: still running after 10 minutes; giving up\n");
  process.exit(1);
}, 600_000);
const ctx = createContext(QUICK);
try {
  header();
  await attempt("transport section", () => transportSection(ctx));
  await attempt("nodes section", () => nodesSection(ctx));
  log(
    `bench took ${num((performance.now() - started) / 1000, 1)} s; load average at end: ${
      loadavg().map((l) => l.toFixed(2)).join(" ")
    }`,
  );
} finally {
  clearTimeout(watchdog);
  ctx.dispose();
}
if (failures > 0) process.exit(1);
