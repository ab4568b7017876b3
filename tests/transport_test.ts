/**
 * Below the session: frames, the fake clock, the in-memory pair, the TCP wire decoder and TCP.
 */
import { createServer, type Server, type Socket } from "node:net";
import { ConfigError, NodeDownError, ProtocolError, TimeoutError } from "../errors.ts";
import {
  MAX_CLOSE_REASON_BYTES,
  MAX_FRAME_PLAINTEXT,
  NOISE_MAX_MESSAGE,
} from "../transport/constants.ts";
import {
  DATA_FIRST_HEADER,
  DATA_HEADER,
  decodeClose,
  decodeData,
  decodeFrame,
  decodeFrames,
  decodeKeepalive,
  decodeRekey,
  encodeClose,
  encodeData,
  encodeKeepalive,
  encodeRekey,
  FLAG_FIRST,
  FLAG_LAST,
  FrameType,
  maxDataChunk,
  writeDataHeader,
} from "../transport/frames.ts";
import { memoryTransportPair } from "../transport/memory.ts";
import { connectTcp, listenTcp, WireDecoder } from "../transport/tcp.ts";
import { FakeClock } from "../transport/timers.ts";
import type { Listener, Transport } from "../transport/types.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./support/assert.ts";
import { take, turn } from "./support/async.ts";
import { concat } from "./support/bytes.ts";

function bytes(n: number, seed = 1): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

/** Frames `messages` as on the TCP wire: 2-byte big-endian length, then the message. */
function wire(messages: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(messages.reduce((n, m) => n + 2 + m.length, 0));
  let at = 0;
  for (const m of messages) {
    out[at++] = m.length >>> 8;
    out[at++] = m.length & 0xff;
    out.set(m, at);
    at += m.length;
  }
  return out;
}

async function isPending(p: Promise<unknown>): Promise<boolean> {
  let settled = false;
  p.then(() => settled = true, () => settled = true);
  await turn();
  return !settled;
}

// --- frames --------------------------------------------------------------------------------------

Deno.test("encodeData() and decodeData() round-trip FIRST, middle and LAST frames", () => {
  const chunk = bytes(100);
  const first = decodeData(encodeData(7, FLAG_FIRST, 1000, chunk));
  assertEquals(first.messageId, 7);
  assertEquals([first.first, first.last, first.totalLength], [true, false, 1000]);
  assertEquals([first.payload, first.size], [chunk, DATA_FIRST_HEADER + 100]);
  const middle = decodeData(encodeData(0xffff_ffff, 0, undefined, chunk));
  assertEquals([middle.messageId, middle.first, middle.last], [0xffff_ffff, false, false]);
  assertEquals([middle.totalLength, middle.size], [undefined, DATA_HEADER + 100]);
  const only = decodeFrame(encodeData(1, FLAG_FIRST | FLAG_LAST, 0, new Uint8Array(0)));
  assert(only.type === FrameType.Data);
  assertEquals([only.first, only.last, only.totalLength, only.payload.length], [true, true, 0, 0]);
});

Deno.test("encodeData() fills a frame exactly to the Noise plaintext limit and no further", () => {
  assertEquals(maxDataChunk(true), MAX_FRAME_PLAINTEXT - DATA_FIRST_HEADER);
  assertEquals(maxDataChunk(false), MAX_FRAME_PLAINTEXT - DATA_HEADER);
  const full = encodeData(1, 0, undefined, bytes(maxDataChunk(false)));
  assertEquals(full.length, MAX_FRAME_PLAINTEXT);
  assertEquals(decodeFrames(full).length, 1);
  assertThrows(() => encodeData(1, 0, undefined, bytes(maxDataChunk(false) + 1)), RangeError);
  assertThrows(() => encodeData(1, FLAG_FIRST, undefined, bytes(1)), RangeError);
  assertThrows(() => encodeData(1, 0x80, undefined, bytes(1)), RangeError);
});

Deno.test("writeDataHeader() writes the same header encodeData() does, or nothing", () => {
  const target = new Uint8Array(40).fill(0xee);
  assertEquals(writeDataHeader(target, 3, 9, FLAG_FIRST | FLAG_LAST, 5, 5), DATA_FIRST_HEADER);
  target.set(bytes(5), 3 + DATA_FIRST_HEADER);
  assertEquals(
    target.subarray(3, 3 + DATA_FIRST_HEADER + 5),
    encodeData(9, FLAG_FIRST | FLAG_LAST, 5, bytes(5)),
  );
  const untouched = new Uint8Array(10);
  assertThrows(() => writeDataHeader(untouched, 5, 1, 0, undefined, 1), RangeError, "no room");
  assertThrows(() => writeDataHeader(untouched, 0, 1, FLAG_FIRST, undefined, 1), RangeError);
  assertThrows(() => writeDataHeader(untouched, 0, -1, 0, undefined, 1), RangeError);
  assertEquals(untouched, new Uint8Array(10));
});

Deno.test("decodeFrame() rejects frames shorter than their header with ProtocolError", () => {
  assertThrows(() => decodeFrame(new Uint8Array(0)), ProtocolError, "empty frame");
  assertThrows(
    () => decodeFrame(Uint8Array.of(1, 0, 0, 0)),
    ProtocolError,
    "shorter than its header",
  );
  assertThrows(
    () => decodeFrame(Uint8Array.of(1, FLAG_FIRST, 0, 0, 0, 1, 0, 0, 0, 0)),
    ProtocolError,
    "lacks its total length",
  );
  assertThrows(() => decodeFrame(Uint8Array.of(4, 0, 0)), ProtocolError, "shorter than its header");
});

Deno.test("decodeFrame() rejects unknown types, unknown flags and trailing bytes", () => {
  assertThrows(() => decodeFrame(Uint8Array.of(0x7f)), ProtocolError, "unknown frame type 0x7f");
  assertThrows(
    () => decodeFrame(Uint8Array.of(1, 0x04, 0, 0, 0, 1, 0, 0)),
    ProtocolError,
    "unknown flags",
  );
  assertThrows(
    () => decodeFrame(Uint8Array.of(2, 0)),
    ProtocolError,
    "KEEPALIVE frame of 1 bytes is followed by 1 more",
  );
  assertThrows(() => decodeFrame(Uint8Array.of(3, 0)), ProtocolError, "REKEY frame of 1 bytes");
  assertThrows(
    () => decodeFrame(concat(encodeData(1, FLAG_FIRST | FLAG_LAST, 1, bytes(1)), Uint8Array.of(9))),
    ProtocolError,
    "followed by 1 more",
  );
  assertThrows(() => decodeKeepalive(encodeRekey()), ProtocolError, "expected");
  assertThrows(() => decodeRekey(encodeKeepalive()), ProtocolError, "expected");
});

Deno.test("a length field that overruns what follows is a ProtocolError, checked before use", () => {
  // DATA declaring 100 bytes of chunk with 10 present, at the start and after another frame.
  const overrun = encodeData(4, FLAG_FIRST | FLAG_LAST, 100, bytes(100)).subarray(0, 22);
  assertThrows(
    () => decodeData(overrun),
    ProtocolError,
    "declares a 100-byte chunk; only 10 bytes follow",
  );
  const keepalive = encodeKeepalive();
  assertThrows(() => decodeFrames(concat(keepalive, overrun)), ProtocolError, "only 10 bytes");
  assertThrows(() => decodeData(concat(keepalive, overrun), 1), ProtocolError, "only 10 bytes");
  // The largest chunk length with nothing behind it.
  const huge = Uint8Array.of(1, 0, 0, 0, 0, 1, 0xff, 0xff);
  assertThrows(() => decodeFrames(huge), ProtocolError, "65535-byte chunk; only 0 bytes");
  // CLOSE declaring a longer reason than it carries, and one over the limit.
  const close = encodeClose(0, "bye");
  assertThrows(() => decodeClose(close.subarray(0, 5)), ProtocolError, "3-byte reason; only 1");
  const tooLong = new Uint8Array(4 + MAX_CLOSE_REASON_BYTES + 1);
  tooLong.set([4, 0, (MAX_CLOSE_REASON_BYTES + 1) >>> 8, (MAX_CLOSE_REASON_BYTES + 1) & 0xff]);
  assertThrows(() => decodeClose(tooLong), ProtocolError, "over 256");
});

Deno.test("decodeFrames() splits one Noise message's plaintext into its frames, in order", () => {
  const plaintext = concat(
    encodeData(1, FLAG_FIRST | FLAG_LAST, 3, bytes(3, 1)),
    encodeKeepalive(),
    encodeData(2, FLAG_FIRST, 10, bytes(4, 2)),
    encodeData(2, FLAG_LAST, undefined, bytes(6, 3)),
    encodeData(3, FLAG_FIRST | FLAG_LAST, 0, new Uint8Array(0)),
    encodeRekey(),
  );
  const frames = decodeFrames(plaintext);
  assertEquals(frames.map((f) => f.type), [1, 2, 1, 1, 1, 3]);
  assertEquals(frames.reduce((n, f) => n + f.size, 0), plaintext.length);
  const data = frames.filter((f) => f.type === FrameType.Data);
  assertEquals(data.map((f) => f.messageId), [1, 2, 2, 3]);
  assertEquals(data.map((f) => f.payload), [bytes(3, 1), bytes(4, 2), bytes(6, 3), bytes(0)]);
  assertEquals(decodeFrames(encodeClose(1, "x")).map((f) => f.type), [FrameType.Close]);
});

Deno.test("decodeFrames() wants REKEY and CLOSE last, and at least one frame", () => {
  const data = encodeData(1, FLAG_FIRST | FLAG_LAST, 1, bytes(1));
  assertThrows(() => decodeFrames(new Uint8Array(0)), ProtocolError, "without frames");
  assertThrows(
    () => decodeFrames(concat(encodeRekey(), data)),
    ProtocolError,
    "REKEY frame is followed by 13 bytes",
  );
  assertThrows(
    () => decodeFrames(concat(encodeClose(0, ""), encodeKeepalive())),
    ProtocolError,
    "CLOSE frame is followed by 1 bytes",
  );
  assertThrows(
    () => decodeFrames(new Uint8Array(MAX_FRAME_PLAINTEXT + 1).fill(FrameType.Keepalive)),
    ProtocolError,
    "exceeds",
  );
  assertEquals(decodeFrames(concat(data, encodeRekey())).length, 2);
});

Deno.test("KEEPALIVE and REKEY frames are one byte and decode to their type", () => {
  assertEquals(decodeFrame(encodeKeepalive()), { type: FrameType.Keepalive, size: 1 });
  assertEquals(decodeFrame(encodeRekey()), { type: FrameType.Rekey, size: 1 });
  assertEquals(encodeKeepalive().length, 1);
});

Deno.test("CLOSE carries a code and a UTF-8 reason, cut at a character boundary", () => {
  assertEquals(decodeFrame(encodeClose(1, "shutting down")), {
    type: FrameType.Close,
    size: 4 + 13,
    code: 1,
    reason: "shutting down",
  });
  const long = "é".repeat(MAX_CLOSE_REASON_BYTES); // 2 bytes each
  const cut = decodeClose(encodeClose(0, `x${long}`));
  assert(cut.reason.length > 0 && !cut.reason.includes("\uFFFD"));
  assertEquals(new TextEncoder().encode(cut.reason).length, MAX_CLOSE_REASON_BYTES - 1);
  assertThrows(
    () => decodeClose(Uint8Array.of(4, 0, 0, 1, 0xc3)),
    ProtocolError,
    "not valid UTF-8",
  );
});

// --- FakeClock -----------------------------------------------------------------------------------

Deno.test("FakeClock.advance() fires due timers in time order, including ones they set", () => {
  const clock = new FakeClock(1000);
  const fired: string[] = [];
  clock.setTimeout(() => fired.push(`b@${clock.now()}`), 20);
  clock.setTimeout(() => {
    fired.push(`a@${clock.now()}`);
    clock.setTimeout(() => fired.push(`c@${clock.now()}`), 15);
  }, 10);
  const cancelled = clock.setTimeout(() => fired.push("never"), 5);
  clock.clearTimeout(cancelled);
  clock.advance(9);
  assertEquals(fired, []);
  clock.advance(100);
  assertEquals(fired, ["a@1010", "b@1020", "c@1025"]);
  assertEquals(clock.now(), 1109);
  assertEquals(clock.pending, 0);
});

// --- memory transport ----------------------------------------------------------------------------

Deno.test("memoryTransportPair() passes messages whole and in order, both ways", async () => {
  const [a, b] = memoryTransportPair();
  const sent = [bytes(0), bytes(1), bytes(NOISE_MAX_MESSAGE)];
  for (const m of sent) await a.send(m);
  await b.send(bytes(5));
  assertEquals(await take(b, 3), sent);
  assertEquals(await take(a, 1), [bytes(5)]);
  a.close();
  await b.closed;
});

Deno.test("memory transport send() waits while the peer's queue is full", async () => {
  const [a, b] = memoryTransportPair({ queueDepth: 2 });
  await a.send(bytes(1, 1));
  await a.send(bytes(1, 2));
  const third = a.send(bytes(1, 3));
  assert(await isPending(third), "third send should wait for queue space");
  const it = b[Symbol.asyncIterator]();
  assertEquals((await it.next()).value, bytes(1, 1));
  await third;
  a.close();
});

Deno.test("memory transport close() ends both iterations after the peer drained its queue", async () => {
  const [a, b] = memoryTransportPair({ queueDepth: 1 });
  await a.send(bytes(3));
  const blocked = a.send(bytes(4));
  const aIt = a[Symbol.asyncIterator]();
  const aNext = aIt.next();
  a.close();
  a.close(); // idempotent
  await assertRejects(() => blocked, NodeDownError);
  assertEquals(await aNext, { done: true, value: undefined });
  const bIt = b[Symbol.asyncIterator]();
  assertEquals((await bIt.next()).value, bytes(3));
  assertEquals((await bIt.next()).value, bytes(4));
  assertEquals((await bIt.next()).done, true);
  await a.closed;
  await b.closed;
  await assertRejects(() => b.send(bytes(1)), NodeDownError);
});

Deno.test("memory transport refuses a wire message over 65535 bytes", async () => {
  const [a] = memoryTransportPair();
  await assertRejects(() => a.send(new Uint8Array(NOISE_MAX_MESSAGE + 1)), RangeError);
  a.close();
});

// --- WireDecoder ---------------------------------------------------------------------------------

Deno.test("WireDecoder reassembles messages split at every byte position", () => {
  const messages = [bytes(0), bytes(1, 2), bytes(300, 3), bytes(0), bytes(70, 4)];
  const stream = wire(messages);
  for (let cut1 = 0; cut1 <= stream.length; cut1++) {
    for (const cut2 of [cut1, Math.min(stream.length, cut1 + 1), stream.length]) {
      const decoder = new WireDecoder();
      const got: Uint8Array[] = [];
      for (
        const part of [stream.subarray(0, cut1), stream.subarray(cut1, cut2), stream.subarray(cut2)]
      ) {
        decoder.feed(part, (m) => got.push(m.slice()));
      }
      assertEquals(got, messages, `cuts at ${cut1}/${cut2}`);
      assertEquals(decoder.buffered, 0);
    }
  }
});

Deno.test("WireDecoder yields many messages from one chunk and a 65535-byte one fed byte by byte", () => {
  const many = Array.from({ length: 5000 }, (_, i) => bytes(i % 17, i));
  const got: Uint8Array[] = [];
  const decoder = new WireDecoder();
  decoder.feed(wire(many), (m) => got.push(m));
  assertEquals(got, many);
  const big = bytes(NOISE_MAX_MESSAGE, 9);
  const stream = wire([big]);
  const out: Uint8Array[] = [];
  for (let i = 0; i < stream.length; i++) {
    decoder.feed(stream.subarray(i, i + 1), (m) => out.push(m));
  }
  assertEquals(out, [big]);
});

// --- TCP -----------------------------------------------------------------------------------------

async function tcpPair(): Promise<{ client: Transport; server: Transport; listener: Listener }> {
  let accept!: (t: Transport) => void;
  const accepted = new Promise<Transport>((resolve) => accept = resolve);
  const listener = await listenTcp("127.0.0.1", 0, accept);
  const client = await connectTcp("127.0.0.1", listener.port);
  const server = await accepted;
  return { client, server, listener };
}

async function closeAll(...ts: Transport[]): Promise<void> {
  for (const t of ts) t.close();
  await Promise.all(ts.map((t) => t.closed));
}

/** A raw node:net server, for writing hand-made bytes to a TCP transport. */
async function rawServer(): Promise<{ server: Server; port: number; socket: Promise<Socket> }> {
  let gotSocket!: (s: Socket) => void;
  const socket = new Promise<Socket>((resolve) => gotSocket = resolve);
  const server = createServer({ noDelay: true }, gotSocket);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  assert(address && typeof address === "object");
  return { server, port: address.port, socket };
}

function writeRaw(socket: Socket, data: Uint8Array): Promise<void> {
  return new Promise((resolve, reject) =>
    socket.write(data, (err) => err ? reject(err) : resolve())
  );
}

Deno.test("TCP transport carries messages of 0 to 65535 bytes whole, both ways", async () => {
  const { client, server, listener } = await tcpPair();
  try {
    assertEquals(client.remoteAddress, `127.0.0.1:${listener.port}`);
    const sizes = [0, 1, 2, 100, 4095, 4096, 30000, NOISE_MAX_MESSAGE];
    const toServer = sizes.map((n, i) => bytes(n, i));
    await Promise.all(toServer.map((m) => client.send(m)));
    assertEquals(await take(server, toServer.length), toServer);
    await server.send(bytes(10, 77));
    assertEquals(await take(client, 1), [bytes(10, 77)]);
    await assertRejects(() => client.send(new Uint8Array(NOISE_MAX_MESSAGE + 1)), RangeError);
  } finally {
    await listener.close();
    await closeAll(client, server);
  }
});

Deno.test("TCP transport reassembles frames split across TCP writes", async () => {
  const raw = await rawServer();
  const client = await connectTcp("127.0.0.1", raw.port);
  const socket = await raw.socket;
  try {
    const messages = [bytes(5, 1), bytes(1000, 2), bytes(0), bytes(3, 3)];
    const stream = wire(messages);
    const received = take(client, messages.length);
    // The length prefix alone, then single bytes, then the rest in odd pieces.
    await writeRaw(socket, stream.subarray(0, 1));
    await turn();
    await writeRaw(socket, stream.subarray(1, 2));
    await turn();
    for (let i = 2; i < stream.length; i += 97) {
      await writeRaw(socket, stream.subarray(i, Math.min(stream.length, i + 97)));
      await turn();
    }
    assertEquals(await received, messages);
  } finally {
    socket.destroy();
    client.close();
    await client.closed;
    await new Promise((resolve) => raw.server.close(resolve));
  }
});

Deno.test("TCP transport yields every frame when many arrive in one chunk", async () => {
  const raw = await rawServer();
  const client = await connectTcp("127.0.0.1", raw.port);
  const socket = await raw.socket;
  try {
    const messages = Array.from({ length: 3000 }, (_, i) => bytes(i % 50, i));
    const received = take(client, messages.length);
    await writeRaw(socket, wire(messages));
    assertEquals(await received, messages);
  } finally {
    socket.destroy();
    client.close();
    await client.closed;
    await new Promise((resolve) => raw.server.close(resolve));
  }
});

Deno.test("TCP transport send() waits for the socket to drain when the peer does not read", async () => {
  const { client, server, listener } = await tcpPair();
  try {
    const chunk = bytes(NOISE_MAX_MESSAGE);
    let sent = 0;
    let waiting: Promise<void> | undefined;
    // Loopback buffers hold a few megabytes; far fewer than 4096 frames (256 MiB).
    while (sent < 4096) {
      const p = client.send(chunk);
      sent++;
      if (await isPending(p)) {
        waiting = p;
        break;
      }
    }
    assert(waiting, "send() never waited although nobody read");
    let read = 0;
    for await (const m of server) {
      assertEquals(m.length, NOISE_MAX_MESSAGE);
      if (++read === sent) break;
    }
    await waiting;
  } finally {
    await listener.close();
    await closeAll(client, server);
  }
});

Deno.test("TCP transport: a close by one side ends the other's iteration and both closed", async () => {
  const { client, server, listener } = await tcpPair();
  await listener.close();
  await client.send(bytes(8));
  client.close();
  const got = await take(server, 1);
  assertEquals(got, [bytes(8)]);
  const it = server[Symbol.asyncIterator]();
  assertEquals((await it.next()).done, true);
  await client.closed;
  await server.closed;
  await assertRejects(() => server.send(bytes(1)), NodeDownError);
  await assertRejects(() => client.send(bytes(1)), NodeDownError);
});

Deno.test("TCP transport iteration throws NodeDownError when the connection ends mid-message", async () => {
  const raw = await rawServer();
  const client = await connectTcp("127.0.0.1", raw.port);
  const socket = await raw.socket;
  try {
    await writeRaw(socket, Uint8Array.of(0, 10, 1, 2)); // 2 of 10 bytes
    socket.end();
    await assertRejects(() => take(client, 1), NodeDownError, "middle of a message");
  } finally {
    client.close();
    await client.closed;
    await new Promise((resolve) => raw.server.close(resolve));
  }
});

Deno.test("connectTcp() to a closed port rejects with NodeDownError naming the address", async () => {
  const raw = await rawServer();
  const port = raw.port;
  await new Promise((resolve) => raw.server.close(resolve));
  const err = await assertRejects(() => connectTcp("127.0.0.1", port), NodeDownError);
  assert(err.message.includes(`127.0.0.1:${port}`), err.message);
  assert(err.message.includes("ECONNREFUSED"), err.message);
});

Deno.test("connectTcp() rejects with TimeoutError when its signal is aborted", async () => {
  const raw = await rawServer();
  try {
    await assertRejects(
      () => connectTcp("127.0.0.1", raw.port, { signal: AbortSignal.abort() }),
      TimeoutError,
      `127.0.0.1:${raw.port}`,
    );
    const ctl = new AbortController();
    const pending = connectTcp("127.0.0.1", raw.port, { signal: ctl.signal });
    ctl.abort(new Error("deadline passed"));
    await assertRejects(() => pending, TimeoutError, "deadline passed");
  } finally {
    await new Promise((resolve) => raw.server.close(resolve));
    // The aborted attempt may have reached the server; close what it accepted.
    raw.socket.then((s) => s.destroy());
  }
});

Deno.test("listenTcp() on an address already in use rejects with ConfigError", async () => {
  const listener = await listenTcp("127.0.0.1", 0, (t) => t.close());
  try {
    await assertRejects(
      () => listenTcp("127.0.0.1", listener.port, (t) => t.close()),
      ConfigError,
      `127.0.0.1:${listener.port}`,
    );
  } finally {
    await listener.close();
  }
});

Deno.test("a listener closed with close() accepts no more connections", async () => {
  const listener = await listenTcp("127.0.0.1", 0, (t) => t.close());
  await listener.close();
  await assertRejects(() => connectTcp("127.0.0.1", listener.port), NodeDownError);
});
