/**
 * The node-to-node protocol: CBOR messages on an authenticated `Session`.
 *
 * Every message is one CBOR map with a `type`. Call arguments and reply values travel as their
 * own CBOR byte strings inside the message, so a value that cannot be decoded fails that one
 * call with `badarg` instead of breaking the session.
 *
 * Values: `null`, `undefined`, booleans, numbers, strings, `bigint` (always CBOR tags 2/3, so
 * `1n` stays a bigint and any size or sign works), `Uint8Array` (other typed arrays, `DataView`
 * and `ArrayBuffer` arrive as `Uint8Array`), arrays, plain objects (string keys) and `Map`s
 * (tag 259, any keys, order kept). Anything else (Date, class instances, functions, cycles) is
 * refused with `BadArgError`.
 *
 * @module
 */
import { decode, encode, type TagDecoder, Token, Type } from "cborg";
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

/** CBOR tag for a JS `Map` (IANA "Map datatype with key-type"). */
const TAG_MAP = 259;

/** The messages nodes exchange. */
export type Message =
  /** First message on every session, both ways: this incarnation of the node. */
  | { type: "hello"; creation: string; hidden: boolean; max?: number }
  /** Call `service.fn(...args)`; answered by a `reply` or `error` with the same id. */
  | { type: "call"; id: number; service: string; fn: string; args: Uint8Array }
  /** Like call, no answer. */
  | { type: "cast"; service: string; fn: string; args: Uint8Array }
  /** The value a call returned (CBOR bytes). */
  | { type: "reply"; id: number; value: Uint8Array }
  /** A call failed: a stable error code, its message, and code-specific details. */
  | {
    type: "error";
    id: number;
    code: string;
    message: string;
    stack?: string;
    extra: Record<string, unknown>;
  }
  /** A duplicate session: the sender sends no new calls on it (it drains, then closes). */
  | { type: "retire" }
  /** The sender is closing this session; `reconnect: false` asks the peer not to reconnect. */
  | { type: "bye"; reconnect: boolean };

class TokenTree {
  constructor(readonly tokens: unknown[]) {}
}

class TaggedMap {
  constructor(readonly map: Map<unknown, unknown>) {}
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (typeof value !== "object") return typeof value;
  const proto = Object.getPrototypeOf(value);
  return proto?.constructor?.name ?? "object";
}

function toTokens(value: unknown, stack: Set<object>): unknown {
  switch (typeof value) {
    case "string":
      return new Token(Type.string, value);
    case "boolean":
      return new Token(value ? Type.true : Type.false, value);
    case "undefined":
      return new Token(Type.undefined, undefined);
    case "number":
      if (Number.isSafeInteger(value)) {
        return new Token(value >= 0 ? Type.uint : Type.negint, value);
      }
      return new Token(Type.float, value);
    case "bigint": {
      const negative = value < 0n;
      let n = negative ? -1n - value : value;
      const bytes: number[] = [];
      while (n > 0n) {
        bytes.unshift(Number(n & 0xffn));
        n >>= 8n;
      }
      return [new Token(Type.tag, negative ? 3 : 2), new Token(Type.bytes, Uint8Array.from(bytes))];
    }
    case "object":
      break;
    default:
      throw new TypeError(`a ${typeof value} cannot be sent`);
  }
  if (value === null) return new Token(Type.null, null);
  if (value instanceof Uint8Array) return new Token(Type.bytes, value);
  if (ArrayBuffer.isView(value)) {
    return new Token(
      Type.bytes,
      new Uint8Array(value.buffer, value.byteOffset, value.byteLength),
    );
  }
  if (value instanceof ArrayBuffer) return new Token(Type.bytes, new Uint8Array(value));
  if (stack.has(value)) throw new TypeError("a value that contains itself cannot be sent");
  stack.add(value);
  try {
    if (Array.isArray(value)) {
      const items: unknown[] = [new Token(Type.array, value.length)];
      for (let i = 0; i < value.length; i++) items.push(toTokens(value[i], stack));
      return items;
    }
    if (value instanceof Map) {
      const items: unknown[] = [new Token(Type.tag, TAG_MAP), new Token(Type.map, value.size)];
      for (const [k, v] of value) items.push(toTokens(k, stack), toTokens(v, stack));
      return items;
    }
    const proto = Object.getPrototypeOf(value);
    if (proto !== Object.prototype && proto !== null) {
      throw new TypeError(
        `a ${describe(value)} cannot be sent; use plain objects, arrays, Maps, strings, `
          + "numbers, bigints, booleans, null and Uint8Array",
      );
    }
    const keys = Object.keys(value);
    const items: unknown[] = [new Token(Type.map, keys.length)];
    for (const k of keys) {
      items.push(new Token(Type.string, k), toTokens((value as Record<string, unknown>)[k], stack));
    }
    return items;
  } finally {
    stack.delete(value);
  }
}

const ENCODE_OPTIONS = {
  typeEncoders: {
    Object: (v: unknown) => v instanceof TokenTree ? v.tokens as Token[] : null,
  },
};

function bigFromBytes(inner: unknown): bigint {
  if (!(inner instanceof Uint8Array)) throw new TypeError("bignum tag without a byte string");
  let n = 0n;
  for (const b of inner) n = (n << 8n) | BigInt(b);
  return n;
}

const TAGS: TagDecoder[] = [];
TAGS[2] = bigFromBytes;
TAGS[3] = (inner: unknown) => -1n - bigFromBytes(inner);
TAGS[TAG_MAP] = (inner: unknown) => {
  if (!(inner instanceof Map)) throw new TypeError("tag 259 without a map");
  return new TaggedMap(inner);
};

const DECODE_OPTIONS = { useMaps: true, rejectDuplicateMapKeys: true, tags: TAGS };

/** Rebuilds plain objects (untagged CBOR maps with string keys) and Maps (tag 259). */
function fromWire(value: unknown): unknown {
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) value[i] = fromWire(value[i]);
    return value;
  }
  if (value instanceof TaggedMap) {
    const out = new Map<unknown, unknown>();
    for (const [k, v] of value.map) out.set(fromWire(k), fromWire(v));
    return out;
  }
  if (value instanceof Map) {
    const entries = [...value];
    if (!entries.every(([k]) => typeof k === "string")) {
      return new Map(entries.map(([k, v]) => [fromWire(k), fromWire(v)]));
    }
    const out: Record<string, unknown> = {};
    for (const [k, v] of entries) {
      // defineProperty: a key named "__proto__" must stay data, never a prototype.
      Object.defineProperty(out, k as string, {
        value: fromWire(v),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    }
    return out;
  }
  return value;
}

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
  try {
    return encode(new TokenTree([toTokens(value, new Set())]), ENCODE_OPTIONS);
  } catch (err) {
    throw new BadArgError(`${what} cannot be encoded: ${reason(err)}`);
  }
}

/**
 * Decodes a value encoded by {@link encodeValue} (or any CBOR using the same tags).
 *
 * @throws BadArgError when the bytes are not one well-formed CBOR value.
 */
export function decodeValue(bytes: Uint8Array, what = "value"): unknown {
  try {
    return fromWire(decode(bytes, DECODE_OPTIONS));
  } catch (err) {
    throw new BadArgError(`${what} cannot be decoded: ${reason(err)}`);
  }
}

/** Encodes a protocol message. */
export function encodeMessage(message: Message): Uint8Array {
  return encodeValue(message, `a ${message.type} message`);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Map)
    && !(v instanceof Uint8Array);
}

const isId = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
const isName = (v: unknown): v is string => typeof v === "string" && v.length <= 1024;

/**
 * Decodes and validates a protocol message.
 *
 * @throws ProtocolError for anything that is not a well-formed message.
 */
export function decodeMessage(bytes: Uint8Array): Message {
  let m: unknown;
  try {
    m = decodeValue(bytes, "message");
  } catch (err) {
    throw new ProtocolError(`malformed message from peer: ${reason(err)}`);
  }
  const bad = (why: string) => new ProtocolError(`malformed message from peer: ${why}`);
  if (!isObject(m)) throw bad("not a map");
  switch (m.type) {
    case "hello":
      if (typeof m.creation !== "string" || typeof m.hidden !== "boolean") throw bad("hello");
      if (m.max !== undefined && !(isId(m.max) && m.max > 0)) throw bad("hello max");
      return {
        type: "hello",
        creation: m.creation,
        hidden: m.hidden,
        ...(m.max !== undefined ? { max: m.max as number } : {}),
      };
    case "call":
      if (
        !isId(m.id) || !isName(m.service) || !isName(m.fn) || !(m.args instanceof Uint8Array)
      ) throw bad("call");
      return { type: "call", id: m.id, service: m.service, fn: m.fn, args: m.args };
    case "cast":
      if (!isName(m.service) || !isName(m.fn) || !(m.args instanceof Uint8Array)) {
        throw bad("cast");
      }
      return { type: "cast", service: m.service, fn: m.fn, args: m.args };
    case "reply":
      if (!isId(m.id) || !(m.value instanceof Uint8Array)) throw bad("reply");
      return { type: "reply", id: m.id, value: m.value };
    case "error": {
      if (
        !isId(m.id) || typeof m.code !== "string" || typeof m.message !== "string"
        || !(m.stack === undefined || typeof m.stack === "string") || !isObject(m.extra)
      ) throw bad("error");
      const e: Message = {
        type: "error",
        id: m.id,
        code: m.code,
        message: m.message,
        extra: m.extra,
      };
      if (typeof m.stack === "string") e.stack = m.stack;
      return e;
    }
    case "retire":
      return { type: "retire" };
    case "bye":
      if (typeof m.reconnect !== "boolean") throw bad("bye");
      return { type: "bye", reconnect: m.reconnect };
    default:
      throw bad(`unknown type ${JSON.stringify(String(m.type)).slice(0, 40)}`);
  }
}

/** The wire form of an error: its code, message, stack (remote errors only) and details. */
export function errorToWire(
  err: unknown,
): { code: string; message: string; stack?: string; extra: Record<string, unknown> } {
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
    const out: { code: string; message: string; stack?: string; extra: Record<string, unknown> } = {
      code: err.code,
      message: err.message,
      extra,
    };
    if (err instanceof RemoteError && err.remoteStack !== undefined) out.stack = err.remoteStack;
    return out;
  }
  const e = err instanceof Error ? err : new Error(String(err));
  const out: { code: string; message: string; stack?: string; extra: Record<string, unknown> } = {
    code: "remote_error",
    message: `${e.name}: ${e.message}`,
    extra: {},
  };
  if (typeof e.stack === "string") out.stack = e.stack;
  return out;
}

const str = (v: unknown, fallback = ""): string => typeof v === "string" ? v : fallback;

/** Rebuilds the local error class for a wire error; unknown codes become RemoteError. */
export function errorFromWire(
  wire: { code: string; message: string; stack?: string; extra: Record<string, unknown> },
): NodectlError {
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
