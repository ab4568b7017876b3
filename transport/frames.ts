/**
 * Frames carried inside the encrypted payload of each Noise transport message. One encode/decode
 * pair per frame type; every decoder checks the length before reading anything else, and a
 * malformed frame throws ProtocolError.
 *
 * Layout (all integers big-endian):
 *
 *     DATA      type=1 | flags u8 | message id u32 | [total length u32, if FIRST] | payload chunk
 *     KEEPALIVE type=2
 *     REKEY     type=3
 *     CLOSE     type=4 | reason code u8 | UTF-8 reason (at most MAX_CLOSE_REASON_BYTES)
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
  /** The sender switches to its rekeyed send key right after this frame. */
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

/** DATA header size without the total length (type, flags, message id). */
export const DATA_HEADER = 6;
/** DATA header size of a FIRST frame (type, flags, message id, total length). */
export const DATA_FIRST_HEADER = 10;
const CLOSE_HEADER = 2;

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
}

/** A decoded REKEY frame. */
export interface RekeyFrame {
  readonly type: typeof FrameType.Rekey;
}

/** A decoded CLOSE frame. */
export interface CloseFrame {
  readonly type: typeof FrameType.Close;
  readonly code: number;
  readonly reason: string;
}

/** Any decoded frame. */
export type Frame = DataFrame | KeepaliveFrame | RekeyFrame | CloseFrame;

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

function checkU32(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff_ffff) {
    throw new RangeError(`${what} ${value} is not a u32`);
  }
}

/** Largest DATA payload chunk that fits in one frame (FIRST frames carry 4 bytes less). */
export function maxDataChunk(first: boolean): number {
  return MAX_FRAME_PLAINTEXT - (first ? DATA_FIRST_HEADER : DATA_HEADER);
}

/**
 * Encodes a DATA frame. `totalLength` is required exactly when `flags` has FLAG_FIRST. Copies
 * `chunk` once into the new frame.
 */
export function encodeData(
  messageId: number,
  flags: number,
  totalLength: number | undefined,
  chunk: Uint8Array,
): Uint8Array {
  const first = (flags & FLAG_FIRST) !== 0;
  const header = first ? DATA_FIRST_HEADER : DATA_HEADER;
  if (chunk.length + header > MAX_FRAME_PLAINTEXT) {
    throw new RangeError(`DATA chunk of ${chunk.length} bytes does not fit in one frame`);
  }
  if ((flags & ~KNOWN_FLAGS) !== 0) throw new RangeError(`unknown DATA flags 0x${hex(flags)}`);
  checkU32(messageId, "message id");
  if (first !== (totalLength !== undefined)) {
    throw new RangeError("a DATA frame carries a total length exactly when it is FIRST");
  }
  const frame = new Uint8Array(header + chunk.length);
  const view = new DataView(frame.buffer);
  frame[0] = FrameType.Data;
  frame[1] = flags;
  view.setUint32(2, messageId);
  if (totalLength !== undefined) {
    checkU32(totalLength, "total length");
    view.setUint32(6, totalLength);
  }
  frame.set(chunk, header);
  return frame;
}

/** Decodes a DATA frame; the payload is a view into `frame`. */
export function decodeData(frame: Uint8Array): DataFrame {
  if (frame.length < DATA_HEADER) {
    throw new ProtocolError(`DATA frame of ${frame.length} bytes is shorter than its header`);
  }
  if (frame.length > MAX_FRAME_PLAINTEXT) {
    throw new ProtocolError(`DATA frame of ${frame.length} bytes exceeds ${MAX_FRAME_PLAINTEXT}`);
  }
  expectType(frame, FrameType.Data);
  const flags = frame[1]!;
  if ((flags & ~KNOWN_FLAGS) !== 0) {
    throw new ProtocolError(`DATA frame has unknown flags 0x${hex(flags)}`);
  }
  const first = (flags & FLAG_FIRST) !== 0;
  if (first && frame.length < DATA_FIRST_HEADER) {
    throw new ProtocolError(`FIRST DATA frame of ${frame.length} bytes lacks its total length`);
  }
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  return {
    type: FrameType.Data,
    messageId: view.getUint32(2),
    first,
    last: (flags & FLAG_LAST) !== 0,
    totalLength: first ? view.getUint32(6) : undefined,
    payload: frame.subarray(first ? DATA_FIRST_HEADER : DATA_HEADER),
  };
}

/** Encodes a KEEPALIVE frame. */
export function encodeKeepalive(): Uint8Array {
  return Uint8Array.of(FrameType.Keepalive);
}

/** Decodes a KEEPALIVE frame (exactly one byte). */
export function decodeKeepalive(frame: Uint8Array): KeepaliveFrame {
  expectLength(frame, 1, "KEEPALIVE");
  expectType(frame, FrameType.Keepalive);
  return { type: FrameType.Keepalive };
}

/** Encodes a REKEY frame. */
export function encodeRekey(): Uint8Array {
  return Uint8Array.of(FrameType.Rekey);
}

/** Decodes a REKEY frame (exactly one byte). */
export function decodeRekey(frame: Uint8Array): RekeyFrame {
  expectLength(frame, 1, "REKEY");
  expectType(frame, FrameType.Rekey);
  return { type: FrameType.Rekey };
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
  frame.set(text, CLOSE_HEADER);
  return frame;
}

/** Decodes a CLOSE frame; the reason must be valid UTF-8 of at most MAX_CLOSE_REASON_BYTES. */
export function decodeClose(frame: Uint8Array): CloseFrame {
  if (frame.length < CLOSE_HEADER) {
    throw new ProtocolError(`CLOSE frame of ${frame.length} bytes is shorter than its header`);
  }
  if (frame.length > CLOSE_HEADER + MAX_CLOSE_REASON_BYTES) {
    throw new ProtocolError(
      `CLOSE frame of ${frame.length} bytes has a reason over ${MAX_CLOSE_REASON_BYTES} bytes`,
    );
  }
  expectType(frame, FrameType.Close);
  let reason: string;
  try {
    reason = decoder.decode(frame.subarray(CLOSE_HEADER));
  } catch {
    throw new ProtocolError("CLOSE frame reason is not valid UTF-8");
  }
  return { type: FrameType.Close, code: frame[1]!, reason };
}

/** Decodes any frame, dispatching on its type byte. */
export function decodeFrame(frame: Uint8Array): Frame {
  if (frame.length === 0) throw new ProtocolError("empty frame");
  const type = frame[0]!;
  switch (type) {
    case FrameType.Data:
      return decodeData(frame);
    case FrameType.Keepalive:
      return decodeKeepalive(frame);
    case FrameType.Rekey:
      return decodeRekey(frame);
    case FrameType.Close:
      return decodeClose(frame);
    default:
      throw new ProtocolError(`unknown frame type 0x${hex(type)}`);
  }
}

function expectLength(frame: Uint8Array, length: number, name: string): void {
  if (frame.length !== length) {
    throw new ProtocolError(`${name} frame is ${frame.length} bytes, expected ${length}`);
  }
}

function expectType(frame: Uint8Array, type: FrameType): void {
  if (frame[0] !== type) {
    throw new ProtocolError(`frame type 0x${hex(frame[0] ?? 0)} where 0x${hex(type)} expected`);
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
