/**
 * Two "hosts" on one machine for end-to-end tests: two network namespaces joined by a veth
 * pair, each with its own 10.201.N.x/24 address. Traffic between them never leaves the machine.
 * Also: the checks that decide whether such tests can run here, a tcpdump capture that is really
 * capturing before it returns, and a pcap reader to search captured traffic for byte strings.
 *
 * Names carry this process's pid (`nctl-<pid>-<n>-a`), so parallel runs do not collide and a
 * later run can remove what a killed run left behind.
 */
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import {
  type CommandResult,
  type ManagedProcess,
  runCommand,
  sleep,
  type StartOptions,
  startProcess,
  WAIT_MS,
} from "./processes.ts";

/** Environment variable that turns missing prerequisites from a skip into a failure (CI). */
export const E2E_REQUIRED_ENV = "NODECTL_E2E_REQUIRED";

const EXTRA_PATH = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/** Whether this process runs as root (network namespaces, tcpdump and sshd need it). */
export function hasRoot(): boolean {
  return Deno.uid() === 0;
}

/** Absolute path of `tool` on PATH or in an sbin directory, or undefined. */
export function toolPath(tool: string): string | undefined {
  const dirs = [...(Deno.env.get("PATH") ?? "").split(":").filter((d) => d !== ""), ...EXTRA_PATH];
  for (const dir of dirs) {
    const candidate = join(dir, tool);
    try {
      const st = statSync(candidate);
      if (st.isFile() && (st.mode & 0o111) !== 0) return candidate;
    } catch { /* not here */ }
  }
  return undefined;
}

/** The tools in `tools` that cannot be found. */
export function missingTools(tools: string[]): string[] {
  return tools.filter((t) => toolPath(t) === undefined);
}

/** Whether every tool in `tools` can be found. */
export function haveTools(tools: string[]): boolean {
  return missingTools(tools).length === 0;
}

/** Whether missing prerequisites must fail the tests instead of skipping them (CI sets it). */
export function e2eRequired(): boolean {
  return Deno.env.get(E2E_REQUIRED_ENV) === "1";
}

let netnsWorks: string | undefined | null = null;

/** Undefined when `ip netns add` works here, else why not (probed once: add and delete). */
function netnsProblem(): string | undefined {
  if (netnsWorks !== null) return netnsWorks;
  const probe = `nctl-${Deno.pid}-probe`;
  const add = new Deno.Command("ip", {
    args: ["netns", "add", probe],
    stdout: "null",
    stderr: "piped",
  })
    .outputSync();
  if (add.success) {
    new Deno.Command("ip", { args: ["netns", "del", probe], stdout: "null", stderr: "null" })
      .outputSync();
    netnsWorks = undefined;
  } else {
    const why = new TextDecoder().decode(add.stderr).trim().split("\n")[0] ?? "";
    netnsWorks = `'ip netns add' fails here (${why})`;
  }
  return netnsWorks;
}

/** What these tests need; `netns` probes that network namespaces can really be created. */
export interface Prerequisites {
  root?: boolean;
  tools?: string[];
  netns?: boolean;
}

/** Why the prerequisites are not met, or undefined when they are. */
export function prerequisiteProblem(needs: Prerequisites): string | undefined {
  const problems: string[] = [];
  if (needs.root && !hasRoot()) problems.push("not running as root");
  const missing = missingTools(needs.tools ?? []);
  if (missing.length > 0) problems.push(`missing ${missing.join(", ")}`);
  if (problems.length === 0 && needs.netns) {
    const p = netnsProblem();
    if (p !== undefined) problems.push(p);
  }
  return problems.length === 0 ? undefined : problems.join("; ");
}

/**
 * For `Deno.test({ ignore: skipReason(...) !== undefined })`: the reason to skip `what` on this
 * machine, printed as one line, or undefined when it can run. With NODECTL_E2E_REQUIRED=1 it
 * never skips (the test then fails in {@link requirePrerequisites}).
 */
export function skipReason(what: string, needs: Prerequisites): string | undefined {
  const problem = prerequisiteProblem(needs);
  if (problem === undefined || e2eRequired()) return undefined;
  const reason = `${problem} (set ${E2E_REQUIRED_ENV}=1 to make this a failure)`;
  console.log(`skipping ${what}: ${reason}`);
  return reason;
}

/** Throws, saying what is missing, unless the prerequisites are met. Call first in the test. */
export function requirePrerequisites(needs: Prerequisites): void {
  const problem = prerequisiteProblem(needs);
  if (problem !== undefined) {
    throw new Error(
      `end-to-end prerequisites missing: ${problem}`
        + (e2eRequired() ? ` (${E2E_REQUIRED_ENV}=1, so this is a failure)` : ""),
    );
  }
}

async function ip(args: string[]): Promise<CommandResult> {
  return await runCommand(["ip", ...args], { label: `ip ${args.join(" ")}` });
}

async function ipOk(args: string[]): Promise<string> {
  const r = await ip(args);
  if (r.code !== 0) throw new Error(`ip ${args.join(" ")} failed (${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** Kills every process in `ns` and deletes it; ignores a namespace that is already gone. */
export async function deleteNamespace(ns: string): Promise<void> {
  const pids = await ip(["netns", "pids", ns]);
  if (pids.code === 0) {
    for (const pid of pids.stdout.split(/\s+/).filter((p) => /^[0-9]+$/.test(p))) {
      try {
        Deno.kill(Number(pid), "SIGKILL");
      } catch { /* already gone */ }
    }
  }
  for (let attempt = 0; attempt < 5; attempt++) {
    const r = await ip(["netns", "del", ns]);
    if (r.code === 0 || !existsSync(`/run/netns/${ns}`)) return;
    await sleep(100);
  }
}

function pidAlive(pid: number): boolean {
  return existsSync(`/proc/${pid}`);
}

/** Deletes `nctl-<pid>-…` namespaces whose creating process no longer exists. */
async function removeLeftovers(): Promise<void> {
  const list = await ip(["netns", "list"]);
  if (list.code !== 0) return;
  for (const line of list.stdout.split("\n")) {
    const m = /^(nctl-([0-9]+)-\S+)/.exec(line.trim());
    if (m && Number(m[2]) !== Deno.pid && !pidAlive(Number(m[2]))) await deleteNamespace(m[1]!);
  }
}

/** Two namespaces joined by a veth pair. */
export interface TwoHosts {
  readonly nsA: string;
  readonly nsB: string;
  /** Address of nsA's end of the veth (10.201.N.1). */
  readonly addrA: string;
  /** Address of nsB's end of the veth (10.201.N.2). */
  readonly addrB: string;
  /** Interface names of the veth ends inside nsA and nsB. */
  readonly ifaceA: string;
  readonly ifaceB: string;
  /** Runs `cmd` to completion inside `ns`, with a deadline. */
  exec(
    ns: string,
    cmd: string[],
    options?: Omit<StartOptions, "netns"> & { timeoutMs?: number },
  ): Promise<
    CommandResult
  >;
  /** Starts `cmd` as a long-running process inside `ns`, with `env` added to the environment. */
  spawn(
    ns: string,
    cmd: string[],
    env?: Record<string, string>,
    options?: Omit<StartOptions, "netns" | "env">,
  ): ManagedProcess;
  /** Kills everything still running in both namespaces and deletes them (the veth goes too). */
  cleanup(): Promise<void>;
}

let hostsCreated = 0;

/**
 * Creates two namespaces, a veth pair between them with 10.201.N.1/24 and 10.201.N.2/24, and
 * brings both ends and both loopbacks up. On failure it removes whatever it created.
 */
export async function createTwoHosts(): Promise<TwoHosts> {
  await removeLeftovers();
  const n = hostsCreated++;
  const tag = `${Deno.pid}-${n}`;
  const nsA = `nctl-${tag}-a`;
  const nsB = `nctl-${tag}-b`;
  // Interface names are at most 15 characters: "nv" + pid (≤ 7) + "x" + n + "a".
  const ifaceA = `nv${Deno.pid}x${n % 1000}a`;
  const ifaceB = `nv${Deno.pid}x${n % 1000}b`;
  const subnet = ((Deno.pid + n) % 250) + 1;
  const addrA = `10.201.${subnet}.1`;
  const addrB = `10.201.${subnet}.2`;
  const created: string[] = [];
  const cleanup = async () => {
    for (const ns of [...created].reverse()) await deleteNamespace(ns);
    created.length = 0;
  };
  try {
    await ipOk(["netns", "add", nsA]);
    created.push(nsA);
    await ipOk(["netns", "add", nsB]);
    created.push(nsB);
    await ipOk([
      "link",
      "add",
      "name",
      ifaceA,
      "netns",
      nsA,
      "type",
      "veth",
      "peer",
      "name",
      ifaceB,
      "netns",
      nsB,
    ]);
    for (const [ns, iface, addr] of [[nsA, ifaceA, addrA], [nsB, ifaceB, addrB]] as const) {
      await ipOk(["-n", ns, "addr", "add", `${addr}/24`, "dev", iface]);
      await ipOk(["-n", ns, "link", "set", "lo", "up"]);
      await ipOk(["-n", ns, "link", "set", iface, "up"]);
    }
    // Wait until both ends report carrier (LOWER_UP); bounded.
    for (const [ns, iface] of [[nsA, ifaceA], [nsB, ifaceB]] as const) {
      let up = false;
      for (let i = 0; i < 100 && !up; i++) {
        up = /LOWER_UP/.test(await ipOk(["-n", ns, "link", "show", iface]));
        if (!up) await sleep(50);
      }
      if (!up) throw new Error(`veth ${iface} in ${ns} did not come up`);
    }
  } catch (err) {
    await cleanup();
    throw err;
  }
  return {
    nsA,
    nsB,
    addrA,
    addrB,
    ifaceA,
    ifaceB,
    exec: (ns, cmd, options = {}) =>
      runCommand(cmd, { label: `[${ns}] ${cmd.join(" ")}`, ...options, netns: ns }),
    spawn: (ns, cmd, env, options = {}) =>
      startProcess(cmd, {
        label: `[${ns}] ${cmd.join(" ")}`,
        ...options,
        ...(env === undefined ? {} : { env }),
        netns: ns,
      }),
    cleanup,
  };
}

/** A running tcpdump. */
export interface Capture {
  /** The pcap file being written. */
  readonly file: string;
  readonly process: ManagedProcess;
  /** Stops tcpdump with SIGINT so it flushes the file; resolves to the number it captured. */
  stop(): Promise<number>;
}

/**
 * Starts `tcpdump -U --immediate-mode -w file` on `iface` (inside `ns` when given) and waits
 * until it prints "listening on", i.e. is really capturing. `filter` is a BPF expression.
 */
export async function startCapture(
  ns: string | undefined,
  iface: string,
  file: string,
  filter: string[] = [],
): Promise<Capture> {
  const cmd = [
    "tcpdump",
    "-n",
    "-i",
    iface,
    "-U",
    "--immediate-mode",
    "-s",
    "0",
    "-w",
    file,
    ...filter,
  ];
  const p = startProcess(cmd, {
    label: `tcpdump on ${iface}${ns ? ` in ${ns}` : ""}`,
    ...(ns === undefined ? {} : { netns: ns }),
  });
  try {
    await p.waitForLine(/listening on/, { timeoutMs: WAIT_MS });
  } catch (err) {
    await p.stop({ signal: "SIGKILL" });
    throw err;
  }
  return {
    file,
    process: p,
    async stop() {
      const status = await p.stop({ signal: "SIGINT" });
      const m = /([0-9]+) packets? captured/.exec(p.stderr);
      if (!m) {
        throw new Error(
          `tcpdump did not report its count (exit ${status.code})\n${p.transcript()}`,
        );
      }
      return Number(m[1]);
    },
  };
}

/** One captured frame. */
export interface CapturedPacket {
  /** Seconds since the epoch, with fraction. */
  readonly time: number;
  readonly data: Uint8Array;
}

/** A parsed pcap file. */
export interface Pcap {
  /** The link-layer header type (1 Ethernet, 113 Linux cooked, 276 Linux cooked v2, 101 raw IP). */
  readonly linkType: number;
  readonly packets: CapturedPacket[];
}

/** Reads a classic pcap file (either byte order, micro- or nanosecond timestamps). */
export function readPcap(file: string): Pcap {
  const bytes = Deno.readFileSync(file);
  if (bytes.length < 24) throw new Error(`${file} is not a pcap file (${bytes.length} bytes)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = view.getUint32(0, false);
  let little: boolean;
  let nano: boolean;
  if (magic === 0xa1b2c3d4 || magic === 0xa1b23c4d) {
    little = false;
    nano = magic === 0xa1b23c4d;
  } else if (magic === 0xd4c3b2a1 || magic === 0x4d3cb2a1) {
    little = true;
    nano = magic === 0x4d3cb2a1;
  } else {
    throw new Error(`${file} is not a classic pcap file (magic ${magic.toString(16)})`);
  }
  const linkType = view.getUint32(20, little) & 0x0fffffff;
  const packets: CapturedPacket[] = [];
  let off = 24;
  while (off + 16 <= bytes.length) {
    const sec = view.getUint32(off, little);
    const frac = view.getUint32(off + 4, little);
    const incl = view.getUint32(off + 8, little);
    off += 16;
    if (off + incl > bytes.length) break; // a truncated last record
    packets.push({
      time: sec + frac / (nano ? 1e9 : 1e6),
      data: bytes.subarray(off, off + incl),
    });
    off += incl;
  }
  return { linkType, packets };
}

/** A TCP segment from a capture. */
export interface TcpSegment {
  readonly src: string;
  readonly dst: string;
  readonly srcPort: number;
  readonly dstPort: number;
  readonly seq: number;
  /** TCP flags byte (FIN 1, SYN 2, RST 4, PSH 8, ACK 16). */
  readonly flags: number;
  readonly payload: Uint8Array;
}

function ipPayloadOffset(linkType: number, data: Uint8Array): number | undefined {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let off: number;
  let etherType: number;
  switch (linkType) {
    case 1: // Ethernet, possibly with 802.1Q tags
      if (data.length < 14) return undefined;
      off = 12;
      etherType = view.getUint16(off);
      while ((etherType === 0x8100 || etherType === 0x88a8) && off + 6 <= data.length) {
        off += 4;
        etherType = view.getUint16(off);
      }
      return etherType === 0x0800 || etherType === 0x86dd ? off + 2 : undefined;
    case 113: // Linux cooked v1: protocol at 14
      if (data.length < 16) return undefined;
      etherType = view.getUint16(14);
      return etherType === 0x0800 || etherType === 0x86dd ? 16 : undefined;
    case 276: // Linux cooked v2: protocol at 0, header 20 bytes
      if (data.length < 20) return undefined;
      etherType = view.getUint16(0);
      return etherType === 0x0800 || etherType === 0x86dd ? 20 : undefined;
    case 101: // raw IP
    case 12:
      return 0;
    default:
      return undefined;
  }
}

function formatV6(b: Uint8Array): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((b[i]! << 8) | b[i + 1]!).toString(16));
  return groups.join(":");
}

/** The TCP segments (over IPv4 or IPv6 without extension headers) in a capture. */
export function tcpSegments(pcap: Pcap): TcpSegment[] {
  const out: TcpSegment[] = [];
  for (const { data } of pcap.packets) {
    const ipOff = ipPayloadOffset(pcap.linkType, data);
    if (ipOff === undefined || ipOff >= data.length) continue;
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const version = data[ipOff]! >> 4;
    let src: string;
    let dst: string;
    let tcpOff: number;
    let end: number;
    if (version === 4) {
      if (ipOff + 20 > data.length || data[ipOff + 9] !== 6) continue;
      const ihl = (data[ipOff]! & 0x0f) * 4;
      end = Math.min(data.length, ipOff + view.getUint16(ipOff + 2));
      src = data.subarray(ipOff + 12, ipOff + 16).join(".");
      dst = data.subarray(ipOff + 16, ipOff + 20).join(".");
      tcpOff = ipOff + ihl;
    } else if (version === 6) {
      if (ipOff + 40 > data.length || data[ipOff + 6] !== 6) continue;
      end = Math.min(data.length, ipOff + 40 + view.getUint16(ipOff + 4));
      src = formatV6(data.subarray(ipOff + 8, ipOff + 24));
      dst = formatV6(data.subarray(ipOff + 24, ipOff + 40));
      tcpOff = ipOff + 40;
    } else {
      continue;
    }
    if (tcpOff + 20 > end) continue;
    const dataOff = (data[tcpOff + 12]! >> 4) * 4;
    out.push({
      src,
      dst,
      srcPort: view.getUint16(tcpOff),
      dstPort: view.getUint16(tcpOff + 2),
      seq: view.getUint32(tcpOff + 4),
      flags: data[tcpOff + 13]!,
      payload: data.subarray(Math.min(end, tcpOff + dataOff), end),
    });
  }
  return out;
}

/**
 * Each TCP direction's bytes in sequence order (retransmitted segments counted once), keyed
 * "src:port>dst:port", so a string split across segments is still found.
 */
export function tcpStreams(segments: TcpSegment[]): Map<string, Uint8Array> {
  const flows = new Map<string, Map<number, Uint8Array>>();
  for (const s of segments) {
    if (s.payload.length === 0) continue;
    const key = `${s.src}:${s.srcPort}>${s.dst}:${s.dstPort}`;
    let flow = flows.get(key);
    if (!flow) flows.set(key, flow = new Map());
    const prev = flow.get(s.seq);
    if (!prev || prev.length < s.payload.length) flow.set(s.seq, s.payload);
  }
  const streams = new Map<string, Uint8Array>();
  for (const [key, flow] of flows) {
    const parts = [...flow.entries()].sort((a, b) => a[0] - b[0]).map(([, p]) => p);
    const total = parts.reduce((n, p) => n + p.length, 0);
    const joined = new Uint8Array(total);
    let off = 0;
    for (const p of parts) {
      joined.set(p, off);
      off += p.length;
    }
    streams.set(key, joined);
  }
  return streams;
}

/** Index of `needle` in `haystack`, or -1. */
export function indexOfBytes(haystack: Uint8Array, needle: Uint8Array): number {
  if (needle.length === 0) return 0;
  const first = needle[0]!;
  const last = haystack.length - needle.length;
  outer: for (
    let i = haystack.indexOf(first);
    i !== -1 && i <= last;
    i = haystack.indexOf(first, i + 1)
  ) {
    for (let j = 1; j < needle.length; j++) {
      if (haystack[i + j] !== needle[j]) continue outer;
    }
    return i;
  }
  return -1;
}

/** A thing to look for in a capture: a string (UTF-8) or raw bytes, with a name for messages. */
export type Needle = string | { name: string; bytes: Uint8Array };

/**
 * Which needles occur anywhere in the capture: in any whole frame, or in any reassembled TCP
 * stream. Returns the names (the strings themselves for string needles) that were found.
 */
export function findInPcap(pcap: Pcap, needles: Needle[]): string[] {
  const enc = new TextEncoder();
  const wanted = needles.map((n) => typeof n === "string" ? { name: n, bytes: enc.encode(n) } : n);
  const streams = [...tcpStreams(tcpSegments(pcap)).values()];
  const found: string[] = [];
  for (const { name, bytes } of wanted) {
    const inFrame = pcap.packets.some((p) => indexOfBytes(p.data, bytes) !== -1);
    if (inFrame || streams.some((s) => indexOfBytes(s, bytes) !== -1)) found.push(name);
  }
  return found;
}
