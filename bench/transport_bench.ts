/**
 * Section 1 workloads: raw crypto limits, Noise handshakes and session throughput. Both ends of
 * every pair run in this process.
 *
 * @module
 */
import { chacha20poly1305 } from "@noble/ciphers/chacha.js";
import { createCipheriv, randomBytes } from "node:crypto";
import { connect, type Socket } from "node:net";
import { dirname, join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import nacl from "tweetnacl";
import {
  aeadDecrypt,
  aeadEncrypt,
  dh,
  generateKeyPair,
  type KeyPair,
} from "../transport/crypto.ts";
import { type HandshakeConfig, initiate, respond } from "../transport/handshake.ts";
import { KNOWN_NODES_FILE_NAME, KnownNodes } from "../transport/known_nodes.ts";
import { memoryTransportPair } from "../transport/memory.ts";
import { plainNetwork, secureNetwork, tcpDialer } from "../transport/network.ts";
import { NoiseSession } from "../transport/session.ts";
import type { Network, Session } from "../transport/types.ts";
import { type BenchContext, HOST, MiB } from "./context.ts";
import {
  allCpus,
  cpuMs,
  pinned,
  pinSelf,
  scriptCommand,
  sleep,
  startChild,
  stopChild,
} from "./procs.ts";
import { SESSION_PEER_NAME } from "./session_peer.ts";
import { type Mode, PSK_ENV, toHex } from "./setup.ts";
import { mbps, median, timeLoop, timeLoopAsync } from "./stats.ts";

const EMPTY = new Uint8Array(0);
const INITIATOR = "benchI@127.0.0.1";
const RESPONDER = "benchR@127.0.0.1";

/** Raw speed of the primitives, the limit the transport is held against. */
export interface RawCrypto {
  encMBps: number;
  decMBps: number;
  nodeEncMBps: number;
  /** Encrypt and decrypt of every byte on one thread: the ceiling of an in-process pair. */
  encDecMBps: number;
  dhPerSec: number;
  keygenPerSec: number;
  /** 6 DH + 2 key generations: one handshake, both sides on this thread. */
  handshakeBound: number;
  /** The pure-JS alternatives the choice was made against: @noble/ciphers ChaCha20-Poly1305. */
  nobleEncMBps: number;
  /** tweetnacl's X25519 (the library the original design named). */
  tweetnaclDhPerSec: number;
}

/** ChaCha20-Poly1305 on 64 KiB chunks (crypto.ts and node:crypto directly), X25519. */
export function rawCrypto(ctx: BenchContext): RawCrypto {
  const key = randomBytes(32);
  const chunk = randomBytes(64 * 1024);
  const ms = ctx.q(800, 150);
  timeLoop((i) => aeadEncrypt(key, BigInt(i), EMPTY, chunk), 100);
  const enc = timeLoop((i) => aeadEncrypt(key, BigInt(i), EMPTY, chunk), ms, 4);
  const sealed = aeadEncrypt(key, 0n, EMPTY, chunk);
  const dec = timeLoop(() => aeadDecrypt(key, 0n, EMPTY, sealed), ms, 4);
  const iv = new Uint8Array(12);
  const nodeEnc = timeLoop(
    () => {
      const c = createCipheriv("chacha20-poly1305", key, iv, { authTagLength: 16 });
      c.update(chunk);
      c.final();
      c.getAuthTag();
    },
    ms,
    4,
  );
  const a = generateKeyPair();
  const b = generateKeyPair();
  const dhs = timeLoop(() => dh(a.privateKey, b.publicKey), ctx.q(500, 100), 10);
  const kg = timeLoop(() => generateKeyPair(), ctx.q(500, 100), 10);
  const noble = timeLoop(() => chacha20poly1305(key, iv).encrypt(chunk), ctx.q(400, 100), 2);
  const naclSecret = randomBytes(32);
  const naclPublic = nacl.scalarMult.base(randomBytes(32));
  const naclDh = timeLoop(() => nacl.scalarMult(naclSecret, naclPublic), ctx.q(400, 100), 2);
  const encMBps = mbps(enc.iterations * chunk.length, enc.seconds);
  const decMBps = mbps(dec.iterations * chunk.length, dec.seconds);
  const dhPerSec = dhs.iterations / dhs.seconds;
  const keygenPerSec = kg.iterations / kg.seconds;
  return {
    encMBps,
    decMBps,
    nodeEncMBps: mbps(nodeEnc.iterations * chunk.length, nodeEnc.seconds),
    encDecMBps: 1 / (1 / encMBps + 1 / decMBps),
    dhPerSec,
    keygenPerSec,
    handshakeBound: 1 / (6 / dhPerSec + 2 / keygenPerSec),
    nobleEncMBps: mbps(noble.iterations * chunk.length, noble.seconds),
    tweetnaclDhPerSec: naclDh.iterations / naclDh.seconds,
  };
}

/** Handshake config of a bench endpoint; with `pinning`, a known_nodes file of its own. */
export function handshakeConfig(
  ctx: BenchContext,
  name: string,
  identity: KeyPair,
  pinning: boolean,
): HandshakeConfig {
  return {
    localName: name,
    identity,
    psk: ctx.psk,
    log: (line) => console.error(`[${name}] ${line}`),
    ...(pinning
      ? {
        knownNodes: KnownNodes.load(join(ctx.freshDir("known"), KNOWN_NODES_FILE_NAME), {
          strict: false,
        }),
      }
      : {}),
  };
}

async function closeAll(sessions: Session[]): Promise<void> {
  await Promise.all(sessions.splice(0).map((s) => s.close().catch(() => {})));
}

/**
 * Sequential full handshakes (`initiate` against `respond`) over in-memory transport pairs,
 * both sides in this process; handshakes per second of handshake time (closing is not timed).
 */
export async function memoryHandshakes(
  ctx: BenchContext,
  pinning: boolean,
  ms = ctx.q(1500, 300),
): Promise<number> {
  const cfgI = handshakeConfig(ctx, INITIATOR, generateKeyPair(), pinning);
  const cfgR = handshakeConfig(ctx, RESPONDER, generateKeyPair(), pinning);
  const open: Session[] = [];
  const once = async (): Promise<number> => {
    const [a, b] = memoryTransportPair();
    const t0 = performance.now();
    const [s1, s2] = await Promise.all([initiate(a, RESPONDER, cfgI), respond(b, cfgR)]);
    const dt = performance.now() - t0;
    open.push(s1);
    if (s2) open.push(s2);
    if (open.length >= 128) await closeAll(open);
    return dt;
  };
  for (let i = 0; i < ctx.q(50, 10); i++) await once();
  let busy = 0;
  const r = await timeLoopAsync(
    async () => {
      busy += await once();
    },
    ms,
    20,
    50_000,
  );
  await closeAll(open);
  return r.iterations / (busy / 1000);
}

/** Sequential TCP connect + handshake to a listener in this process (closing not timed). */
export async function tcpHandshakes(
  ctx: BenchContext,
): Promise<{ perSec: number; medianUs: number }> {
  const server = secureNetwork(
    tcpDialer,
    handshakeConfig(ctx, RESPONDER, generateKeyPair(), true),
  );
  const accepted: Session[] = [];
  const listener = await server.listen({ host: HOST, port: 0 }, (s) => accepted.push(s));
  const client = secureNetwork(tcpDialer, handshakeConfig(ctx, INITIATOR, generateKeyPair(), true));
  const samples: number[] = [];
  const once = async (record: boolean) => {
    const t0 = performance.now();
    const s = await client.connect({ host: HOST, port: listener.port }, {
      expectedName: RESPONDER,
    });
    if (record) samples.push(performance.now() - t0);
    await s.close();
    await closeAll(accepted);
  };
  try {
    for (let i = 0; i < ctx.q(20, 5); i++) await once(false);
    await timeLoopAsync(() => once(true), ctx.q(1500, 300), 10, 20_000);
  } finally {
    await listener.close();
    await closeAll(accepted);
  }
  const total = samples.reduce((a, b) => a + b, 0);
  return { perSec: samples.length / (total / 1000), medianUs: median(samples) * 1000 };
}

/** A connected session pair, [sender, receiver], and how to close it. */
export interface SessionPair {
  readonly sender: Session;
  readonly receiver: Session;
  close(): Promise<void>;
}

/** Sessions over an in-memory transport pair: Noise (after a handshake) or plain. */
export async function memoryPair(ctx: BenchContext, mode: Mode): Promise<SessionPair> {
  const [a, b] = memoryTransportPair();
  let sender: Session;
  let receiver: Session | undefined;
  if (mode === "plain") {
    const peer = (name: string) => ({ name, publicKey: EMPTY, fingerprint: "", hidden: false });
    sender = new NoiseSession(a, null, peer(RESPONDER));
    receiver = new NoiseSession(b, null, peer(INITIATOR));
  } else {
    const cfgI = handshakeConfig(ctx, INITIATOR, generateKeyPair(), false);
    const cfgR = handshakeConfig(ctx, RESPONDER, generateKeyPair(), false);
    [sender, receiver] = await Promise.all([initiate(a, RESPONDER, cfgI), respond(b, cfgR)]);
    if (!receiver) throw new Error("in-memory handshake failed");
  }
  const r = receiver;
  return {
    sender,
    receiver: r,
    close: async () => void await Promise.all([sender.close(), r.close()]),
  };
}

/** Sessions over TCP loopback, both ends in this process: Noise or plain. */
export async function tcpPair(ctx: BenchContext, mode: Mode): Promise<SessionPair> {
  const net = (name: string): Network =>
    mode === "plain"
      ? plainNetwork(tcpDialer, { localName: name })
      : secureNetwork(tcpDialer, handshakeConfig(ctx, name, generateKeyPair(), false));
  let accepted!: (s: Session) => void;
  const got = new Promise<Session>((resolve) => accepted = resolve);
  const listener = await net(RESPONDER).listen({ host: HOST, port: 0 }, accepted);
  const sender = await net(INITIATOR).connect({ host: HOST, port: listener.port }, {
    expectedName: RESPONDER,
  });
  const receiver = await got;
  return {
    sender,
    receiver,
    close: async () => {
      await listener.close();
      await Promise.all([sender.close(), receiver.close()]);
    },
  };
}

/** Sends `count` messages of `size` bytes one after another; MB/s until the last arrived. */
export async function pump(pair: SessionPair, size: number, count: number): Promise<number> {
  const message = randomBytes(size);
  const it = pair.receiver[Symbol.asyncIterator]();
  const t0 = performance.now();
  const received = (async () => {
    for (let got = 0; got < count; got++) {
      const r = await it.next();
      if (r.done || r.value.length !== size) throw new Error("session ended during the pump");
    }
  })();
  for (let i = 0; i < count; i++) await pair.sender.send(message);
  await received;
  return mbps(size * count, (performance.now() - t0) / 1000);
}

/** MB/s of 1 MiB messages through `pair`, after a warm-up. */
export async function sessionThroughput(ctx: BenchContext, pair: SessionPair): Promise<number> {
  await pump(pair, MiB, ctx.q(8, 2));
  return await pump(pair, MiB, ctx.q(96, 12));
}

/**
 * MB/s of 1 MiB messages sent by bench/session_peer.ts in its own process to a session here:
 * each side does only its half of the crypto, as two real nodes would.
 */
export async function crossProcessThroughput(
  ctx: BenchContext,
  mode: Mode | "tcp",
): Promise<number> {
  return await withSessionPeer(ctx, mode, (peer) => {
    const port = Number(peer.match[1]);
    return mode === "tcp" ? fetchRaw(ctx, port) : fetchFrom(ctx, mode, port);
  });
}

type SessionPeer = Awaited<ReturnType<typeof startChild>>;

/**
 * Runs `fn` against bench/session_peer.ts started in `mode` in its own process, pinned to CPU 1
 * while this process is pinned to CPU 0; stops the peer and unpins afterwards.
 */
async function withSessionPeer<T>(
  ctx: BenchContext,
  mode: string,
  fn: (peer: SessionPeer) => Promise<T>,
): Promise<T> {
  const here = dirname(fileURLToPath(import.meta.url));
  const [cmd, args] = pinned(1, scriptCommand(join(here, "session_peer.ts"), [mode]));
  pinSelf("0");
  try {
    const peer = await startChild(cmd, args, {
      env: { ...process.env as Record<string, string>, [PSK_ENV]: toHex(ctx.psk) },
      stream: "stdout",
      ready: /^ready (\d+)$/,
      timeoutMs: 30_000,
    });
    try {
      return await fn(peer);
    } finally {
      await stopChild(peer.child);
    }
  } finally {
    pinSelf(allCpus());
  }
}

/**
 * CPU per handshake of each side, measured apart: sequential TCP connect + handshake + close
 * against bench/session_peer.ts (the responder) in its own process. Each side's CPU time
 * (from /proc, both processes pinned when possible) is divided by the number of handshakes.
 */
export async function handshakeCpu(
  ctx: BenchContext,
): Promise<{ initiatorUs: number; responderUs: number }> {
  return await withSessionPeer(ctx, "secure", async (peer) => {
    const network = secureNetwork(
      tcpDialer,
      handshakeConfig(ctx, INITIATOR, generateKeyPair(), true),
    );
    const port = Number(peer.match[1]);
    const once = async () => {
      const s = await network.connect({ host: HOST, port }, { expectedName: SESSION_PEER_NAME });
      await s.close();
    };
    for (let i = 0; i < ctx.q(30, 5); i++) await once();
    const n = ctx.q(400, 40);
    const self0 = cpuMs(process.pid);
    const peer0 = cpuMs(peer.child.pid!);
    for (let i = 0; i < n; i++) await once();
    await sleep(50); // the responder finishes its side of the last close
    return {
      initiatorUs: (cpuMs(process.pid) - self0) * 1000 / n,
      responderUs: (cpuMs(peer.child.pid!) - peer0) * 1000 / n,
    };
  });
}

async function fetchRaw(ctx: BenchContext, port: number): Promise<number> {
  const socket: Socket = await new Promise((resolve, reject) => {
    const s = connect({ host: HOST, port, noDelay: true }, () => resolve(s));
    s.once("error", reject);
  });
  try {
    const fetch = (count: number) =>
      new Promise<number>((resolve, reject) => {
        let left = count * MiB;
        const t0 = performance.now();
        const onData = (chunk: Uint8Array) => {
          left -= chunk.length;
          if (left > 0) return;
          socket.off("data", onData);
          resolve(mbps(count * MiB, (performance.now() - t0) / 1000));
        };
        socket.on("data", onData);
        socket.once("error", reject);
        socket.write(`${count} ${MiB}\n`);
      });
    await fetch(ctx.q(8, 2));
    return await fetch(ctx.q(256, 32));
  } finally {
    socket.destroy();
  }
}

async function fetchFrom(ctx: BenchContext, mode: Mode, port: number): Promise<number> {
  const network = mode === "plain"
    ? plainNetwork(tcpDialer, { localName: INITIATOR })
    : secureNetwork(tcpDialer, handshakeConfig(ctx, INITIATOR, generateKeyPair(), false));
  const session = await network.connect({ host: HOST, port }, {
    expectedName: SESSION_PEER_NAME,
  });
  try {
    const it = session[Symbol.asyncIterator]();
    const fetch = async (count: number) => {
      const t0 = performance.now();
      await session.send(new TextEncoder().encode(`${count} ${MiB}`));
      for (let i = 0; i < count; i++) {
        const r = await it.next();
        if (r.done || r.value.length !== MiB) throw new Error("session_peer stopped sending");
      }
      return mbps(count * MiB, (performance.now() - t0) / 1000);
    };
    await fetch(ctx.q(8, 2));
    return await fetch(ctx.q(128, 16));
  } finally {
    await session.close();
  }
}

/** All of section 1's figures. */
export interface TransportFigures {
  raw: RawCrypto;
  handshakesMemory: number;
  handshakesMemoryNoPinning: number;
  handshakesTcp: { perSec: number; medianUs: number };
  /** CPU per handshake of each side, in separate processes (TCP accept/close included). */
  handshakeCpu: { initiatorUs: number; responderUs: number };
  memorySecure: number;
  memoryPlain: number;
  tcpSecure: number;
  tcpPlain: number;
  crossSecure: number;
  crossPlain: number;
  crossTcp: number;
}

/** Runs section 1; `progress` is told what is being measured. */
export async function transportFigures(
  ctx: BenchContext,
  progress: (what: string) => void,
): Promise<TransportFigures> {
  progress("raw crypto");
  const raw = rawCrypto(ctx);
  progress("handshakes in memory");
  const handshakesMemory = await memoryHandshakes(ctx, true);
  const handshakesMemoryNoPinning = await memoryHandshakes(ctx, false);
  progress("handshakes over TCP");
  const handshakesTcp = await tcpHandshakes(ctx);
  progress("handshake CPU per side");
  const handshakeCpuFigures = await handshakeCpu(ctx);
  const throughput = async (open: () => Promise<SessionPair>) => {
    const pair = await open();
    try {
      return await sessionThroughput(ctx, pair);
    } finally {
      await pair.close();
    }
  };
  progress("session throughput");
  return {
    raw,
    handshakesMemory,
    handshakesMemoryNoPinning,
    handshakesTcp,
    handshakeCpu: handshakeCpuFigures,
    memorySecure: await throughput(() => memoryPair(ctx, "secure")),
    memoryPlain: await throughput(() => memoryPair(ctx, "plain")),
    tcpSecure: await throughput(() => tcpPair(ctx, "secure")),
    tcpPlain: await throughput(() => tcpPair(ctx, "plain")),
    crossSecure: await crossProcessThroughput(ctx, "secure"),
    crossPlain: await crossProcessThroughput(ctx, "plain"),
    crossTcp: await crossProcessThroughput(ctx, "tcp"),
  };
}
