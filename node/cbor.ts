/**
 * The value codec: call arguments and results as CBOR (RFC 8949), written straight into the
 * buffer of the message that carries them and read straight out of it.
 *
 * Values: `null`, `undefined`, booleans, numbers, strings, `bigint` (always CBOR tags 2/3, so
 * `1n` stays a bigint and any size or sign works), `Uint8Array` (other typed arrays, `DataView`
 * and `ArrayBuffer` arrive as `Uint8Array`), arrays, plain objects (string keys) and `Map`s
 * (tag 259, any keys, order kept). Anything else (Date, class instances, functions, cycles) is
 * refused with a `TypeError` saying what it was.
 *
 * Encoding uses the shortest form of every integer and length, float32 when it is exact, and
 * definite lengths only. Decoding is strict: exactly one item; definite lengths; no tags but 2,
 * 3 and 259; no simple values but false/true/null/undefined; valid UTF-8; no duplicate map keys;
 * every length is checked against the bytes left before anything is allocated. Byte strings are
 * copied out, so a decoded value never shares memory with the message it came in.
 *
 * @module
 */

const MAX_SAFE = Number.MAX_SAFE_INTEGER;
const TAG_BIGNUM = 2;
const TAG_NEG_BIGNUM = 3;
/** CBOR tag for a JS `Map` (IANA "Map datatype with key-type"). */
const TAG_MAP = 259;

/** Byte strings at least this long are not staged: they are copied once, into the result. */
const BY_REFERENCE = 1024;
/** Messages are written one after another into slabs of this size (or larger, for one). */
const SLAB = 32 * 1024;
/** Paths to values nested deeper than this are checked for cycles with a Set. */
const SHALLOW = 32;

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

function describe(value: object): string {
  const proto = Object.getPrototypeOf(value);
  return proto?.constructor?.name ?? "object";
}

/** Bytes of a CBOR head with argument `n` (a non-negative safe integer). */
function headLength(n: number): number {
  return n < 24 ? 1 : n < 0x100 ? 2 : n < 0x10000 ? 3 : n < 0x100000000 ? 5 : 9;
}

/**
 * Builds messages: fixed-size fields, UTF-8 strings and CBOR values. Messages are written one
 * after another into a slab (`buf[start, pos)` is the one being written) and handed out as
 * views of it, so a small message costs no allocation of its own; a slab is freed once every
 * message in it is. A message is never written to again once `finish()` returned it. A message
 * with long byte strings is the exception: those are not staged but kept by reference, and
 * `finish()` copies everything once, into one new, exactly sized array.
 */
export class Writer {
  buf = new Uint8Array(SLAB);
  view = new DataView(this.buf.buffer);
  start = 0;
  pos = 0;
  /** Long byte strings, and the offset (from `start`) each goes at. */
  refs: Uint8Array[] = [];
  refAt: number[] = [];
  refBytes = 0;
  /** Objects on the path to the value being written (cycle check). */
  path: object[] = [];
  pathTop = 0;
  deep: Set<object> | undefined;

  /** Makes room for `n` more bytes, moving the message to a new slab if needed. */
  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const used = this.pos - this.start;
    const slab = new Uint8Array(Math.max(SLAB, 2 * (used + n)));
    slab.set(this.buf.subarray(this.start, this.pos));
    this.buf = slab;
    this.view = new DataView(slab.buffer);
    this.start = 0;
    this.pos = used;
  }

  u8(b: number): void {
    this.ensure(1);
    this.buf[this.pos++] = b;
  }

  u16(n: number): void {
    this.ensure(2);
    this.view.setUint16(this.pos, n);
    this.pos += 2;
  }

  u32(n: number): void {
    this.ensure(4);
    this.view.setUint32(this.pos, n);
    this.pos += 4;
  }

  /** A non-negative safe integer in 8 bytes. */
  u64(n: number): void {
    this.ensure(8);
    const p = this.pos;
    if (n <= 0xffffffff) {
      this.view.setUint32(p, 0);
      this.view.setUint32(p + 4, n);
    } else {
      const hi = Math.floor(n / 0x100000000);
      this.view.setUint32(p, hi);
      this.view.setUint32(p + 4, n - hi * 0x100000000);
    }
    this.pos = p + 8;
  }

  /** Bytes as they are (no CBOR head). */
  raw(bytes: Uint8Array): void {
    if (bytes.length >= BY_REFERENCE) {
      this.refs.push(bytes);
      this.refAt.push(this.pos - this.start);
      this.refBytes += bytes.length;
      return;
    }
    this.ensure(bytes.length);
    this.buf.set(bytes, this.pos);
    this.pos += bytes.length;
  }

  /** `s` as UTF-8 (no length). */
  utf8(s: string): void {
    const n = s.length;
    if (n <= 64) {
      this.ensure(n);
      const buf = this.buf;
      let p = this.pos;
      let i = 0;
      for (; i < n; i++) {
        const c = s.charCodeAt(i);
        if (c >= 0x80) break;
        buf[p++] = c;
      }
      if (i === n) {
        this.pos = p;
        return;
      }
    }
    this.ensure(n * 3);
    this.pos += utf8Encoder.encodeInto(s, this.buf.subarray(this.pos, this.pos + n * 3)).written;
  }

  /** `s` as UTF-8 after its length in `size` (2 or 4) bytes; throws if it does not fit. */
  sizedUtf8(s: string, size: 2 | 4): void {
    this.ensure(size);
    const at = this.pos - this.start; // utf8() may move the message
    this.pos += size;
    this.utf8(s);
    const length = this.pos - this.start - at - size;
    if (size === 2) {
      if (length > 0xffff) throw new RangeError(`a string of ${length} bytes is too long`);
      this.view.setUint16(this.start + at, length);
    } else {
      this.view.setUint32(this.start + at, length);
    }
  }

  /** A CBOR head: major type and argument (a non-negative safe integer). */
  head(major: number, n: number): void {
    this.ensure(9);
    const m = major << 5;
    const buf = this.buf;
    const p = this.pos;
    if (n < 24) {
      buf[p] = m | n;
      this.pos = p + 1;
    } else if (n < 0x100) {
      buf[p] = m | 24;
      buf[p + 1] = n;
      this.pos = p + 2;
    } else if (n < 0x10000) {
      buf[p] = m | 25;
      this.view.setUint16(p + 1, n);
      this.pos = p + 3;
    } else if (n < 0x100000000) {
      buf[p] = m | 26;
      this.view.setUint32(p + 1, n);
      this.pos = p + 5;
    } else {
      buf[p] = m | 27;
      this.pos = p + 1;
      this.u64(n);
    }
  }

  /** A CBOR text string. */
  text(s: string): void {
    const n = s.length;
    if (n < 24) {
      // Short and (usually) ASCII: the head is one byte either way unless it is not ASCII.
      this.ensure(n + 1);
      const buf = this.buf;
      const start = this.pos;
      let p = start + 1;
      let i = 0;
      for (; i < n; i++) {
        const c = s.charCodeAt(i);
        if (c >= 0x80) break;
        buf[p++] = c;
      }
      if (i === n) {
        buf[start] = 0x60 | n;
        this.pos = p;
        return;
      }
    }
    const max = n * 3;
    this.ensure(max + 9);
    const start = this.pos;
    const h = headLength(max);
    const written = utf8Encoder.encodeInto(s, this.buf.subarray(start + h, start + h + max))
      .written;
    const h2 = headLength(written);
    if (h2 !== h) this.buf.copyWithin(start + h2, start + h, start + h + written);
    this.head(3, written);
    this.pos = start + h2 + written;
  }

  /** Any sendable value, as CBOR. */
  value(v: unknown, depth = 0): void {
    switch (typeof v) {
      case "string":
        return this.text(v);
      case "number":
        if (Number.isSafeInteger(v)) return v >= 0 ? this.head(0, v) : this.head(1, -1 - v);
        return this.float(v);
      case "boolean":
        return this.u8(v ? 0xf5 : 0xf4);
      case "undefined":
        return this.u8(0xf7);
      case "bigint":
        return this.bigint(v);
      case "object":
        if (v === null) return this.u8(0xf6);
        return this.object(v, depth);
      default:
        throw new TypeError(`a ${typeof v} cannot be sent`);
    }
  }

  float(v: number): void {
    this.ensure(9);
    const p = this.pos;
    if (Number.isNaN(v)) {
      this.buf[p] = 0xf9;
      this.buf[p + 1] = 0x7e;
      this.buf[p + 2] = 0;
      this.pos = p + 3;
    } else if (Math.fround(v) === v) {
      this.buf[p] = 0xfa;
      this.view.setFloat32(p + 1, v);
      this.pos = p + 5;
    } else {
      this.buf[p] = 0xfb;
      this.view.setFloat64(p + 1, v);
      this.pos = p + 9;
    }
  }

  bigint(v: bigint): void {
    const negative = v < 0n;
    const n = negative ? -1n - v : v;
    this.u8(0xc0 | (negative ? TAG_NEG_BIGNUM : TAG_BIGNUM));
    if (n === 0n) return this.head(2, 0);
    let hex = n.toString(16);
    if (hex.length & 1) hex = "0" + hex;
    const length = hex.length >> 1;
    this.head(2, length);
    this.ensure(length);
    for (let i = 0; i < length; i++) {
      this.buf[this.pos++] = parseInt(hex.substring(2 * i, 2 * i + 2), 16);
    }
  }

  object(v: object, depth: number): void {
    if (v instanceof Uint8Array) {
      this.head(2, v.length);
      return this.raw(v);
    }
    if (ArrayBuffer.isView(v)) {
      this.head(2, v.byteLength);
      return this.raw(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
    }
    if (v instanceof ArrayBuffer) {
      this.head(2, v.byteLength);
      return this.raw(new Uint8Array(v));
    }
    this.enter(v, depth);
    if (Array.isArray(v)) {
      const n = v.length;
      this.head(4, n);
      for (let i = 0; i < n; i++) this.value(v[i], depth + 1);
    } else if (v instanceof Map) {
      this.head(6, TAG_MAP);
      this.head(5, v.size);
      for (const [k, item] of v) {
        this.value(k, depth + 1);
        this.value(item, depth + 1);
      }
    } else {
      const proto = Object.getPrototypeOf(v);
      if (proto !== Object.prototype && proto !== null) {
        throw new TypeError(
          `a ${describe(v)} cannot be sent; use plain objects, arrays, Maps, strings, `
            + "numbers, bigints, booleans, null and Uint8Array",
        );
      }
      const keys = Object.keys(v);
      this.head(5, keys.length);
      for (const k of keys) {
        this.text(k);
        this.value((v as Record<string, unknown>)[k], depth + 1);
      }
    }
    this.leave(v, depth);
  }

  /** Refuses a value that contains itself: a plain scan near the top, a Set further down. */
  enter(v: object, depth: number): void {
    const path = this.path;
    if (depth < SHALLOW) {
      for (let i = 0; i < depth; i++) if (path[i] === v) throw new TypeError(CYCLE);
      path[depth] = v;
      if (depth >= this.pathTop) this.pathTop = depth + 1;
      return;
    }
    const deep = this.deep ??= new Set();
    if (deep.has(v) || path.includes(v)) throw new TypeError(CYCLE);
    deep.add(v);
  }

  leave(v: object, depth: number): void {
    if (depth >= SHALLOW) this.deep!.delete(v);
  }

  /** The message written since the last `finish()`; nothing writes to it again. */
  finish(): Uint8Array {
    const start = this.start;
    if (this.refs.length === 0) {
      if (this.buf.length > SLAB && 2 * (this.pos - start) < this.buf.length) {
        // Written into a slab grown for it that it fills less than half of: copy it out.
        const copy = this.buf.slice(start, this.pos);
        this.pos = start;
        return copy;
      }
      const out = this.buf.subarray(start, this.pos);
      this.start = this.pos;
      return out;
    }
    const out = new Uint8Array(this.pos - start + this.refBytes);
    let from = 0;
    let at = 0;
    for (let i = 0; i < this.refs.length; i++) {
      const upTo = this.refAt[i]!;
      out.set(this.buf.subarray(start + from, start + upTo), at);
      at += upTo - from;
      from = upTo;
      const ref = this.refs[i]!;
      out.set(ref, at);
      at += ref.length;
    }
    out.set(this.buf.subarray(start + from, this.pos), at);
    this.pos = start; // copied out: the space is free again
    return out;
  }

  /** Drops what was written and not finished, and any references to the caller's data. */
  reset(): void {
    this.pos = this.start;
    this.refBytes = 0;
    if (this.refs.length > 0) {
      this.refs = [];
      this.refAt = [];
    }
    const path = this.path;
    for (let i = 0; i < this.pathTop; i++) path[i] = NOTHING;
    this.pathTop = 0;
    this.deep = undefined;
    if (this.buf.length > SLAB) {
      // A slab grown for one large message: leave it to that message, start a normal one.
      this.buf = new Uint8Array(SLAB);
      this.view = new DataView(this.buf.buffer);
      this.start = this.pos = 0;
    }
  }
}

const CYCLE = "a value that contains itself cannot be sent";
const NOTHING = {};

let spare: Writer | undefined = new Writer();

/**
 * Runs `fn` with a writer and returns what it wrote: usually a view of a slab that later
 * messages are written into too (never over it), so it is for a session to send, not for code
 * that might read its `.buffer`. The writer is reused between messages; a nested use (a getter
 * that sends while its object is being encoded) gets its own.
 */
export function write(fn: (w: Writer) => void): Uint8Array {
  const w = spare ?? new Writer();
  spare = undefined;
  try {
    fn(w);
    return w.finish();
  } finally {
    w.reset();
    spare = w;
  }
}

/** ASCII strings up to this long are looked up in `shortCache` (direct-mapped, by hash). */
const SHORT = 32;
const SHORT_CACHE_BITS = 10;
const shortCache: string[] = new Array<string>(1 << SHORT_CACHE_BITS).fill("");

const HEX: string[] = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

/**
 * Reads fixed-size fields, UTF-8 strings and CBOR values from `bytes[start, end)`. Every read
 * checks the bytes left first and throws `Error` (never reads past `end`).
 */
export class Reader {
  readonly bytes: Uint8Array;
  pos: number;
  readonly end: number;
  #view: DataView | undefined;

  constructor(bytes: Uint8Array, start = 0, end = bytes.length) {
    this.bytes = bytes;
    this.pos = start;
    this.end = end;
  }

  get left(): number {
    return this.end - this.pos;
  }

  get view(): DataView {
    return this.#view ??= new DataView(
      this.bytes.buffer,
      this.bytes.byteOffset,
      this.bytes.byteLength,
    );
  }

  /** Throws unless `n` more bytes are there; `what` names the field for the message. */
  need(n: number, what: string): void {
    if (n > this.end - this.pos) {
      throw new Error(`${what} needs ${n} bytes, ${this.end - this.pos} left`);
    }
  }

  u8(what: string): number {
    this.need(1, what);
    return this.bytes[this.pos++]!;
  }

  u16(what: string): number {
    this.need(2, what);
    const b = this.bytes;
    const p = this.pos;
    this.pos = p + 2;
    return (b[p]! << 8) | b[p + 1]!;
  }

  u32(what: string): number {
    this.need(4, what);
    const v = uint32(this.bytes, this.pos);
    this.pos += 4;
    return v;
  }

  /** 8 bytes holding a safe integer; throws for anything larger. */
  u64(what: string): number {
    this.need(8, what);
    const hi = uint32(this.bytes, this.pos);
    const lo = uint32(this.bytes, this.pos + 4);
    this.pos += 8;
    if (hi > 0x1fffff) throw new Error(`${what} is over 2^53-1`);
    return hi * 0x100000000 + lo;
  }

  /** `n` bytes of UTF-8. */
  utf8(n: number, what: string): string {
    this.need(n, what);
    const b = this.bytes;
    const start = this.pos;
    const end = start + n;
    this.pos = end;
    if (n <= SHORT) {
      // Short ASCII strings (map keys, names) repeat: look them up before making a new one.
      let h = n;
      let i = start;
      for (; i < end; i++) {
        const c = b[i]!;
        if (c >= 0x80) break;
        h = Math.imul(h ^ c, 0x01000193);
      }
      if (i === end) {
        const slot = h >>> (32 - SHORT_CACHE_BITS);
        const known = shortCache[slot]!;
        if (known.length === n) {
          let j = 0;
          while (j < n && known.charCodeAt(j) === b[start + j]) j++;
          if (j === n) return known;
        }
        const s = String.fromCharCode.apply(null, b.subarray(start, end) as unknown as number[]);
        shortCache[slot] = s;
        return s;
      }
    } else if (n <= 64) {
      let i = start;
      while (i < end && b[i]! < 0x80) i++;
      if (i === end) {
        return String.fromCharCode.apply(null, b.subarray(start, end) as unknown as number[]);
      }
    }
    try {
      return utf8Decoder.decode(b.subarray(start, end));
    } catch {
      throw new Error(`${what} is not valid UTF-8`);
    }
  }

  /** A UTF-8 string after its length in `size` (2 or 4) bytes. */
  sizedUtf8(size: 2 | 4, what: string): string {
    const n = size === 2 ? this.u16(`the length of ${what}`) : this.u32(`the length of ${what}`);
    return this.utf8(n, what);
  }

  /** Exactly one CBOR value filling the rest of the range. */
  value(): unknown {
    const v = this.item();
    if (this.pos !== this.end) {
      throw new Error(`${this.end - this.pos} bytes after the end of the value`);
    }
    return v;
  }

  /** The argument of a head: a number, or a bigint when it is over 2^53-1. */
  arg(minor: number): number | bigint {
    if (minor < 24) return minor;
    const b = this.bytes;
    const p = this.pos;
    switch (minor) {
      case 24:
        this.need(1, "an integer");
        this.pos = p + 1;
        return b[p]!;
      case 25:
        this.need(2, "an integer");
        this.pos = p + 2;
        return (b[p]! << 8) | b[p + 1]!;
      case 26:
        this.need(4, "an integer");
        this.pos = p + 4;
        return uint32(b, p);
      case 27: {
        this.need(8, "an integer");
        this.pos = p + 8;
        const hi = uint32(b, p);
        const lo = uint32(b, p + 4);
        if (hi <= 0x1fffff) return hi * 0x100000000 + lo;
        return (BigInt(hi) << 32n) | BigInt(lo);
      }
      case 31:
        throw new Error("indefinite-length items are not supported");
      default:
        throw new Error(`reserved additional information ${minor}`);
    }
  }

  /** A length: at most the bytes left (each element takes at least `unit` bytes). */
  length(minor: number, unit = 1): number {
    const n = this.arg(minor);
    if (typeof n !== "number" || n * unit > this.end - this.pos) {
      throw new Error(`a length of ${n} runs past the end of the value`);
    }
    return n;
  }

  item(): unknown {
    if (this.pos >= this.end) throw new Error("the value ends early");
    const ib = this.bytes[this.pos++]!;
    const minor = ib & 31;
    switch (ib >> 5) {
      case 0:
        return this.arg(minor);
      case 1: {
        const n = this.arg(minor);
        if (typeof n === "bigint") return -1n - n;
        return n < MAX_SAFE ? -1 - n : -1n - BigInt(n);
      }
      case 2: {
        const n = this.length(minor);
        const p = this.pos;
        this.pos = p + n;
        return this.bytes.slice(p, p + n);
      }
      case 3:
        return this.utf8(this.length(minor), "a string");
      case 4: {
        const n = this.length(minor);
        const out = new Array<unknown>(n);
        for (let i = 0; i < n; i++) out[i] = this.item();
        return out;
      }
      case 5:
        return this.map(this.length(minor, 2), false);
      case 6:
        return this.tagged(this.arg(minor));
      default:
        return this.simple(minor);
    }
  }

  /** A map: a plain object when every key is a string (and not tagged 259), else a Map. */
  map(n: number, tagged: boolean): Record<string, unknown> | Map<unknown, unknown> {
    const start = this.pos;
    if (!tagged) {
      const out: Record<string, unknown> = {};
      let i = 0;
      for (; i < n; i++) {
        const k = this.item();
        if (typeof k !== "string") break;
        if (Object.hasOwn(out, k)) throw new Error(`duplicate map key ${JSON.stringify(k)}`);
        const v = this.item();
        if (k === "__proto__") {
          // A key named "__proto__" must stay data, never a prototype.
          Object.defineProperty(out, k, {
            value: v,
            enumerable: true,
            writable: true,
            configurable: true,
          });
        } else {
          out[k] = v;
        }
      }
      if (i === n) return out;
      this.pos = start; // a key that is not a string: read it again as a Map
    }
    const out = new Map<unknown, unknown>();
    for (let i = 0; i < n; i++) {
      const k = this.item();
      if (out.has(k)) throw new Error("duplicate map key");
      out.set(k, this.item());
    }
    return out;
  }

  tagged(tag: number | bigint): unknown {
    if (tag === TAG_BIGNUM || tag === TAG_NEG_BIGNUM) {
      if (this.pos >= this.end || this.bytes[this.pos]! >> 5 !== 2) {
        throw new Error("bignum tag without a byte string");
      }
      const n = this.length(this.bytes[this.pos++]! & 31);
      const b = this.bytes;
      let big: bigint;
      if (n <= 6) {
        let v = 0;
        for (let i = 0; i < n; i++) v = v * 256 + b[this.pos + i]!;
        big = BigInt(v);
      } else {
        let hex = "0x";
        for (let i = 0; i < n; i++) hex += HEX[b[this.pos + i]!];
        big = BigInt(hex);
      }
      this.pos += n;
      return tag === TAG_BIGNUM ? big : -1n - big;
    }
    if (tag === TAG_MAP) {
      if (this.pos >= this.end || this.bytes[this.pos]! >> 5 !== 5) {
        throw new Error("tag 259 without a map");
      }
      return this.map(this.length(this.bytes[this.pos++]! & 31, 2), true);
    }
    throw new Error(`tag ${tag} is not supported`);
  }

  simple(minor: number): unknown {
    const p = this.pos;
    switch (minor) {
      case 20:
        return false;
      case 21:
        return true;
      case 22:
        return null;
      case 23:
        return undefined;
      case 25: {
        this.need(2, "a float16");
        this.pos = p + 2;
        return half((this.bytes[p]! << 8) | this.bytes[p + 1]!);
      }
      case 26:
        this.need(4, "a float32");
        this.pos = p + 4;
        return this.view.getFloat32(p);
      case 27:
        this.need(8, "a float64");
        this.pos = p + 8;
        return this.view.getFloat64(p);
      case 31:
        throw new Error("a break outside an indefinite-length item");
      default:
        throw new Error(`simple value ${minor} is not supported`);
    }
  }
}

/** The big-endian u32 at `bytes[p]` (the caller checked the bytes are there). */
function uint32(bytes: Uint8Array, p: number): number {
  return ((bytes[p]! << 24) >>> 0) + ((bytes[p + 1]! << 16) | (bytes[p + 2]! << 8) | bytes[p + 3]!);
}

/** An IEEE 754 half-precision float. */
function half(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >> 10) & 0x1f;
  const mant = bits & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}
