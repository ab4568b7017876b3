/**
 * Frames carried inside the encrypted payload of each Noise transport message. One Noise message
 * carries one or more frames back to back (at most MAX_FRAME_PLAINTEXT bytes in all), so several
 * small frames share one AEAD operation. Every frame says where it ends: fixed-size frames by
 * their type, the others by an explicit length. One encode/decode pair per frame type; every
 * decoder checks that the bytes it is about to read are there (and that a declared length fits
 * in what is left) before reading anything else, and a malformed frame throws ProtocolError.
 *
 * Layout (all integers big-endian):
 *
 *     DATA      type=1 | flags u8 | message id u32 | chunk length u16 |
 *               [total length u32, if FIRST] | chunk
 *     KEEPALIVE type=2
 *     REKEY     type=3
 *     CLOSE     type=4 | reason code u8 | reason length u16 | UTF-8 reason (at most
 *               MAX_CLOSE_REASON_BYTES)
 *
 * A REKEY frame is the last frame of its Noise message (what follows it goes under the new key,
 * so in a new message), and so is a CLOSE frame (nothing follows it). A Noise message carries at
 * least one frame.
 *
 * @module
 */

import { ProtocolError } from "../errors.ts";
import { MAX_CLOSE_REASON_BYTES, MAX_FRAME_PLAINTEXT } from "./constants.ts";

/** Frame type bytes. */
export const FrameType = {
  /** A chunk of an application message. */
  Data: 1,
  /** Nothing; sent when the sender was otherwise idle, proves it is alive. */
  Keepalive: 2,
  /** The sender switches to its rekeyed send key right after the message carrying this frame. */
  Rekey: 3,
  /** The sender closes the session; nothing follows. */
  Close: 4,
} as const;

/** One of the `FrameType` values. */
export type FrameType = typeof FrameType[keyof typeof FrameType];

/** DATA flag: this frame starts a message and carries its total length. */
export const FLAG_FIRST = 0x01;
/** DATA flag: this frame ends a message. */
export const FLAG_LAST = 0x02;
const KNOWN_FLAGS = FLAG_FIRST | FLAG_LAST;

/** DATA header size without the total length (type, flags, message id, chunk length). */
export const DATA_HEADER = 8;
/** DATA header size of a FIRST frame (type, flags, message id, chunk length, total length). */
export const DATA_FIRST_HEADER = 12;
/** CLOSE header size (type, code, reason length). */
export const CLOSE_HEADER = 4;
/** Size of a KEEPALIVE or a REKEY frame. */
export const CONTROL_FRAME_SIZE = 1;

/** CLOSE reason codes. Unknown codes are accepted (reserved for later versions). */
export const CloseCode = {
  /** The application closed the session. */
  Normal: 0,
  /** The node is shutting down. */
  GoingAway: 1,
} as const;

/** A decoded DATA frame; `payload` is a view into the decoded buffer, not a copy. */
export interface DataFrame {
  readonly type: typeof FrameType.Data;
  /** Bytes the frame occupies, header included. */
  readonly size: number;
  readonly messageId: number;
  readonly first: boolean;
  readonly last: boolean;
  /** Total length of the reassembled message; present on FIRST frames only. */
  readonly totalLength: number | undefined;
  readonly payload: Uint8Array;
}

/** A decoded KEEPALIVE frame. */
export interface KeepaliveFrame {
  readonly type: typeof FrameType.Keepalive;
  readonly size: typeof CONTROL_FRAME_SIZE;
}

/** A decoded REKEY frame. */
export interface RekeyFrame {
  readonly type: typeof FrameType.Rekey;
  readonly size: typeof CONTROL_FRAME_SIZE;
}

/** A decoded CLOSE frame. */
export interface CloseFrame {
  readonly type: typeof FrameType.Close;
  readonly size: number;
  readonly code: number;
  readonly reason: string;
}

/** Any decoded frame. */
export type Frame = DataFrame | KeepaliveFrame | RekeyFrame | CloseFrame;

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });
const KEEPALIVE: KeepaliveFrame = Object.freeze({ type: FrameType.Keepalive, size: 1 });
const REKEY: RekeyFrame = Object.freeze({ type: FrameType.Rekey, size: 1 });

function checkU32(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff_ffff) {
    throw new RangeError(`${what} ${value} is not a u32`);
  }
}

/** Largest DATA chunk that fits in one frame alone in a Noise message (FIRST: 4 bytes less). */
export function maxDataChunk(first: boolean): number {
  return MAX_FRAME_PLAINTEXT - (first ? DATA_FIRST_HEADER : DATA_HEADER);
}

/**
 * Checks the fields of a DATA header for a chunk of `chunkLength` bytes and returns the header's
 * size. `totalLength` is required exactly when `flags` has FLAG_FIRST. Throws RangeError for a
 * frame that could not be decoded (unknown flags, fields out of range, over one Noise message).
 */
export function dataHeaderSize(
  messageId: number,
  flags: number,
  totalLength: number | undefined,
  chunkLength: number,
): number {
  const first = (flags & FLAG_FIRST) !== 0;
  const header = first ? DATA_FIRST_HEADER : DATA_HEADER;
  if (
    !Number.isInteger(chunkLength) || chunkLength < 0 || chunkLength + header > MAX_FRAME_PLAINTEXT
  ) {
    throw new RangeError(`DATA chunk of ${chunkLength} bytes does not fit in one frame`);
  }
  if ((flags & ~KNOWN_FLAGS) !== 0) throw new RangeError(`unknown DATA flags 0x${hex(flags)}`);
  checkU32(messageId, "message id");
  if (first !== (totalLength !== undefined)) {
    throw new RangeError("a DATA frame carries a total length exactly when it is FIRST");
  }
  if (totalLength !== undefined) checkU32(totalLength, "total length");
  return header;
}

/**
 * Writes a DATA header for a chunk of `chunkLength` bytes into `target` at `at` and returns the
 * header's size; the chunk goes right after it. Fields are checked as by `dataHeaderSize`
 * (RangeError, nothing written).
 */
export function writeDataHeader(
  target: Uint8Array,
  at: number,
  messageId: number,
  flags: number,
  totalLength: number | undefined,
  chunkLength: number,
): number {
  const header = dataHeaderSize(messageId, flags, totalLength, chunkLength);
  if (!Number.isInteger(at) || at < 0 || at + header > target.length) {
    throw new RangeError(`no room for a ${header}-byte DATA header at offset ${at}`);
  }
  target[at] = FrameType.Data;
  target[at + 1] = flags;
  target[at + 2] = messageId >>> 24;
  target[at + 3] = messageId >>> 16;
  target[at + 4] = messageId >>> 8;
  target[at + 5] = messageId;
  target[at + 6] = chunkLength >>> 8;
  target[at + 7] = chunkLength;
  if (totalLength !== undefined) {
    target[at + 8] = totalLength >>> 24;
    target[at + 9] = totalLength >>> 16;
    target[at + 10] = totalLength >>> 8;
    target[at + 11] = totalLength;
  }
  return header;
}

/**
 * Encodes a DATA frame. `totalLength` is required exactly when `flags` has FLAG_FIRST. Copies
 * `chunk` once into the new frame (the session writes headers with `writeDataHeader` instead
 * and leaves large chunks where they are).
 */
export function encodeData(
  messageId: number,
  flags: number,
  totalLength: number | undefined,
  chunk: Uint8Array,
): Uint8Array {
  const header = dataHeaderSize(messageId, flags, totalLength, chunk.length);
  const frame = new Uint8Array(header + chunk.length);
  writeDataHeader(frame, 0, messageId, flags, totalLength, chunk.length);
  frame.set(chunk, header);
  return frame;
}

/**
 * Decodes the DATA frame that starts at `at` in `buf` (the frames of one Noise message); it may
 * be followed by other frames. The payload is a view into `buf`.
 */
export function decodeData(buf: Uint8Array, at = 0): DataFrame {
  const left = buf.length - at;
  if (left < DATA_HEADER) {
    throw new ProtocolError(`DATA frame of ${left} bytes is shorter than its header`);
  }
  expectType(buf, at, FrameType.Data);
  const flags = buf[at + 1]!;
  if ((flags & ~KNOWN_FLAGS) !== 0) {
    throw new ProtocolError(`DATA frame has unknown flags 0x${hex(flags)}`);
  }
  const first = (flags & FLAG_FIRST) !== 0;
  const header = first ? DATA_FIRST_HEADER : DATA_HEADER;
  if (left < header) {
    throw new ProtocolError(`FIRST DATA frame of ${left} bytes lacks its total length`);
  }
  const chunkLength = (buf[at + 6]! << 8) | buf[at + 7]!;
  if (chunkLength > left - header) {
    throw new ProtocolError(
      `DATA frame declares a ${chunkLength}-byte chunk; only ${left - header} bytes follow`,
    );
  }
  const start = at + header;
  return {
    type: FrameType.Data,
    size: header + chunkLength,
    messageId: readU32(buf, at + 2),
    first,
    last: (flags & FLAG_LAST) !== 0,
    totalLength: first ? readU32(buf, at + 8) : undefined,
    payload: buf.subarray(start, start + chunkLength),
  };
}

/** Encodes a KEEPALIVE frame. */
export function encodeKeepalive(): Uint8Array {
  return Uint8Array.of(FrameType.Keepalive);
}

/** Decodes the KEEPALIVE frame (one byte) at `at` in `buf`. */
export function decodeKeepalive(buf: Uint8Array, at = 0): KeepaliveFrame {
  expectRoom(buf, at, CONTROL_FRAME_SIZE, "KEEPALIVE");
  expectType(buf, at, FrameType.Keepalive);
  return KEEPALIVE;
}

/** Encodes a REKEY frame. */
export function encodeRekey(): Uint8Array {
  return Uint8Array.of(FrameType.Rekey);
}

/** Decodes the REKEY frame (one byte) at `at` in `buf`. */
export function decodeRekey(buf: Uint8Array, at = 0): RekeyFrame {
  expectRoom(buf, at, CONTROL_FRAME_SIZE, "REKEY");
  expectType(buf, at, FrameType.Rekey);
  return REKEY;
}

/**
 * Encodes a CLOSE frame. A reason longer than MAX_CLOSE_REASON_BYTES is cut at a character
 * boundary.
 */
export function encodeClose(code: number, reason: string): Uint8Array {
  if (!Number.isInteger(code) || code < 0 || code > 0xff) {
    throw new RangeError(`close code ${code} is not a u8`);
  }
  const text = truncateUtf8(reason, MAX_CLOSE_REASON_BYTES);
  const frame = new Uint8Array(CLOSE_HEADER + text.length);
  frame[0] = FrameType.Close;
  frame[1] = code;
  frame[2] = text.length >>> 8;
  frame[3] = text.length & 0xff;
  frame.set(text, CLOSE_HEADER);
  return frame;
}

/**
 * Decodes the CLOSE frame at `at` in `buf`; the reason must be valid UTF-8 of at most
 * MAX_CLOSE_REASON_BYTES.
 */
export function decodeClose(buf: Uint8Array, at = 0): CloseFrame {
  const left = buf.length - at;
  if (left < CLOSE_HEADER) {
    throw new ProtocolError(`CLOSE frame of ${left} bytes is shorter than its header`);
  }
  expectType(buf, at, FrameType.Close);
  const length = (buf[at + 2]! << 8) | buf[at + 3]!;
  if (length > MAX_CLOSE_REASON_BYTES) {
    throw new ProtocolError(
      `CLOSE frame has a reason of ${length} bytes, over ${MAX_CLOSE_REASON_BYTES}`,
    );
  }
  if (length > left - CLOSE_HEADER) {
    throw new ProtocolError(
      `CLOSE frame declares a ${length}-byte reason; only ${left - CLOSE_HEADER} bytes follow`,
    );
  }
  const start = at + CLOSE_HEADER;
  let reason: string;
  try {
    reason = decoder.decode(buf.subarray(start, start + length));
  } catch {
    throw new ProtocolError("CLOSE frame reason is not valid UTF-8");
  }
  return { type: FrameType.Close, size: CLOSE_HEADER + length, code: buf[at + 1]!, reason };
}

/** Decodes the frame at `at` in `buf`, dispatching on its type byte. */
export function decodeFrameAt(buf: Uint8Array, at: number): Frame {
  if (at >= buf.length) throw new ProtocolError("empty frame");
  const type = buf[at]!;
  switch (type) {
    case FrameType.Data:
      return decodeData(buf, at);
    case FrameType.Keepalive:
      return decodeKeepalive(buf, at);
    case FrameType.Rekey:
      return decodeRekey(buf, at);
    case FrameType.Close:
      return decodeClose(buf, at);
    default:
      throw new ProtocolError(`unknown frame type 0x${hex(type)}`);
  }
}

/** Decodes one frame that fills `frame` exactly (trailing bytes are a ProtocolError). */
export function decodeFrame(frame: Uint8Array): Frame {
  const decoded = decodeFrameAt(frame, 0);
  if (decoded.size !== frame.length) {
    throw new ProtocolError(
      `${frameName(decoded.type)} frame of ${decoded.size} bytes is followed by `
        + `${frame.length - decoded.size} more`,
    );
  }
  return decoded;
}

/**
 * Decodes all frames of one Noise message's plaintext, in order. Throws ProtocolError when the
 * plaintext is empty or over MAX_FRAME_PLAINTEXT, when any frame is malformed or overruns the
 * plaintext, or when a REKEY or CLOSE frame is not the last one. Nothing is returned unless the
 * whole plaintext decodes.
 */
export function decodeFrames(plaintext: Uint8Array): Frame[] {
  if (plaintext.length === 0) throw new ProtocolError("a transport message without frames");
  if (plaintext.length > MAX_FRAME_PLAINTEXT) {
    throw new ProtocolError(
      `transport message of ${plaintext.length} bytes exceeds ${MAX_FRAME_PLAINTEXT}`,
    );
  }
  const frames: Frame[] = [];
  let at = 0;
  while (at < plaintext.length) {
    const frame = decodeFrameAt(plaintext, at);
    at += frame.size;
    if (
      (frame.type === FrameType.Rekey || frame.type === FrameType.Close) && at < plaintext.length
    ) {
      throw new ProtocolError(
        `${frameName(frame.type)} frame is followed by ${plaintext.length - at} bytes in its `
          + `transport message; it must be the last frame`,
      );
    }
    frames.push(frame);
  }
  return frames;
}

function frameName(type: FrameType): string {
  switch (type) {
    case FrameType.Data:
      return "DATA";
    case FrameType.Keepalive:
      return "KEEPALIVE";
    case FrameType.Rekey:
      return "REKEY";
    case FrameType.Close:
      return "CLOSE";
  }
}

function readU32(buf: Uint8Array, at: number): number {
  return ((buf[at]! << 24) | (buf[at + 1]! << 16) | (buf[at + 2]! << 8) | buf[at + 3]!) >>> 0;
}

function expectRoom(buf: Uint8Array, at: number, size: number, name: string): void {
  if (buf.length - at < size) {
    throw new ProtocolError(`${name} frame needs ${size} bytes, ${buf.length - at} left`);
  }
}

function expectType(buf: Uint8Array, at: number, type: FrameType): void {
  const got = buf[at] ?? 0;
  if (got !== type) {
    throw new ProtocolError(`frame type 0x${hex(got)} where 0x${hex(type)} expected`);
  }
}

function hex(n: number): string {
  return n.toString(16).padStart(2, "0");
}

/** UTF-8 bytes of `text`, cut at a character boundary so it is at most `max` bytes. */
function truncateUtf8(text: string, max: number): Uint8Array {
  const bytes = encoder.encode(text);
  if (bytes.length <= max) return bytes;
  let end = max;
  // Back up over continuation bytes (10xxxxxx) so no character is split.
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end);
}
