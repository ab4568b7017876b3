/**
 * The encrypted session above a `Transport`, once the Noise handshake is done: application
 * messages of any size up to `maxMessageSize` are split into frames (frames.ts), and the frames
 * of concurrently sent messages are interleaved round-robin so a small message never waits
 * behind a large one.
 *
 * Coalescing: the writer runs at the end of the tick in which a message was sent (a
 * process.nextTick, where the TCP transport uncorks its socket anyway) and packs every frame queued
 * by then into one Noise transport message (at most 65535 bytes), so one AEAD operation covers
 * several small frames and the receiver decrypts once for all of them. It never waits for more
 * frames (no timer, no I/O): a lone message goes out alone. Chunks of large messages are encrypted
 * where they lie, never copied into a frame first.
 *
 * Timers (all behind the `Clock` seam): a KEEPALIVE frame goes out when nothing else was sent
 * for `keepaliveIntervalMs`; a session that received nothing for `deadPeerTimeoutMs` closes as
 * dead; each side replaces its send key after `rekeyAfterMessages` Noise messages or
 * `rekeyAfterTimeMs`, whichever comes first.
 *
 * Rekey: the sender puts a REKEY frame last in a Noise message encrypted under the old key, then
 * calls `rekey()` on its send cipher and resets its nonce to 0; the receiver does the same on its
 * receive cipher once it has handled that message. Noise's Rekey() keeps the nonce running, but
 * with a fresh key a fresh nonce sequence is safe, and it means every key, not just the first,
 * gets the full REJECT_AFTER_MESSAGES budget. Messages are encrypted and queued on the transport
 * in one step, in order, so no message is ever encrypted under a key the peer is not using for it.
 *
 * Failures are told to nobody: a message that fails authentication, a malformed frame or a
 * message over the limit closes the transport without a word to the peer and logs one local line.
 *
 * @module
 */

import process from "node:process";
import { NodeDownError, PayloadTooLargeError, ProtocolError } from "../errors.ts";
import { concatBytes } from "./bytes.ts";
import {
  DEAD_PEER_TIMEOUT_MS,
  DEFAULT_MAX_MESSAGE_SIZE,
  KEEPALIVE_INTERVAL_MS,
  MAX_FRAME_PLAINTEXT,
  MAX_MESSAGE_SIZE_LIMIT,
  REJECT_AFTER_MESSAGES,
  REKEY_AFTER_MESSAGES,
  REKEY_AFTER_TIME_MS,
  SESSION_INBOX_HIGH_WATER,
  TAG_LENGTH,
} from "./constants.ts";
import {
  CloseCode,
  CONTROL_FRAME_SIZE,
  DATA_FIRST_HEADER,
  DATA_HEADER,
  type DataFrame,
  decodeFrames,
  encodeClose,
  encodeKeepalive,
  encodeRekey,
  FLAG_FIRST,
  FLAG_LAST,
  type Frame,
  FrameType,
  writeDataHeader,
} from "./frames.ts";
import { type Clock, realClock, type TimerHandle } from "./timers.ts";
import type { CloseReason, PeerInfo, Session, Transport } from "./types.ts";

/** What a session needs from a Noise CipherState (noise_state.ts implements it). */
export interface CipherLike {
  /** Encrypts with the current nonce, then increments it. */
  encryptWithAd(ad: Uint8Array, plaintext: Uint8Array): Uint8Array;
  /**
   * Optional: encrypts the concatenation of `parts` without joining them, returning ciphertext
   * pieces then the tag (CipherState has it); without it the session joins the parts first.
   */
  encryptPartsWithAd?(ad: Uint8Array, parts: readonly Uint8Array[]): Uint8Array[];
  /** Decrypts with the current nonce and increments it; throws (nonce unchanged) on failure. */
  decryptWithAd(ad: Uint8Array, ciphertext: Uint8Array): Uint8Array;
  /** Replaces the key with REKEY(k) (Noise section 4.2). */
  rekey(): void;
  /** The next nonce to be used. */
  readonly nonce: bigint;
  /** Sets the next nonce. */
  setNonce(n: bigint): void;
  /** Erases the key; called once the session has ended. */
  wipe?(): void;
}

/** The two directions of a session: `send` encrypts what this side sends, `recv` decrypts. */
export interface SessionCiphers {
  readonly send: CipherLike;
  readonly recv: CipherLike;
}

/** Tuning for `NoiseSession`; every field has a default. */
export interface SessionOptions {
  /** Largest message sent or accepted, in bytes (default 64 MiB, at most 2^32-1). */
  maxMessageSize?: number;
  /** Send a KEEPALIVE after this long without sending (default 2500 ms; Infinity disables). */
  keepaliveIntervalMs?: number;
  /** Close as dead after this long without receiving (default 10 s; Infinity disables). */
  deadPeerTimeoutMs?: number;
  /** Replace the send key after this many Noise messages (default 2^60, at least 2). */
  rekeyAfterMessages?: bigint;
  /** Replace the send key once it is this old (default 120 s; Infinity disables). */
  rekeyAfterTimeMs?: number;
  /** Time source (default the real clock; tests pass a FakeClock). */
  clock?: Clock;
  /** Local log, one line per event (default: stderr). */
  log?: (line: string) => void;
  /**
   * The transport's iterator, when the caller already read from it (the handshake did); the
   * session goes on reading from it instead of starting a new one.
   */
  iterator?: AsyncIterator<Uint8Array>;
}

interface Outgoing {
  readonly id: number;
  readonly data: Uint8Array;
  offset: number;
  started: boolean;
  readonly resolve: () => void;
  readonly reject: (err: Error) => void;
}

interface Reassembly {
  readonly total: number;
  received: number;
  readonly chunks: Uint8Array[];
}

const EMPTY = new Uint8Array(0);
const NONE: readonly Outgoing[] = [];

/** Room for DATA frames in one Noise message: one byte stays free for a REKEY frame. */
const BATCH_ROOM = MAX_FRAME_PLAINTEXT - CONTROL_FRAME_SIZE;
/** A message that does not fit whole into a batch is split only if this much of it fits. */
const MIN_SPLIT = 1024;
/** Chunks shorter than this are copied next to their header; longer ones stay where they are. */
const INLINE_BELOW = 2048;
/**
 * A received payload is copied out of its Noise message when that message is over PIN_LIMIT
 * bytes and the payload is under half of it (see #onData).
 */
const PIN_LIMIT = 4096;

/**
 * Gathers the plaintext of one Noise message as parts: headers and short chunks are copied into
 * one buffer, long chunks are referenced where they lie. One instance serves every session: a
 * batch is built, encrypted (or joined) and handed on synchronously, before the next one starts.
 */
class BatchBuilder {
  readonly #buf = new Uint8Array(MAX_FRAME_PLAINTEXT);
  #parts: Uint8Array[] = [];
  #pos = 0;
  #segment = 0;

  reset(): void {
    this.#parts = [];
    this.#pos = 0;
    this.#segment = 0;
  }

  dataHeader(id: number, flags: number, total: number | undefined, chunkLength: number): void {
    this.#pos += writeDataHeader(this.#buf, this.#pos, id, flags, total, chunkLength);
  }

  chunk(chunk: Uint8Array): void {
    if (chunk.length < INLINE_BELOW) {
      this.#buf.set(chunk, this.#pos);
      this.#pos += chunk.length;
      return;
    }
    this.#flush();
    this.#parts.push(chunk);
  }

  /** The parts, in order; valid until the next reset(). */
  finish(): Uint8Array[] {
    this.#flush();
    return this.#parts;
  }

  #flush(): void {
    if (this.#pos > this.#segment) this.#parts.push(this.#buf.subarray(this.#segment, this.#pos));
    this.#segment = this.#pos;
  }
}

const batch = new BatchBuilder();
const REKEY_FRAME = encodeRekey();

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

function checkPositive(name: string, value: number): number {
  if (!(value > 0)) throw new RangeError(`${name} must be a positive number, got ${value}`);
  return value;
}

/**
 * An established session over `transport`. With `ciphers` the frames travel in Noise transport
 * messages encrypted with `ciphers.send` and decrypted with `ciphers.recv`. With `ciphers: null`
 * the frames travel UNENCRYPTED and UNAUTHENTICATED — that mode exists only as the benchmark's
 * in-run baseline (the cost of Noise is the difference) and must never carry real traffic.
 *
 * Iterating yields whole messages as their last frame arrives (messages the peer sent one after
 * the other arrive in that order); iteration ends normally however the session ended (read
 * `closed` for why). Messages received but not yet consumed are still yielded after the end.
 */
export class NoiseSession implements Session {
  /** Who is on the other end. */
  /** The largest message this side sends or accepts, in bytes. */
  get maxMessageSize(): number {
    return this.#maxMessageSize;
  }

  readonly peer: PeerInfo;
  /** Resolves with the reason once the session and its transport are closed. */
  readonly closed: Promise<CloseReason>;

  readonly #transport: Transport;
  readonly #iterator: AsyncIterator<Uint8Array>;
  readonly #send: CipherLike | null;
  readonly #recv: CipherLike | null;
  readonly #maxMessageSize: number;
  readonly #keepaliveMs: number;
  readonly #deadMs: number;
  readonly #rekeyAfterMessages: bigint;
  readonly #rekeyAfterTimeMs: number;
  readonly #clock: Clock;
  readonly #log: (line: string) => void;
  readonly #who: string;
  #resolveClosed!: (reason: CloseReason) => void;

  #open = true;
  #reason: CloseReason | null = null;
  #ring: Outgoing[] = [];
  #ringHead = 0;
  #inFlight: readonly Outgoing[] = NONE;
  #writing = false;
  #flushScheduled = false;
  #nextId = 0;

  #lastSent: number;
  #lastReceived: number;
  #sendKeySince: number;
  #timer: TimerHandle | undefined;

  #partials = new Map<number, Reassembly>();
  #inbox: Uint8Array[] = [];
  #inboxHead = 0;
  #inboxBytes = 0;
  #readers: ((result: IteratorResult<Uint8Array>) => void)[] = [];
  #resumeReading: (() => void) | null = null;

  /**
   * Starts the session: reading from `transport` (or `options.iterator`) and the timers begin at
   * once. `ciphers: null` makes a plain, unencrypted session (benchmark baseline only).
   */
  constructor(
    transport: Transport,
    ciphers: SessionCiphers | null,
    peer: PeerInfo,
    options: SessionOptions = {},
  ) {
    this.#transport = transport;
    this.#iterator = options.iterator ?? transport[Symbol.asyncIterator]();
    this.#send = ciphers?.send ?? null;
    this.#recv = ciphers?.recv ?? null;
    this.peer = peer;
    const max = options.maxMessageSize ?? DEFAULT_MAX_MESSAGE_SIZE;
    if (!Number.isInteger(max) || max < 0 || max > MAX_MESSAGE_SIZE_LIMIT) {
      throw new RangeError(`maxMessageSize must be an integer from 0 to 2^32-1, got ${max}`);
    }
    this.#maxMessageSize = max;
    this.#keepaliveMs = checkPositive(
      "keepaliveIntervalMs",
      options.keepaliveIntervalMs ?? KEEPALIVE_INTERVAL_MS,
    );
    this.#deadMs = checkPositive(
      "deadPeerTimeoutMs",
      options.deadPeerTimeoutMs ?? DEAD_PEER_TIMEOUT_MS,
    );
    this.#rekeyAfterTimeMs = checkPositive(
      "rekeyAfterTimeMs",
      options.rekeyAfterTimeMs ?? REKEY_AFTER_TIME_MS,
    );
    const rekeyAfter = options.rekeyAfterMessages ?? REKEY_AFTER_MESSAGES;
    if (rekeyAfter < 2n) {
      throw new RangeError(`rekeyAfterMessages must be at least 2, got ${rekeyAfter}`);
    }
    this.#rekeyAfterMessages = rekeyAfter;
    this.#clock = options.clock ?? realClock;
    this.#log = options.log ?? ((line) => console.error(line));
    this.#who = peer.name ? `${peer.name} (${transport.remoteAddress})` : transport.remoteAddress;
    this.closed = new Promise((resolve) => this.#resolveClosed = resolve);

    const now = this.#clock.now();
    this.#lastSent = now;
    this.#lastReceived = now;
    this.#sendKeySince = now;
    this.#schedule();
    void this.#readLoop();
  }

  /**
   * Sends one whole message; resolves once its last frame was handed to the transport. Rejects
   * with PayloadTooLargeError (nothing sent) above `maxMessageSize`, and with NodeDownError if
   * the session ends first. The bytes are read as they are framed: do not modify `message`
   * until the promise settles. Messages sent concurrently share the wire frame by frame, so a
   * short one may arrive before a long one sent earlier; a message sent after another's
   * `send()` resolved always arrives after it.
   *
   * The message is framed at the end of the current tick (process.nextTick, the point where the
   * TCP transport flushes its corked writes anyway), together with every other message sent by
   * then: no timer, no wait for I/O. A `close()` in the same tick still sends it first.
   */
  send(message: Uint8Array): Promise<void> {
    if (!this.#open) return Promise.reject(this.#downError());
    if (message.length > this.#maxMessageSize) {
      return Promise.reject(
        new PayloadTooLargeError(
          `message of ${message.length} bytes exceeds the ${this.#maxMessageSize}-byte limit; `
            + `send less or raise maxMessageSize`,
        ),
      );
    }
    return new Promise((resolve, reject) => {
      const id = this.#nextId;
      this.#nextId = (id + 1) >>> 0;
      this.#ring.push({ id, data: message, offset: 0, started: false, resolve, reject });
      if (!this.#writing && !this.#flushScheduled) {
        this.#flushScheduled = true;
        process.nextTick(this.#flush);
      }
    });
  }

  /** Sends CLOSE with `message` as the reason, closes the transport; resolves once closed. */
  async close(message = "closed by the local node"): Promise<void> {
    this.#finish({ kind: "local", message }, message);
    await this.closed;
  }

  /** Yields received messages, whole; one consumer at a time. Breaking out does not close. */
  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    return { next: () => this.#next() };
  }

  // --- sending ---------------------------------------------------------------------------------

  #flush = (): void => {
    this.#flushScheduled = false;
    if (!this.#writing) void this.#writeLoop();
  };

  async #writeLoop(): Promise<void> {
    this.#writing = true;
    try {
      while (this.#open && this.#ringHead < this.#ring.length) {
        const done: Outgoing[] = [];
        const parts = this.#fillBatch(done);
        this.#inFlight = done;
        await this.#emit(parts, true);
        this.#inFlight = NONE;
        for (const out of done) out.resolve();
      }
    } catch (err) {
      this.#connectionLost(err);
    } finally {
      this.#writing = false;
    }
  }

  /**
   * Packs the frames of the queued messages, round-robin, into one Noise message's plaintext:
   * each message in turn gets one frame with as much of it as fits. A message that is not done
   * goes to the back of the line; the batch ends when `room` does or the queue is empty.
   * Finished messages are added to `done`.
   */
  #fillBatch(done: Outgoing[], room = BATCH_ROOM): Uint8Array[] {
    batch.reset();
    const ring = this.#ring;
    while (this.#ringHead < ring.length) {
      const out = ring[this.#ringHead]!;
      const first = !out.started;
      const { data, offset } = out;
      const left = data.length - offset;
      const length = Math.min(left, room - (first ? DATA_FIRST_HEADER : DATA_HEADER));
      const last = length === left;
      if (!last && length < MIN_SPLIT) break; // it waits at the head of the line
      ring[this.#ringHead++] = undefined as unknown as Outgoing;
      batch.dataHeader(
        out.id,
        (first ? FLAG_FIRST : 0) | (last ? FLAG_LAST : 0),
        first ? data.length : undefined,
        length,
      );
      batch.chunk(data.subarray(offset, offset + length));
      room -= (first ? DATA_FIRST_HEADER : DATA_HEADER) + length;
      out.started = true;
      out.offset += length;
      if (last) done.push(out);
      else ring.push(out); // round-robin: back of the line after every frame
    }
    if (this.#ringHead === ring.length) {
      this.#ring = [];
      this.#ringHead = 0;
    } else if (this.#ringHead > 1024 && this.#ringHead * 2 > ring.length) {
      this.#ring = ring.slice(this.#ringHead);
      this.#ringHead = 0;
    }
    return batch.finish();
  }

  /**
   * Encrypts one Noise message made of the frames in `parts` and queues it on the transport, in
   * one synchronous step so the wire order is the nonce order. With `rekeyWhenDue`, a REKEY frame
   * is added last when the send key is due for replacement by count, and the key is replaced
   * right after. `parts` may be changed.
   */
  #emit(parts: Uint8Array[], rekeyWhenDue: boolean): Promise<void> {
    const cipher = this.#send;
    if (!cipher) {
      this.#lastSent = this.#clock.now();
      return this.#transport.send(concatBytes(parts));
    }
    if (cipher.nonce >= REJECT_AFTER_MESSAGES) {
      const why = `${REJECT_AFTER_MESSAGES} messages were sent under one key without a rekey`;
      this.#abort(why, new NodeDownError(`session with ${this.#who} closed: ${why}`));
      return Promise.reject(this.#downError());
    }
    const rekey = rekeyWhenDue && cipher.nonce + 1n >= this.#rekeyAfterMessages;
    if (rekey) parts.push(REKEY_FRAME);
    let wire: Uint8Array[];
    try {
      wire = cipher.encryptPartsWithAd
        ? cipher.encryptPartsWithAd(EMPTY, parts)
        : [cipher.encryptWithAd(EMPTY, concatBytes(parts))];
    } catch (err) {
      const why = `encryption failed: ${(err as Error).message}`;
      this.#abort(why, new NodeDownError(`session with ${this.#who} closed: ${why}`));
      return Promise.reject(this.#downError());
    }
    const now = this.#clock.now();
    if (rekey) this.#switchSendKey(cipher, now);
    this.#lastSent = now;
    const transport = this.#transport;
    if (transport.sendParts) return transport.sendParts(wire);
    return transport.send(wire.length === 1 ? wire[0]! : concatBytes(wire));
  }

  #switchSendKey(cipher: CipherLike, now: number): void {
    cipher.rekey();
    cipher.setNonce(0n);
    this.#sendKeySince = now;
  }

  /** A REKEY frame alone under the old key, then the switch: rekey() and a fresh nonce sequence. */
  #rekeySend(): void {
    const cipher = this.#send;
    if (!cipher) return;
    const sent = this.#emit([REKEY_FRAME], false);
    sent.catch((err) => this.#connectionLost(err));
    if (!this.#open) return;
    this.#switchSendKey(cipher, this.#clock.now());
  }

  #emitControl(frame: Uint8Array): void {
    this.#emit([frame], true).catch((err) => this.#connectionLost(err));
  }

  // --- receiving -------------------------------------------------------------------------------

  async #readLoop(): Promise<void> {
    try {
      while (this.#open) {
        const r = await this.#iterator.next();
        if (r.done || !this.#open) break;
        this.#lastReceived = this.#clock.now();
        this.#onWire(r.value);
        if (this.#open && this.#inboxBytes > SESSION_INBOX_HIGH_WATER) {
          // The application is not keeping up: stop reading until it does. The peer's silence
          // cannot be judged meanwhile, so the dead-peer clock restarts on resume.
          await new Promise<void>((resolve) => this.#resumeReading = resolve);
          this.#resumeReading = null;
          this.#lastReceived = this.#clock.now();
          this.#reschedule();
        }
      }
      if (this.#open) {
        const why = "the connection closed without a CLOSE frame";
        this.#abort(why, new NodeDownError(`session with ${this.#who} closed: ${why}`));
      }
    } catch (err) {
      this.#connectionLost(err);
    }
  }

  #onWire(wire: Uint8Array): void {
    let plaintext = wire;
    const cipher = this.#recv;
    if (cipher) {
      if (cipher.nonce >= REJECT_AFTER_MESSAGES) {
        return this.#protocolAbort(
          `the peer sent ${REJECT_AFTER_MESSAGES} messages under one key without a rekey`,
        );
      }
      if (wire.length < TAG_LENGTH) {
        return this.#protocolAbort(
          `message of ${wire.length} bytes is shorter than its authentication tag`,
        );
      }
      try {
        plaintext = cipher.decryptWithAd(EMPTY, wire);
      } catch {
        return this.#protocolAbort("message failed authentication");
      }
    }
    let frames: Frame[];
    try {
      frames = decodeFrames(plaintext);
    } catch (err) {
      return this.#protocolAbort(`malformed frame: ${(err as Error).message}`);
    }
    for (const frame of frames) {
      switch (frame.type) {
        case FrameType.Data:
          this.#onData(frame, plaintext.length);
          if (!this.#open) return;
          break;
        case FrameType.Keepalive:
          break;
        case FrameType.Rekey: // always the last frame (decodeFrames checks)
          if (cipher) {
            cipher.rekey();
            cipher.setNonce(0n);
          }
          break;
        case FrameType.Close: { // always the last frame
          const code = frame.code === CloseCode.Normal ? "" : ` (code ${frame.code})`;
          const message = (frame.reason || "closed by the peer") + code;
          return this.#finish({ kind: "remote", message }, null);
        }
      }
    }
  }

  /**
   * Handles one DATA frame of a Noise message of `plaintextLength` bytes. A payload kept for the
   * application is a view into the decrypted message unless it is a small part of a large one:
   * then it is copied, so a small message held by the application pins at most 4 KiB, or twice
   * its size, not a 64 KiB buffer.
   */
  #onData(frame: DataFrame, plaintextLength: number): void {
    const { messageId: id } = frame;
    let payload = frame.payload;
    if (plaintextLength > PIN_LIMIT && payload.length * 2 < plaintextLength) {
      payload = payload.slice();
    }
    if (frame.totalLength !== undefined) {
      const total = frame.totalLength;
      if (this.#partials.has(id)) return this.#protocolAbort(`message ${id} started twice`);
      if (total > this.#maxMessageSize) {
        return this.#protocolAbort(
          `the peer announced a message of ${total} bytes, over the `
            + `${this.#maxMessageSize}-byte limit (maxMessageSize)`,
        );
      }
      if (payload.length > total || (frame.last && payload.length !== total)) {
        return this.#protocolAbort(
          `message ${id} carries ${payload.length} bytes in its first frame, declared ${total}`,
        );
      }
      if (frame.last) return this.#deliver(payload);
      this.#partials.set(id, { total, received: payload.length, chunks: [payload] });
      return;
    }
    const partial = this.#partials.get(id);
    if (!partial) return this.#protocolAbort(`DATA frame for message ${id}, which never started`);
    const received = partial.received + payload.length;
    if (received > partial.total || (frame.last && received !== partial.total)) {
      return this.#protocolAbort(
        `message ${id} ${
          frame.last ? "ended" : "ran"
        } at ${received} bytes, declared ${partial.total}`,
      );
    }
    partial.received = received;
    if (payload.length > 0) partial.chunks.push(payload);
    if (!frame.last) return;
    this.#partials.delete(id);
    const message = new Uint8Array(partial.total);
    let at = 0;
    for (const chunk of partial.chunks) {
      message.set(chunk, at);
      at += chunk.length;
    }
    this.#deliver(message);
  }

  #deliver(message: Uint8Array): void {
    const reader = this.#readers.shift();
    if (reader) return reader({ done: false, value: message });
    this.#inbox.push(message);
    this.#inboxBytes += message.length;
  }

  #next(): Promise<IteratorResult<Uint8Array>> {
    if (this.#inboxHead < this.#inbox.length) {
      const value = this.#inbox[this.#inboxHead]!;
      this.#inbox[this.#inboxHead++] = EMPTY;
      if (this.#inboxHead === this.#inbox.length) {
        this.#inbox = [];
        this.#inboxHead = 0;
      } else if (this.#inboxHead > 1024 && this.#inboxHead * 2 > this.#inbox.length) {
        this.#inbox = this.#inbox.slice(this.#inboxHead);
        this.#inboxHead = 0;
      }
      this.#inboxBytes -= value.length;
      if (this.#inboxBytes <= SESSION_INBOX_HIGH_WATER) this.#resumeReading?.();
      return Promise.resolve({ done: false, value });
    }
    if (!this.#open) return Promise.resolve({ done: true, value: undefined });
    return new Promise((resolve) => this.#readers.push(resolve));
  }

  // --- timers ----------------------------------------------------------------------------------

  /** Arms the single timer for the earliest of keepalive, dead-peer and time-rekey deadlines. */
  #schedule(): void {
    if (!this.#open) return;
    let due = this.#lastSent + this.#keepaliveMs;
    if (!this.#resumeReading) due = Math.min(due, this.#lastReceived + this.#deadMs);
    if (this.#send) due = Math.min(due, this.#sendKeySince + this.#rekeyAfterTimeMs);
    if (!Number.isFinite(due)) return;
    this.#timer = this.#clock.setTimeout(this.#onTimer, Math.max(0, due - this.#clock.now()));
  }

  #reschedule(): void {
    if (this.#timer !== undefined) this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#schedule();
  }

  #onTimer = (): void => {
    this.#timer = undefined;
    if (!this.#open) return;
    const now = this.#clock.now();
    const silent = now - this.#lastReceived;
    if (!this.#resumeReading && silent >= this.#deadMs) {
      const message = `nothing received for ${seconds(silent)} `
        + `(dead-peer timeout ${seconds(this.#deadMs)}); the peer is presumed dead`;
      this.#log(`session with ${this.#who} closed: ${message}`);
      this.#finish({ kind: "dead", message }, null);
      return;
    }
    if (this.#send && now - this.#sendKeySince >= this.#rekeyAfterTimeMs) this.#rekeySend();
    if (this.#open && now - this.#lastSent >= this.#keepaliveMs) {
      this.#emitControl(encodeKeepalive());
    }
    this.#schedule();
  };

  // --- ending ----------------------------------------------------------------------------------

  /** The peer broke the protocol: log one line, close without telling the peer why. */
  #protocolAbort(why: string): void {
    this.#abort(why, new ProtocolError(`session with ${this.#who} closed: ${why}`));
  }

  #abort(why: string, error: Error): void {
    if (!this.#open) return;
    this.#log(`session with ${this.#who} closed: ${why}`);
    this.#finish({ kind: "error", message: why, error }, null);
  }

  #connectionLost(err: unknown): void {
    if (!this.#open) return;
    const detail = err instanceof Error ? err.message : String(err);
    const why = `connection lost: ${detail}`;
    this.#abort(why, new NodeDownError(`session with ${this.#who} closed: ${why}`));
  }

  /**
   * Ends the session once: optionally sends CLOSE (`closeMessage`), closes the transport, wipes
   * the keys, fails pending sends and ends iteration.
   */
  #finish(reason: CloseReason, closeMessage: string | null): void {
    if (!this.#open) return;
    if (closeMessage !== null) {
      // Still open here, so #emit may use the send key one last time: what is queued and fits
      // goes out in the same Noise message, CLOSE last.
      const close = encodeClose(CloseCode.Normal, closeMessage);
      const done: Outgoing[] = [];
      const parts = this.#ringHead < this.#ring.length
        ? this.#fillBatch(done, MAX_FRAME_PLAINTEXT - close.length)
        : [];
      parts.push(close);
      try {
        this.#emit(parts, false).then(
          () => done.forEach((out) => out.resolve()),
          (err) => done.forEach((out) => out.reject(err)),
        );
      } catch (err) {
        // The transport refused synchronously; the close goes ahead regardless.
        done.forEach((out) => out.reject(err as Error));
      }
    }
    if (!this.#open) return; // #emit found the key exhausted and already ended the session
    this.#open = false;
    if (this.#timer !== undefined) this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#send?.wipe?.();
    this.#recv?.wipe?.();
    this.#transport.close();
    const pending = [...this.#ring.slice(this.#ringHead), ...this.#inFlight];
    this.#ring = [];
    this.#ringHead = 0;
    this.#inFlight = NONE;
    if (pending.length > 0) {
      const err = this.#downError(reason); // an Error is costly to build: only when needed
      for (const out of pending) out.reject(err);
    }
    this.#partials.clear();
    for (const reader of this.#readers.splice(0)) reader({ done: true, value: undefined });
    this.#resumeReading?.();
    this.#reason = reason;
    // A clean close waits until the transport has flushed and closed; a dead or broken peer is
    // reported at once (flushing to it could take the transport's whole linger time).
    if (reason.kind === "local" || reason.kind === "remote") {
      this.#transport.closed.then(() => this.#resolveClosed(reason));
    } else {
      this.#resolveClosed(reason);
    }
  }

  #downError(reason: CloseReason | null = this.#reason): NodeDownError {
    const why = reason
      ? reason.kind === "local" ? "closed locally" : reason.message
      : "closed";
    return new NodeDownError(
      `session with ${this.#who} ended: ${why}`,
      this.peer.name || undefined,
    );
  }
}
