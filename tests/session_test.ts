/**
 * The encrypted session over the in-memory pair and over real TCP, with real Noise cipher states
 * on random keys. Time is a FakeClock wherever timers matter; nothing sleeps.
 */
import { NodeDownError, PayloadTooLargeError, ProtocolError } from "../errors.ts";
import { NOISE_MAX_MESSAGE, REJECT_AFTER_MESSAGES } from "../transport/constants.ts";
import {
  decodeFrame,
  decodeFrames,
  encodeClose,
  encodeData,
  encodeKeepalive,
  encodeRekey,
  FLAG_FIRST,
  FLAG_LAST,
  type Frame,
  FrameType,
  maxDataChunk,
} from "../transport/frames.ts";
import { memoryTransportPair } from "../transport/memory.ts";
import { CipherState } from "../transport/noise_state.ts";
import { NoiseSession, type SessionOptions } from "../transport/session.ts";
import { connectTcp, listenTcp } from "../transport/tcp.ts";
import { FakeClock } from "../transport/timers.ts";
import type { CloseReason, PeerInfo, Transport } from "../transport/types.ts";
import { assert, assertEquals, assertMatch, assertRejects } from "./support/assert.ts";
import { take, turn } from "./support/async.ts";
import { concat } from "./support/bytes.ts";

const EMPTY = new Uint8Array(0);

/** A one-frame message: DATA FIRST|LAST for message `id`. */
function whole(id: number, payload: Uint8Array): Uint8Array {
  return encodeData(id, FLAG_FIRST | FLAG_LAST, payload.length, payload);
}

function bytes(n: number, seed = 1): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 131 + seed * 7) & 0xff;
  return b;
}

function cipher(key: Uint8Array): CipherState {
  const c = new CipherState();
  c.initializeKey(key);
  return c;
}

/** Matching cipher states for both ends, on two fresh random keys. */
function cipherPair(): [
  { send: CipherState; recv: CipherState },
  { send: CipherState; recv: CipherState },
] {
  const k1 = crypto.getRandomValues(new Uint8Array(32));
  const k2 = crypto.getRandomValues(new Uint8Array(32));
  return [{ send: cipher(k1), recv: cipher(k2) }, { send: cipher(k2), recv: cipher(k1) }];
}

function peer(name: string): PeerInfo {
  return { name, publicKey: new Uint8Array(32), fingerprint: "SHA256:test", hidden: false };
}

interface Log {
  lines: string[];
  log: (line: string) => void;
}

function logger(): Log {
  const lines: string[] = [];
  return { lines, log: (line) => lines.push(line) };
}

async function settle(rounds = 5): Promise<void> {
  for (let i = 0; i < rounds; i++) await turn();
}

/** Wraps a transport: `edit` may change (or drop, with null) each outgoing wire message. */
function tap(
  inner: Transport,
  edit: (message: Uint8Array, index: number) => Uint8Array | null = (m) => m,
): Transport & { sent: Uint8Array[] } {
  const sent: Uint8Array[] = [];
  return {
    sent,
    remoteAddress: inner.remoteAddress,
    closed: inner.closed,
    close: () => inner.close(),
    send(message) {
      const out = edit(message, sent.length);
      sent.push(message);
      return out ? inner.send(out) : Promise.resolve();
    },
    [Symbol.asyncIterator]: () => inner[Symbol.asyncIterator](),
  };
}

interface Pair {
  a: NoiseSession;
  b: NoiseSession;
  ciphers: ReturnType<typeof cipherPair>;
  logA: Log;
  logB: Log;
}

function sessionPair(
  transports: [Transport, Transport],
  options: SessionOptions = {},
  optionsB: SessionOptions = options,
): Pair {
  const ciphers = cipherPair();
  const logA = logger();
  const logB = logger();
  const a = new NoiseSession(transports[0], ciphers[0], peer("b@host"), {
    ...options,
    log: logA.log,
  });
  const b = new NoiseSession(transports[1], ciphers[1], peer("a@host"), {
    ...optionsB,
    log: logB.log,
  });
  return { a, b, ciphers, logA, logB };
}

function memoryPair(options: SessionOptions = {}, optionsB: SessionOptions = options): Pair {
  return sessionPair(memoryTransportPair(), { clock: new FakeClock(), ...options }, {
    clock: new FakeClock(),
    ...optionsB,
  });
}

async function tcpTransports(): Promise<[Transport, Transport]> {
  let accept!: (t: Transport) => void;
  const accepted = new Promise<Transport>((resolve) => accept = resolve);
  const listener = await listenTcp("127.0.0.1", 0, accept);
  const client = await connectTcp("127.0.0.1", listener.port);
  const server = await accepted;
  await listener.close();
  return [client, server];
}

/** A session on one end of a memory pair; the test plays the peer by hand on the other end. */
function rawPeer(options: SessionOptions = {}): {
  session: NoiseSession;
  raw: Transport;
  it: AsyncIterator<Uint8Array>;
  mine: { send: CipherState; recv: CipherState };
  theirs: { send: CipherState; recv: CipherState };
  log: Log;
  clock: FakeClock;
} {
  const [t, raw] = memoryTransportPair();
  const [mine, theirs] = cipherPair();
  const log = logger();
  const clock = new FakeClock();
  const session = new NoiseSession(t, mine, peer("b@host"), { clock, ...options, log: log.log });
  return { session, raw, it: raw[Symbol.asyncIterator](), mine, theirs, log, clock };
}

async function drain(s: AsyncIterable<Uint8Array>): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for await (const m of s) out.push(m);
  return out;
}

/** Sends `messages` one after the other (each waits for the previous one), so they arrive in order. */
async function sendAll(s: NoiseSession, messages: Uint8Array[]): Promise<void> {
  for (const m of messages) await s.send(m);
}

/** Compares message lists without a multi-megabyte diff when they differ. */
function assertSameMessages(got: Uint8Array[], want: Uint8Array[]): void {
  assertEquals(got.map((m) => m.length), want.map((m) => m.length), "message sizes in order");
  got.forEach((m, i) => {
    const w = want[i]!;
    const at = m.findIndex((byte, j) => byte !== w[j]);
    assert(at === -1, `message ${i} (${m.length} bytes) differs at byte ${at}`);
    assert(
      Object.getPrototypeOf(m) === Uint8Array.prototype,
      `message ${i} is not a plain Uint8Array`,
    );
  });
}

async function closeBoth(p: { a: NoiseSession; b: NoiseSession }): Promise<void> {
  await Promise.all([p.a.close(), p.b.close()]);
}

function errorOf(reason: CloseReason): Error {
  assert(reason.kind === "error", `expected an error close, got ${JSON.stringify(reason)}`);
  return reason.error;
}

const SIZES = [
  0,
  1,
  maxDataChunk(true),
  maxDataChunk(true) + 1,
  65535,
  maxDataChunk(true) + maxDataChunk(false),
  maxDataChunk(true) + maxDataChunk(false) + 1,
  200_000,
  1 << 20,
];

// --- delivery ------------------------------------------------------------------------------------

Deno.test("session delivers messages of every size whole and in order, both ways (memory)", async () => {
  const p = memoryPair();
  const toB = SIZES.map((n, i) => bytes(n, i));
  const toA = SIZES.map((n, i) => bytes(n, i + 100)).reverse();
  const gotB = take(p.b, toB.length);
  const gotA = take(p.a, toA.length);
  await Promise.all([sendAll(p.a, toB), sendAll(p.b, toA)]);
  assertSameMessages(await gotB, toB);
  assertSameMessages(await gotA, toA);
  await closeBoth(p);
});

Deno.test("session delivers messages of every size whole and in order over TCP", async () => {
  const p = sessionPair(await tcpTransports());
  const sizes = [...SIZES, 3 * 1024 * 1024 + 5];
  const toB = sizes.map((n, i) => bytes(n, i));
  const gotB = take(p.b, toB.length);
  const gotA = take(p.a, 1);
  await Promise.all([sendAll(p.a, toB), p.b.send(bytes(3))]);
  assertSameMessages(await gotB, toB);
  assertEquals(await gotA, [bytes(3)]);
  await p.a.close("done");
  assertEquals(await p.b.closed, { kind: "remote", message: "done" });
  assertEquals(p.logA.lines, []);
  assertEquals(p.logB.lines, []);
});

Deno.test("a plain session (ciphers null, benchmark baseline) frames messages the same way", async () => {
  const [ta, tb] = memoryTransportPair();
  const tapped = tap(ta);
  const a = new NoiseSession(tapped, null, peer("b"), { clock: new FakeClock() });
  const b = new NoiseSession(tb, null, peer("a"), { clock: new FakeClock() });
  const big = bytes(300_000, 4);
  const got = take(b, 2);
  await a.send(bytes(5));
  await a.send(big);
  assertSameMessages(await got, [bytes(5), big]);
  const first = decodeFrame(tapped.sent[0]!); // readable as is: nothing is encrypted
  assert(first.type === FrameType.Data && first.first && first.last);
  await a.close();
  assertEquals((await b.closed).kind, "remote");
});

Deno.test("send() above maxMessageSize rejects with PayloadTooLargeError and sends nothing", async () => {
  const [ta, tb] = memoryTransportPair();
  const tapped = tap(ta);
  const clock = new FakeClock();
  const a = new NoiseSession(tapped, cipherPair()[0], peer("b"), { maxMessageSize: 1000, clock });
  const err = await assertRejects(() => a.send(new Uint8Array(1001)), PayloadTooLargeError, "1001");
  assertMatch(err.message, /1000-byte limit/);
  assertEquals(tapped.sent.length, 0);
  await a.send(new Uint8Array(1000));
  assertEquals(tapped.sent.length, 1);
  await a.close();
  tb.close();
});

Deno.test("small messages sent after an 8 MiB message arrive before it (memory)", async () => {
  const p = memoryPair();
  const big = bytes(8 * 1024 * 1024, 9);
  const smalls = Array.from({ length: 10 }, (_, i) => bytes(100, i));
  const got = take(p.b, 11);
  const sends = [p.a.send(big), ...smalls.map((m) => p.a.send(m))];
  await Promise.all(sends);
  assertSameMessages(await got, [...smalls, big]);
  await closeBoth(p);
});

Deno.test("small messages sent after an 8 MiB message arrive before it over TCP", async () => {
  const p = sessionPair(await tcpTransports());
  const big = bytes(8 * 1024 * 1024, 9);
  const smalls = Array.from({ length: 10 }, (_, i) => bytes(100, i));
  const got = take(p.b, 11);
  const bigSent = p.a.send(big);
  await Promise.all(smalls.map((m) => p.a.send(m)));
  await bigSent;
  assertSameMessages(await got, [...smalls, big]);
  await closeBoth(p);
});

Deno.test("messages received before the peer closed are still yielded, then iteration ends", async () => {
  const p = memoryPair();
  for (let i = 0; i < 3; i++) await p.a.send(bytes(10, i));
  await p.a.close("bye");
  assertEquals(await drain(p.b), [bytes(10, 0), bytes(10, 1), bytes(10, 2)]);
  assertEquals(await p.a.closed, { kind: "local", message: "bye" });
  assertEquals(await p.b.closed, { kind: "remote", message: "bye" });
});

// --- coalescing ----------------------------------------------------------------------------------

Deno.test("small messages sent in one tick share one Noise message and arrive whole, in order", async () => {
  const [ta, tb] = memoryTransportPair();
  const tapped = tap(ta);
  const p = sessionPair([tapped, tb], { clock: new FakeClock() });
  const messages = Array.from({ length: 20 }, (_, i) => bytes(10 + i * 37, i));
  const got = take(p.b, messages.length);
  await Promise.all(messages.map((m) => p.a.send(m)));
  assertSameMessages(await got, messages);
  assertEquals(tapped.sent.length, 1, "one Noise message carried all 20");
  assertEquals([p.ciphers[0].send.nonce, p.ciphers[1].recv.nonce], [1n, 1n]);
  // More than fits in one Noise message: as few as can carry it, each within the limit.
  const many = Array.from({ length: 100 }, (_, i) => bytes(1000, i + 50));
  const gotMany = take(p.b, many.length);
  await Promise.all(many.map((m) => p.a.send(m)));
  assertSameMessages(await gotMany, many);
  assertEquals(tapped.sent.length, 1 + 2);
  assert(tapped.sent.every((m) => m.length <= NOISE_MAX_MESSAGE));
  assertEquals([p.logA.lines, p.logB.lines], [[], []]);
  await closeBoth(p);
});

Deno.test("a coalesced Noise message carries each message's frames in send order", async () => {
  const { session, it, theirs } = rawPeer();
  const sends = [bytes(5, 1), bytes(0), bytes(3000, 2), bytes(7, 3)].map((m) => session.send(m));
  await Promise.all(sends);
  const r = await it.next();
  assert(!r.done);
  const frames = decodeFrames(theirs.recv.decryptWithAd(EMPTY, r.value));
  assertEquals(
    frames.map((f) => f.type === FrameType.Data ? [f.messageId, f.first, f.last] : f.type),
    [[0, true, true], [1, true, true], [2, true, true], [3, true, true]],
  );
  await session.close();
});

Deno.test("a small message coalesced with a large chunk is copied out, not a view of it", async () => {
  const p = memoryPair();
  const big = bytes(200_000, 5);
  const small = bytes(20, 6);
  const got = take(p.b, 2);
  await Promise.all([p.a.send(small), p.a.send(big)]);
  const [gotSmall, gotBig] = await got;
  assertSameMessages([gotSmall!, gotBig!], [small, big]);
  assertEquals(gotSmall!.buffer.byteLength, small.length, "the small message owns its bytes");
  await closeBoth(p);
});

Deno.test("a tampered coalesced Noise message closes the session and delivers none of it", async () => {
  const [ta, tb] = memoryTransportPair();
  const tampered = tap(ta, (m, i) => {
    if (i !== 1) return m;
    const copy = m.slice();
    copy[copy.length - 20]! ^= 0x04;
    return copy;
  });
  const tapB = tap(tb);
  const p = sessionPair([tampered, tapB], { clock: new FakeClock() });
  const received = drain(p.b);
  const first = [bytes(10, 1), bytes(20, 2), bytes(30, 3)];
  await Promise.all(first.map((m) => p.a.send(m)));
  await Promise.all([bytes(10, 4), bytes(20, 5), bytes(30, 6)].map((m) => p.a.send(m)));
  assertEquals(tampered.sent.length, 2);
  assertEquals(await received, first);
  assert(errorOf(await p.b.closed) instanceof ProtocolError);
  assertEquals(p.logB.lines, [
    "session with a@host (memory) closed: message failed authentication",
  ]);
  assertEquals(tapB.sent.length, 0); // no CLOSE, no explanation
  assertEquals((await p.a.closed).kind, "error");
});

Deno.test("rekey by count puts REKEY last in a coalesced Noise message; the peer follows", async () => {
  const { session, it, mine, theirs, log } = rawPeer({ rekeyAfterMessages: 3n });
  const next = async (): Promise<Frame[]> => {
    const r = await it.next();
    assert(!r.done);
    return decodeFrames(theirs.recv.decryptWithAd(EMPTY, r.value));
  };
  await session.send(bytes(1, 1)); // nonce 0
  await session.send(bytes(1, 2)); // nonce 1
  assertEquals((await next()).length, 1);
  assertEquals((await next()).length, 1);
  // Nonce 2 is the last this key may carry: the data sent now goes with a REKEY behind it.
  await Promise.all([bytes(4, 3), bytes(5, 4), bytes(6, 5)].map((m) => session.send(m)));
  const batch = await next();
  assertEquals(batch.map((f) => f.type), [1, 1, 1, FrameType.Rekey]);
  assertEquals(mine.send.nonce, 0n, "the session switched its send key");
  theirs.recv.rekey();
  theirs.recv.setNonce(0n);
  await session.send(bytes(7, 6));
  const after = await next(); // decrypts only under the new key
  assert(after[0]!.type === FrameType.Data && after[0]!.messageId === 5);
  assertEquals(log.lines, []);
  await session.close();
});

Deno.test("a peer's REKEY last in a coalesced Noise message switches keys after its frames", async () => {
  const { session, raw, mine, theirs, log } = rawPeer();
  const got = take(session, 4);
  await raw.send(
    theirs.send.encryptWithAd(EMPTY, concat(whole(0, bytes(3, 1)), whole(1, bytes(4, 2)))),
  );
  await raw.send(
    theirs.send.encryptWithAd(
      EMPTY,
      concat(whole(2, bytes(5, 3)), encodeKeepalive(), encodeRekey()),
    ),
  );
  theirs.send.rekey();
  theirs.send.setNonce(0n);
  await raw.send(theirs.send.encryptWithAd(EMPTY, whole(3, bytes(6, 4))));
  assertEquals(await got, [bytes(3, 1), bytes(4, 2), bytes(5, 3), bytes(6, 4)]);
  assertEquals(mine.recv.nonce, 1n);
  assertEquals(log.lines, []);
  await session.close();
});

Deno.test("a REKEY or CLOSE that is not the last frame of its Noise message closes the session", async () => {
  for (
    const [plaintext, why] of [
      [concat(encodeRekey(), whole(0, bytes(2))), "REKEY frame is followed by 14 bytes"],
      [concat(encodeClose(0, "bye"), encodeKeepalive()), "CLOSE frame is followed by 1 bytes"],
    ] as const
  ) {
    const { session, raw, it, theirs, log } = rawPeer();
    await raw.send(theirs.send.encryptWithAd(EMPTY, plaintext));
    assertEquals(await drain(session), []);
    assert(errorOf(await session.closed) instanceof ProtocolError);
    assertEquals(log.lines.length, 1);
    assert(log.lines[0]!.includes(`malformed frame: ${why}`), log.lines[0]);
    assertEquals((await it.next()).done, true);
  }
});

Deno.test("a DATA length that overruns its Noise message is a ProtocolError before any use", async () => {
  const { session, raw, it, theirs, log } = rawPeer();
  // A good message first in the same Noise message: it is not delivered either.
  const overrun = whole(1, bytes(100)).subarray(0, 12 + 10); // declares 100, carries 10
  await raw.send(theirs.send.encryptWithAd(EMPTY, concat(whole(0, bytes(5)), overrun)));
  assertEquals(await drain(session), []);
  assert(errorOf(await session.closed) instanceof ProtocolError);
  assertEquals(log.lines, [
    "session with b@host (memory) closed: malformed frame: "
    + "DATA frame declares a 100-byte chunk; only 10 bytes follow",
  ]);
  assertEquals((await it.next()).done, true);
});

Deno.test("close() sends what was queued in the same tick first, CLOSE last in one message", async () => {
  const [ta, tb] = memoryTransportPair();
  const tapped = tap(ta);
  const p = sessionPair([tapped, tb], { clock: new FakeClock() });
  const queued = [bytes(10, 1), bytes(20, 2)];
  const sends = queued.map((m) => p.a.send(m));
  await p.a.close("bye");
  await Promise.all(sends);
  assertEquals(await drain(p.b), queued);
  assertEquals(await p.b.closed, { kind: "remote", message: "bye" });
  assertEquals(tapped.sent.length, 1);
});

// --- close ---------------------------------------------------------------------------------------

Deno.test("close() tells the peer, rejects pending sends with NodeDownError, and is idempotent", async () => {
  const p = memoryPair();
  const pending = p.a.send(bytes(8 * 1024 * 1024));
  const closing = p.a.close("maintenance");
  await assertRejects(() => pending, NodeDownError);
  await closing;
  await p.a.close("again");
  assertEquals(await p.a.closed, { kind: "local", message: "maintenance" });
  assertEquals(await p.b.closed, { kind: "remote", message: "maintenance" });
  assertEquals(await drain(p.b), []); // the partial 8 MiB message is dropped, not yielded
  await assertRejects(() => p.a.send(bytes(1)), NodeDownError);
  await assertRejects(() => p.b.send(bytes(1)), NodeDownError);
});

Deno.test("a transport lost mid-send fails pending sends with NodeDownError", async () => {
  const { session, raw, log } = rawPeer();
  const pending = session.send(bytes(8 * 1024 * 1024));
  raw.close();
  await assertRejects(() => pending, NodeDownError);
  const reason = await session.closed;
  assert(errorOf(reason) instanceof NodeDownError);
  assertEquals(log.lines.length, 1);
  assertMatch(log.lines[0]!, /^session with b@host \(memory\) closed: /);
});

// --- authentication and malformed input ------------------------------------------------------------

Deno.test("a flipped byte in a transport frame closes the session, logged locally, peer told nothing", async () => {
  const [ta, tb] = memoryTransportPair();
  const tampered = tap(ta, (m, i) => {
    if (i !== 2) return m;
    const copy = m.slice();
    copy[5]! ^= 0x01;
    return copy;
  });
  const tapB = tap(tb);
  const p = sessionPair([tampered, tapB], { clock: new FakeClock() });
  const received = drain(p.b);
  await p.a.send(bytes(10, 1));
  await p.a.send(bytes(10, 2));
  await p.a.send(bytes(10, 3)).catch(() => {});
  assertEquals(await received, [bytes(10, 1), bytes(10, 2)]);
  const reason = await p.b.closed;
  assert(errorOf(reason) instanceof ProtocolError);
  assertEquals(p.logB.lines, [
    "session with a@host (memory) closed: message failed authentication",
  ]);
  assertEquals(tapB.sent.length, 0); // no CLOSE, no explanation
  assertEquals((await p.a.closed).kind, "error");
});

Deno.test("garbage and truncated frames close the session with a local log line", async () => {
  for (
    const [frame, why] of [
      [crypto.getRandomValues(new Uint8Array(40)), "message failed authentication"],
      [new Uint8Array(10), "message of 10 bytes is shorter than its authentication tag"],
      [EMPTY, "message of 0 bytes is shorter than its authentication tag"],
    ] as const
  ) {
    const { session, raw, it, log } = rawPeer();
    await raw.send(frame);
    const reason = await session.closed;
    assert(errorOf(reason) instanceof ProtocolError);
    assertEquals(log.lines, [`session with b@host (memory) closed: ${why}`]);
    assertEquals((await it.next()).done, true); // nothing was sent back
  }
});

Deno.test("an empty DATA payload with a corrupted tag is rejected", async () => {
  const { session, raw, theirs, log } = rawPeer();
  const empty = encodeData(0, FLAG_FIRST | FLAG_LAST, 0, EMPTY);
  await raw.send(theirs.send.encryptWithAd(EMPTY, empty));
  const bad = theirs.send.encryptWithAd(EMPTY, encodeData(1, FLAG_FIRST | FLAG_LAST, 0, EMPTY));
  bad[bad.length - 1]! ^= 0x80;
  await raw.send(bad);
  assertEquals(await drain(session), [EMPTY]);
  assert(errorOf(await session.closed) instanceof ProtocolError);
  assertEquals(log.lines, ["session with b@host (memory) closed: message failed authentication"]);
});

Deno.test("a well-authenticated but malformed frame closes the session", async () => {
  const cases: [Uint8Array[], string][] = [
    [[Uint8Array.of(0x7f)], "malformed frame: unknown frame type 0x7f"],
    [[Uint8Array.of(FrameType.Data, 0, 0, 0)], "malformed frame: DATA frame of 4 bytes"],
    [[encodeData(3, 0, undefined, bytes(5))], "DATA frame for message 3, which never started"],
    [
      [encodeData(3, FLAG_FIRST, 10, bytes(5)), encodeData(3, FLAG_FIRST, 10, bytes(5))],
      "message 3 started twice",
    ],
    [
      [encodeData(3, FLAG_FIRST, 10, bytes(5)), encodeData(3, FLAG_LAST, undefined, bytes(6))],
      "message 3 ended at 11 bytes, declared 10",
    ],
    [
      [encodeData(3, FLAG_FIRST, 10, bytes(5)), encodeData(3, FLAG_LAST, undefined, bytes(4))],
      "message 3 ended at 9 bytes, declared 10",
    ],
  ];
  for (const [frames, why] of cases) {
    const { session, raw, it, theirs, log } = rawPeer();
    for (const f of frames) await raw.send(theirs.send.encryptWithAd(EMPTY, f));
    assert(errorOf(await session.closed) instanceof ProtocolError, why);
    assertEquals(log.lines.length, 1);
    assert(log.lines[0]!.includes(why), `"${log.lines[0]}" lacks "${why}"`);
    assertEquals((await it.next()).done, true);
  }
});

Deno.test("a declared message length over maxMessageSize closes the session, logged, peer told nothing", async () => {
  const { session, raw, it, theirs, log } = rawPeer({ maxMessageSize: 1000 });
  await raw.send(theirs.send.encryptWithAd(EMPTY, encodeData(0, FLAG_FIRST, 5000, bytes(10))));
  assert(errorOf(await session.closed) instanceof ProtocolError);
  assertEquals(log.lines, [
    "session with b@host (memory) closed: the peer announced a message of 5000 bytes, "
    + "over the 1000-byte limit (maxMessageSize)",
  ]);
  assertEquals((await it.next()).done, true);
});

// --- rekey ---------------------------------------------------------------------------------------

Deno.test("rekey by message count under two-way traffic loses, duplicates or reorders nothing", async () => {
  const p = memoryPair({ rekeyAfterMessages: 100n });
  // Two streams per direction, each sent in order: a mostly-small one and one of multi-frame
  // messages, so frames interleave and REKEY lands inside messages. Byte 0 names the stream.
  const stream = (id: number, count: number, size: (i: number) => number) =>
    Array.from({ length: count }, (_, i) => {
      const m = bytes(Math.max(1, size(i)), id * 1000 + i);
      m[0] = id;
      return m;
    });
  const toB = [stream(0, 600, (i) => (i * 13) % 700), stream(1, 20, (i) => 100_000 + i * 997)];
  const toA = [stream(2, 600, (i) => (i * 17) % 900), stream(3, 20, (i) => 150_000 - i * 991)];
  const count = (streams: Uint8Array[][]) => streams.reduce((n, s) => n + s.length, 0);
  const gotB = take(p.b, count(toB));
  const gotA = take(p.a, count(toA));
  await Promise.all([...toB.map((s) => sendAll(p.a, s)), ...toA.map((s) => sendAll(p.b, s))]);
  const byStream = (messages: Uint8Array[], id: number) => messages.filter((m) => m[0] === id);
  const [atB, atA] = [await gotB, await gotA];
  toB.forEach((s, i) => assertSameMessages(byStream(atB, i), s));
  toA.forEach((s, i) => assertSameMessages(byStream(atA, i + 2), s));
  // Far more than 100 frames went each way, yet no key carried 100 frames.
  for (const c of [p.ciphers[0].send, p.ciphers[0].recv, p.ciphers[1].send, p.ciphers[1].recv]) {
    assert(c.nonce < 100n, `nonce ${c.nonce}`);
  }
  assertEquals(p.ciphers[0].send.nonce, p.ciphers[1].recv.nonce);
  assertEquals([p.logA.lines, p.logB.lines], [[], []]);
  await closeBoth(p);
});

Deno.test("rekey by time (FakeClock) happens mid-message with nothing lost", async () => {
  const clock = new FakeClock();
  const opts = { clock, keepaliveIntervalMs: Infinity, deadPeerTimeoutMs: Infinity };
  const [ta, tb] = memoryTransportPair();
  let firstOfBig!: () => void;
  const bigStarted = new Promise<void>((resolve) => firstOfBig = resolve);
  const tapped = tap(ta, (m, i) => {
    if (i === 10) firstOfBig();
    return m;
  });
  const p = sessionPair([tapped, tb], opts);
  const before = Array.from({ length: 10 }, (_, i) => bytes(50, i));
  const got = take(p.b, 12);
  for (const m of before) await p.a.send(m);
  assertEquals(p.ciphers[0].send.nonce, 10n);
  const big = bytes(2 * 1024 * 1024, 77); // 33 Noise messages
  const bigSent = p.a.send(big);
  await bigStarted; // its first Noise message is out under the old key
  clock.advance(120_000); // REKEY goes out between two Noise messages of `big`
  assertEquals(p.ciphers[0].send.nonce, 0n);
  assert(tapped.sent.length < 10 + 33, `REKEY after ${tapped.sent.length - 10} parts of big`);
  const after = bytes(33, 99);
  await Promise.all([bigSent, p.a.send(after)]);
  assertSameMessages(await got, [...before, after, big]);
  assert(p.ciphers[1].recv.nonce < 40n); // the receiver switched keys too
  assertEquals(p.logA.lines, []);
  assertEquals(p.logB.lines, []);
  await closeBoth(p);
});

Deno.test("a session closes rather than use one key for REJECT_AFTER_MESSAGES messages", async () => {
  const p = memoryPair({ rekeyAfterMessages: 2n ** 64n });
  p.ciphers[0].send.setNonce(REJECT_AFTER_MESSAGES - 1n);
  p.ciphers[1].recv.setNonce(REJECT_AFTER_MESSAGES - 1n);
  const got = take(p.b, 1);
  await p.a.send(bytes(4));
  assertEquals(await got, [bytes(4)]);
  await assertRejects(() => p.a.send(bytes(4)), NodeDownError);
  const reason = await p.a.closed;
  assertMatch(errorOf(reason).message, /without a rekey/);
  assertEquals(p.logA.lines.length, 1);
});

Deno.test("a peer that sends past REJECT_AFTER_MESSAGES without rekeying is cut off", async () => {
  const { session, raw, theirs, mine, log } = rawPeer();
  theirs.send.setNonce(REJECT_AFTER_MESSAGES);
  mine.recv.setNonce(REJECT_AFTER_MESSAGES);
  await raw.send(theirs.send.encryptWithAd(EMPTY, encodeKeepalive()));
  assert(errorOf(await session.closed) instanceof ProtocolError);
  assertMatch(log.lines[0]!, /without a rekey/);
});

// --- keepalive and dead peers -------------------------------------------------------------------------

Deno.test("an idle session sends KEEPALIVE and closes as dead after the timeout (FakeClock)", async () => {
  const { session, it, theirs, clock, log } = rawPeer();
  const frameType = async (next: Promise<IteratorResult<Uint8Array>>) => {
    const r = await next;
    assert(!r.done);
    return decodeFrame(theirs.recv.decryptWithAd(EMPTY, r.value)).type;
  };
  const pending = async (p: Promise<unknown>) =>
    await Promise.race([p.then(() => false), turn().then(() => true)]);
  let next = it.next();
  clock.advance(2_499);
  assert(await pending(next), "nothing is sent before the keepalive interval");
  clock.advance(1); // t = 2500
  assertEquals(await frameType(next), FrameType.Keepalive);
  clock.advance(1_000); // t = 3500
  await session.send(bytes(3)); // traffic counts: the next keepalive is due at 6000, not 5000
  assertEquals(await frameType(it.next()), FrameType.Data);
  next = it.next();
  clock.advance(2_499);
  assert(await pending(next), "no keepalive right after traffic");
  clock.advance(1); // t = 6000
  assertEquals(await frameType(next), FrameType.Keepalive);
  assertEquals(theirs.recv.nonce, 3n);
  clock.advance(3_999); // t = 9999: still alive
  assert(await pending(session.closed), "not dead before the timeout");
  clock.advance(1);
  const reason = await session.closed;
  assertEquals(reason.kind, "dead");
  assertMatch(reason.message, /nothing received for 10\.0 s/);
  assertEquals(log.lines.length, 1);
  assertMatch(
    log.lines[0]!,
    /^session with b@host \(memory\) closed: nothing received for 10\.0 s/,
  );
  assertEquals(clock.pending, 0);
  await assertRejects(() => session.send(bytes(1)), NodeDownError);
});

Deno.test("two idle sessions keep each other alive with keepalives (FakeClock)", async () => {
  const clock = new FakeClock();
  const p = sessionPair(memoryTransportPair(), { clock });
  for (let t = 0; t < 60_000; t += 500) {
    clock.advance(500);
    await settle(2);
  }
  assertEquals(await Promise.race([p.a.closed, p.b.closed, turn().then(() => "open")]), "open");
  assert(p.ciphers[0].send.nonce >= 20n, "keepalives were sent");
  await closeBoth(p);
  assertEquals(p.logA.lines, []);
});

Deno.test("a session resumes reading through a started transport iterator", async () => {
  const [t, raw] = memoryTransportPair();
  const [mine, theirs] = cipherPair();
  await raw.send(Uint8Array.of(1, 2, 3)); // e.g. the handshake's last message, read by the caller
  await raw.send(
    theirs.send.encryptWithAd(EMPTY, encodeData(0, FLAG_FIRST | FLAG_LAST, 2, bytes(2))),
  );
  const it = t[Symbol.asyncIterator]();
  assertEquals((await it.next()).value, Uint8Array.of(1, 2, 3));
  const session = new NoiseSession(t, mine, peer("b"), { iterator: it, clock: new FakeClock() });
  assertEquals(await take(session, 1), [bytes(2)]);
  await session.close();
});
