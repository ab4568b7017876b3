/**
 * The node-to-node protocol: binary messages on an authenticated `Session`.
 *
 * Every message is a fixed binary header (its type, a call id, lengths, short UTF-8 strings)
 * followed by at most one CBOR value (`cbor.ts`), which fills the rest of the message. A header
 * that is malformed breaks the protocol (ProtocolError: the session closes); a value that cannot
 * be decoded fails only its own call, with `badarg`. Encoding writes each message once, value
 * included, usually into a shared slab (`cbor.ts`); decoding copies nothing: the value comes out
 * as a view of the received bytes, decoded when its call is handled.
 *
 * Layout (integers big-endian; str16/str32 = u16/u32 byte length, then UTF-8):
 *
 *     HELLO   type=1 | flags u8 (1 hidden, 2 max) | [max u64] | creation str16
 *             (max: the largest message the sender accepts)
 *     CALL    type=2 | id u64 | service str16 | fn str16 | args (CBOR array)
 *     CAST    type=3 | service str16 | fn str16 | args (CBOR array)
 *     REPLY   type=4 | id u64 | value (CBOR)
 *     ERROR   type=5 | id u64 | flags u8 (1 stack) | code str16 | message str32 |
 *             [stack str32] | extra (CBOR map)
 *     RETIRE  type=6
 *     BYE     type=7 | reconnect u8 (0 or 1)
 *
 * Ids and `max` are at most 2^53-1; service and function names at most 1024 characters. One
 * encode/decode pair per message type; every decoder checks that a field's bytes are there
 * before reading it, and refuses unknown flags and bytes after a message that has no value.
 *
 * @module
 */
import {
  AuthFailedError,
  type AuthFailure,
  BadArgError,
  ConfigError,
  type ErrorCode,
  NodectlError,
  NodeDownError,
  NoProcError,
  PayloadTooLargeError,
  ProtocolError,
  RemoteError,
  TimeoutError,
  UndefError,
} from "../errors.ts";
import { Reader, write, type Writer } from "./cbor.ts";

/** The messages nodes exchange, as `decodeMessage` returns them. */
export type Message =
  /** First message on every session, both ways: this incarnation of the node. */
  | { type: "hello"; creation: string; hidden: boolean; max?: number }
  /** Call `service.fn(...args)`; answered by a `reply` or `error` with the same id. */
  | { type: "call"; id: number; service: string; fn: string; args: Uint8Array }
  /** Like call, no answer. */
  | { type: "cast"; service: string; fn: string; args: Uint8Array }
  /** The value a call returned (CBOR bytes). */
  | { type: "reply"; id: number; value: Uint8Array }
  /** A call failed: a stable error code, its message, and code-specific details (a CBOR map). */
  | {
    type: "error";
    id: number;
    code: string;
    message: string;
    stack?: string;
    extra: Uint8Array;
  }
  /** A duplicate session: the sender sends no new calls on it (it drains, then closes). */
  | { type: "retire" }
  /** The sender is closing this session; `reconnect: false` asks the peer not to reconnect. */
  | { type: "bye"; reconnect: boolean };

/** An error as it crosses the wire (see {@link errorToWire}). */
export interface WireError {
  code: string;
  message: string;
  stack?: string;
  extra: Record<string, unknown>;
}

const HELLO = 1;
const CALL = 2;
const CAST = 3;
const REPLY = 4;
const ERROR = 5;
const RETIRE = 6;
const BYE = 7;

const HELLO_HIDDEN = 1;
const HELLO_MAX = 2;
const ERROR_STACK = 1;

/** Longest service or function name, in characters. */
export const MAX_NAME = 1024;

function reason(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Encodes a value to CBOR.
 *
 * @throws BadArgError naming what could not be encoded; `what` says whose value it was
 *   ("arguments of SecretService.put").
 */
export function encodeValue(value: unknown, what = "value"): Uint8Array {
  // A copy of its own: messages share slabs, a value handed out must not.
  return write((w) => writeValue(w, value, what)).slice();
}

/**
 * Decodes a value encoded by {@link encodeValue} (or any CBOR using the same tags).
 *
 * @throws BadArgError when the bytes are not one well-formed CBOR value.
 */
export function decodeValue(bytes: Uint8Array, what = "value"): unknown {
  return readValue(bytes, what);
}

/**
 * Whose value it was, for an error message: "the reply of S.f on node@host". Callers pass the
 * words, joined only when something fails (most calls never need them).
 */
function whose(what: string, service?: string, fn?: string, rel?: string, node?: string) {
  if (service === undefined) return what;
  return `${what} of ${service}.${fn}${rel === undefined ? "" : ` ${rel} ${node}`}`;
}

function readValue(
  bytes: Uint8Array,
  what: string,
  service?: string,
  fn?: string,
  rel?: string,
  node?: string,
): unknown {
  try {
    return new Reader(bytes).value();
  } catch (err) {
    throw new BadArgError(
      `${whose(what, service, fn, rel, node)} cannot be decoded: ${reason(err)}`,
    );
  }
}

function writeValue(
  w: Writer,
  value: unknown,
  what: string,
  service?: string,
  fn?: string,
  rel?: string,
  node?: string,
): void {
  try {
    w.value(value);
  } catch (err) {
    throw new BadArgError(
      `${whose(what, service, fn, rel, node)} cannot be encoded: ${reason(err)}`,
    );
  }
}

function checkName(name: string): void {
  if (name.length > MAX_NAME) {
    throw new BadArgError(
      `'${name.slice(0, 40)}…' is ${name.length} characters long; service and function `
        + `names have at most ${MAX_NAME}`,
    );
  }
}

function checkNames(service: string, fn: string): void {
  checkName(service);
  checkName(fn);
}

function checkId(id: number): void {
  if (!Number.isSafeInteger(id) || id < 0) throw new RangeError(`bad message id ${id}`);
}

// ---- HELLO ---------------------------------------------------------------------------------

function writeHello(w: Writer, creation: string, hidden: boolean, max: number | undefined): void {
  w.u8(HELLO);
  w.u8((hidden ? HELLO_HIDDEN : 0) | (max !== undefined ? HELLO_MAX : 0));
  if (max !== undefined) {
    if (!Number.isSafeInteger(max) || max < 0) throw new RangeError(`bad hello max ${max}`);
    w.u64(max);
  }
  w.sizedUtf8(creation, 2);
}

function readHello(r: Reader): Message {
  const flags = r.u8("hello flags");
  if (flags & ~(HELLO_HIDDEN | HELLO_MAX)) throw new Error(`hello flags ${flags}`);
  let max: number | undefined;
  if (flags & HELLO_MAX) max = r.u64("hello max");
  const creation = r.sizedUtf8(2, "hello creation");
  const hidden = (flags & HELLO_HIDDEN) !== 0;
  return max === undefined
    ? { type: "hello", creation, hidden }
    : { type: "hello", creation, hidden, max };
}

// ---- CALL and CAST -------------------------------------------------------------------------

function writeCallHead(w: Writer, id: number | undefined, service: string, fn: string): void {
  if (id === undefined) {
    w.u8(CAST);
  } else {
    checkId(id);
    w.u8(CALL);
    w.u64(id);
  }
  w.sizedUtf8(service, 2);
  w.sizedUtf8(fn, 2);
}

function readName(r: Reader, what: string): string {
  const name = r.sizedUtf8(2, what);
  if (name.length > MAX_NAME) throw new Error(`${what} is over ${MAX_NAME} characters`);
  return name;
}

function readCall(r: Reader, bytes: Uint8Array, withId: boolean): Message {
  const id = withId ? r.u64("call id") : 0;
  const service = readName(r, "service name");
  const fn = readName(r, "function name");
  const args = bytes.subarray(r.pos);
  return withId
    ? { type: "call", id, service, fn, args }
    : { type: "cast", service, fn, args };
}

/**
 * A call of `service.fn` with `args` (any sendable value, normally an array), encoded into the
 * message in one go.
 *
 * @throws BadArgError for arguments that cannot be encoded or a name over 1024 characters.
 */
export function encodeCall(id: number, service: string, fn: string, args: unknown): Uint8Array {
  checkNames(service, fn);
  return write((w) => {
    writeCallHead(w, id, service, fn);
    writeValue(w, args, "arguments", service, fn);
  });
}

/** Like {@link encodeCall}, for a cast. */
export function encodeCast(service: string, fn: string, args: unknown): Uint8Array {
  checkNames(service, fn);
  return write((w) => {
    writeCallHead(w, undefined, service, fn);
    writeValue(w, args, "arguments", service, fn);
  });
}

/**
 * The arguments of a call or cast this node (`node`) received.
 *
 * @throws BadArgError when they cannot be decoded or are not an array.
 */
export function decodeArgs(m: { service: string; fn: string; args: Uint8Array }, node: string) {
  const args = readValue(m.args, "arguments", m.service, m.fn, "sent to", node);
  if (!Array.isArray(args)) {
    throw new BadArgError(`arguments of ${m.service}.${m.fn} must be an array`);
  }
  return args as unknown[];
}

// ---- REPLY ---------------------------------------------------------------------------------

function readReply(r: Reader, bytes: Uint8Array): Message {
  const id = r.u64("reply id");
  return { type: "reply", id, value: bytes.subarray(r.pos) };
}

/**
 * The reply to call `id` of `service.fn`, served by `node`: `value` encoded into the message in
 * one go.
 *
 * @throws BadArgError for a value that cannot be encoded.
 */
export function encodeReply(
  id: number,
  value: unknown,
  service: string,
  fn: string,
  node: string,
): Uint8Array {
  checkId(id);
  return write((w) => {
    w.u8(REPLY);
    w.u64(id);
    writeValue(w, value, "the reply", service, fn, "on", node);
  });
}

/**
 * The value of a reply to `service.fn` from `peer`.
 *
 * @throws BadArgError when it cannot be decoded.
 */
export function decodeReply(value: Uint8Array, service: string, fn: string, peer: string) {
  return readValue(value, "the reply", service, fn, "from", peer);
}

// ---- ERROR ---------------------------------------------------------------------------------

function writeErrorHead(w: Writer, id: number, e: Omit<WireError, "extra">): void {
  checkId(id);
  w.u8(ERROR);
  w.u64(id);
  w.u8(e.stack !== undefined ? ERROR_STACK : 0);
  w.sizedUtf8(e.code, 2);
  w.sizedUtf8(e.message, 4);
  if (e.stack !== undefined) w.sizedUtf8(e.stack, 4);
}

function readError(r: Reader, bytes: Uint8Array): Message {
  const id = r.u64("error id");
  const flags = r.u8("error flags");
  if (flags & ~ERROR_STACK) throw new Error(`error flags ${flags}`);
  const code = r.sizedUtf8(2, "error code");
  const message = r.sizedUtf8(4, "error message");
  const stack = flags & ERROR_STACK ? r.sizedUtf8(4, "error stack") : undefined;
  const extra = bytes.subarray(r.pos);
  return stack === undefined
    ? { type: "error", id, code, message, extra }
    : { type: "error", id, code, message, stack, extra };
}

/** The failure of call `id`, as {@link errorToWire} describes it. */
export function encodeError(id: number, e: WireError): Uint8Array {
  return write((w) => {
    writeErrorHead(w, id, e);
    writeValue(w, e.extra, "error details");
  });
}

/**
 * The code-specific details of a decoded error message, from `peer` for a call of `service.fn`.
 *
 * @throws BadArgError when they are not a CBOR map with string keys.
 */
export function decodeErrorExtra(
  extra: Uint8Array,
  service: string,
  fn: string,
  peer: string,
): Record<string, unknown> {
  const v = readValue(extra, "the error details", service, fn, "from", peer);
  if (
    typeof v !== "object" || v === null || Array.isArray(v) || v instanceof Map
    || v instanceof Uint8Array
  ) {
    throw new BadArgError(
      `${whose("the error details", service, fn, "from", peer)} are not a map with string keys`,
    );
  }
  return v as Record<string, unknown>;
}

// ---- RETIRE and BYE ------------------------------------------------------------------------

function readBye(r: Reader): Message {
  const b = r.u8("bye reconnect");
  if (b > 1) throw new Error(`bye reconnect ${b}`);
  return { type: "bye", reconnect: b === 1 };
}

// ---- any message ---------------------------------------------------------------------------

/**
 * Encodes a protocol message whose value (call args, reply value, error extra) is already CBOR.
 * Connections use {@link encodeCall}, {@link encodeReply} and friends, which encode the value
 * in place instead.
 */
export function encodeMessage(m: Message): Uint8Array {
  return write((w) => {
    switch (m.type) {
      case "hello":
        return writeHello(w, m.creation, m.hidden, m.max);
      case "call":
      case "cast":
        checkNames(m.service, m.fn);
        writeCallHead(w, m.type === "call" ? m.id : undefined, m.service, m.fn);
        return w.raw(m.args);
      case "reply":
        checkId(m.id);
        w.u8(REPLY);
        w.u64(m.id);
        return w.raw(m.value);
      case "error":
        writeErrorHead(w, m.id, m);
        return w.raw(m.extra);
      case "retire":
        return w.u8(RETIRE);
      case "bye":
        w.u8(BYE);
        return w.u8(m.reconnect ? 1 : 0);
    }
  });
}

/** Encodes the hello this node sends first on every session. */
export function encodeHello(
  creation: string,
  hidden: boolean,
  max: number | undefined,
): Uint8Array {
  return write((w) => writeHello(w, creation, hidden, max));
}

function describeType(t: number): string {
  // An older nodectl sent every message as one CBOR map (0xa0-0xbf).
  return t >= 0xa0 && t <= 0xbf
    ? `unknown type 0x${t.toString(16)} (a CBOR map: the peer runs an older nodectl; `
      + "run the same release on both nodes)"
    : `unknown type ${t}`;
}

function readMessage(r: Reader, bytes: Uint8Array): Message {
  const type = r.u8("message type");
  let m: Message;
  switch (type) {
    case HELLO:
      m = readHello(r);
      break;
    case CALL:
      return readCall(r, bytes, true);
    case CAST:
      return readCall(r, bytes, false);
    case REPLY:
      return readReply(r, bytes);
    case ERROR:
      return readError(r, bytes);
    case RETIRE:
      m = { type: "retire" };
      break;
    case BYE:
      m = readBye(r);
      break;
    default:
      throw new Error(describeType(type));
  }
  if (r.left !== 0) throw new Error(`${r.left} bytes after a ${m.type} message`);
  return m;
}

/**
 * Decodes a protocol message. Values (call args, reply values, error details) are views of
 * `bytes`, not copies: decode them before `bytes` may change.
 *
 * @throws ProtocolError for anything that is not a well-formed message.
 */
export function decodeMessage(bytes: Uint8Array): Message {
  try {
    return readMessage(new Reader(bytes), bytes);
  } catch (err) {
    throw new ProtocolError(`malformed message from peer: ${reason(err)}`);
  }
}

/** The wire form of an error: its code, message, stack (remote errors only) and details. */
export function errorToWire(err: unknown): WireError {
  if (err instanceof NodectlError) {
    const extra: Record<string, unknown> = {};
    if (err instanceof NoProcError) {
      extra.node = err.node;
      extra.service = err.service;
      extra.available = err.available;
    } else if (err instanceof NodeDownError) {
      if (err.node !== undefined) extra.node = err.node;
    } else if (err instanceof AuthFailedError) {
      extra.reason = err.reason;
      extra.refusedBy = err.refusedBy;
    }
    const out: WireError = {
      code: err.code,
      message: err.message,
      extra,
    };
    if (err instanceof RemoteError && err.remoteStack !== undefined) out.stack = err.remoteStack;
    return out;
  }
  const e = err instanceof Error ? err : new Error(String(err));
  const out: WireError = {
    code: "remote_error",
    message: `${e.name}: ${e.message}`,
    extra: {},
  };
  if (typeof e.stack === "string") out.stack = e.stack;
  return out;
}

const str = (v: unknown, fallback = ""): string => typeof v === "string" ? v : fallback;

/** Rebuilds the local error class for a wire error; unknown codes become RemoteError. */
export function errorFromWire(wire: WireError): NodectlError {
  const { message, extra } = wire;
  switch (wire.code as ErrorCode) {
    case "noproc":
      return new NoProcError(
        message,
        str(extra.node),
        str(extra.service),
        Array.isArray(extra.available) ? extra.available.filter((n) => typeof n === "string") : [],
      );
    case "undef":
      return new UndefError(message);
    case "nodedown":
      return new NodeDownError(message, ...(typeof extra.node === "string" ? [extra.node] : []));
    case "timeout":
      return new TimeoutError(message);
    case "auth_failed":
      return new AuthFailedError(
        message,
        str(extra.reason, "refused_by_peer") as AuthFailure,
        extra.refusedBy === "local" ? "local" : "remote",
      );
    case "remote_error":
      return new RemoteError(message, ...(wire.stack !== undefined ? [wire.stack] : []));
    case "payload_too_large":
      return new PayloadTooLargeError(message);
    case "badarg":
      return new BadArgError(message);
    case "config":
      return new ConfigError(message);
    case "protocol":
      return new ProtocolError(message);
    default:
      return new RemoteError(`${message} (unknown error code ${wire.code})`);
  }
}
