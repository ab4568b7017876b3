/**
 * TCP `Transport`: the only module with socket code. Each wire message travels as a 2-byte
 * big-endian length followed by the message (at most 65535 bytes); `sendParts()` writes a message
 * given in pieces without joining its long pieces. Writes made in the same tick are corked into
 * one `writev`; sending waits for the socket to drain only once a megabyte is buffered; reading
 * pauses the socket when the consumer falls behind.
 *
 * @module
 */

import { connect, createServer, type Socket } from "node:net";
import process from "node:process";
import { ConfigError, NodeDownError, TimeoutError } from "../errors.ts";
import {
  NOISE_MAX_MESSAGE,
  TCP_CLOSE_LINGER_MS,
  TCP_CONNECT_TIMEOUT_MS,
  TCP_LENGTH_PREFIX,
  TCP_READ_HIGH_WATER,
  TCP_WRITE_HIGH_WATER,
} from "./constants.ts";
import type { Listener, Transport } from "./types.ts";

/** Options for `connectTcp`. */
export interface ConnectTcpOptions {
  /** Aborting it abandons the connect attempt with TimeoutError. */
  signal?: AbortSignal;
}

/** Messages below this size are copied behind their length prefix into one buffer. */
const COPY_BELOW = 4096;
const RESOLVED = Promise.resolve();

/**
 * Incremental parser of length-prefixed wire messages. Complete messages inside a chunk are
 * returned as views (no copy); a message split across chunks is assembled into one buffer of its
 * exact size, so parsing is linear in the bytes received.
 */
export class WireDecoder {
  #partial: Uint8Array | null = null;
  #filled = 0;
  #highByte = -1;

  /** Bytes held for an incomplete message. */
  get buffered(): number {
    return (this.#highByte >= 0 ? 1 : 0) + (this.#partial ? this.#filled + TCP_LENGTH_PREFIX : 0);
  }

  /** Consumes `chunk`, calling `onMessage` for each message it completes, in order. */
  feed(chunk: Uint8Array, onMessage: (message: Uint8Array) => void): void {
    const n = chunk.length;
    let i = 0;
    if (this.#highByte >= 0) {
      if (n === 0) return;
      this.#partial = new Uint8Array((this.#highByte << 8) | chunk[0]!);
      this.#filled = 0;
      this.#highByte = -1;
      i = 1;
    }
    const partial = this.#partial;
    if (partial) {
      const take = Math.min(partial.length - this.#filled, n - i);
      partial.set(chunk.subarray(i, i + take), this.#filled);
      this.#filled += take;
      i += take;
      if (this.#filled < partial.length) return;
      this.#partial = null;
      onMessage(partial);
    }
    while (n - i >= TCP_LENGTH_PREFIX) {
      const length = (chunk[i]! << 8) | chunk[i + 1]!;
      const start = i + TCP_LENGTH_PREFIX;
      if (n - start >= length) {
        i = start + length;
        onMessage(chunk.subarray(start, i));
      } else {
        const buf = new Uint8Array(length);
        buf.set(chunk.subarray(start));
        this.#partial = buf;
        this.#filled = n - start;
        return;
      }
    }
    if (i < n) this.#highByte = chunk[i]!;
  }
}

/** The pieces of `run` (`length` bytes in all) as one array; a lone piece as it is. */
function joinRun(run: readonly Uint8Array[], length: number): Uint8Array {
  if (run.length === 1) return run[0]!;
  const out = new Uint8Array(length);
  let at = 0;
  for (const piece of run) {
    out.set(piece, at);
    at += piece.length;
  }
  return out;
}

/** "host:port", with brackets around an IPv6 host. */
function formatAddress(host: string | undefined, port: number | undefined): string {
  if (host === undefined) return "unknown";
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

const ERRNO_TEXT: Record<string, string> = {
  ECONNREFUSED: "connection refused",
  ECONNRESET: "connection reset by peer",
  EHOSTUNREACH: "host unreachable",
  ENETUNREACH: "network unreachable",
  ETIMEDOUT: "timed out",
  ENOTFOUND: "unknown host",
  EAI_AGAIN: "host name lookup failed",
  EPIPE: "broken pipe",
  EADDRINUSE: "address already in use",
  EADDRNOTAVAIL: "address not available on this machine",
  EACCES: "permission denied",
};

function describe(err: unknown): string {
  const code = (err as { code?: unknown })?.code;
  if (typeof code === "string") return `${ERRNO_TEXT[code] ?? "error"} (${code})`;
  return err instanceof Error ? err.message : String(err);
}

class TcpTransport implements Transport {
  readonly closed: Promise<void>;
  readonly #socket: Socket;
  readonly #decoder = new WireDecoder();
  #queue: Uint8Array[] = [];
  #head = 0;
  #queuedBytes = 0;
  #paused = false;
  #reader: ((result: IteratorResult<Uint8Array>) => void) | null = null;
  #readerReject: ((err: Error) => void) | null = null;
  #ended = false;
  #error: Error | null = null;
  #localClosed = false;
  #socketClosed = false;
  #corked = false;
  #drainWaiters: { resolve: () => void; reject: (err: Error) => void }[] = [];
  #linger: ReturnType<typeof setTimeout> | undefined;
  #onMessage = (message: Uint8Array) => this.#enqueue(message);
  #uncork = () => {
    this.#corked = false;
    this.#socket.uncork();
  };

  constructor(socket: Socket, readonly remoteAddress: string) {
    this.#socket = socket;
    socket.setNoDelay(true);
    let resolveClosed!: () => void;
    this.closed = new Promise((resolve) => resolveClosed = resolve);
    socket.on("data", (chunk: Uint8Array) => {
      if (this.#localClosed) return;
      this.#decoder.feed(
        new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength),
        this.#onMessage,
      );
    });
    socket.on("end", () => {
      if (this.#decoder.buffered > 0 && !this.#error) {
        this.#error = new NodeDownError(
          `connection to ${remoteAddress} ended in the middle of a message`,
        );
      }
      this.#finishReading();
    });
    socket.on("error", (err) => {
      if (!this.#localClosed && !this.#error) {
        this.#error = new NodeDownError(`connection to ${remoteAddress} lost: ${describe(err)}`);
      }
      this.#finishReading();
    });
    socket.on("drain", () => {
      for (const w of this.#drainWaiters.splice(0)) w.resolve();
    });
    socket.on("close", () => {
      this.#socketClosed = true;
      if (this.#linger !== undefined) clearTimeout(this.#linger);
      const err = this.#downError();
      for (const w of this.#drainWaiters.splice(0)) w.reject(err);
      this.#finishReading();
      resolveClosed();
    });
  }

  send(message: Uint8Array): Promise<void> {
    return this.sendParts([message]);
  }

  /**
   * One wire message made of `parts`: the length prefix and runs of short parts are copied into
   * one buffer each, long parts are written as they are (all corked into one writev).
   */
  sendParts(parts: readonly Uint8Array[]): Promise<void> {
    let length = 0;
    for (const part of parts) length += part.length;
    if (length > NOISE_MAX_MESSAGE) {
      return Promise.reject(
        new RangeError(`wire message of ${length} bytes exceeds ${NOISE_MAX_MESSAGE}`),
      );
    }
    const socket = this.#socket;
    if (this.#localClosed || this.#socketClosed || !socket.writable) {
      return Promise.reject(this.#error ?? this.#downError());
    }
    if (!this.#corked) {
      this.#corked = true;
      socket.cork();
      process.nextTick(this.#uncork);
    }
    let ok = true;
    // Short pieces waiting to be written together, starting with the length prefix.
    let run: Uint8Array[] = [Uint8Array.of(length >>> 8, length & 0xff)];
    let runLength = TCP_LENGTH_PREFIX;
    for (const part of parts) {
      if (part.length < COPY_BELOW) {
        run.push(part);
        runLength += part.length;
        continue;
      }
      if (runLength > 0) {
        ok = socket.write(joinRun(run, runLength));
        run = [];
        runLength = 0;
      }
      ok = socket.write(part);
    }
    if (runLength > 0) ok = socket.write(joinRun(run, runLength));
    if (ok || socket.writableLength < TCP_WRITE_HIGH_WATER) return RESOLVED;
    return new Promise((resolve, reject) => this.#drainWaiters.push({ resolve, reject }));
  }

  close(): void {
    if (this.#localClosed) return;
    this.#localClosed = true;
    this.#queue = [];
    this.#head = 0;
    this.#queuedBytes = 0;
    this.#finishReading();
    if (this.#socketClosed) return;
    // Read (and drop) whatever still arrives, so the peer's end of the close is seen.
    if (this.#paused) this.#socket.resume();
    this.#paused = false;
    this.#socket.end();
    // A peer that never finishes the close (or never reads) must not keep the socket forever.
    this.#linger = setTimeout(() => this.#socket.destroy(), TCP_CLOSE_LINGER_MS);
  }

  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    return { next: () => this.#next() };
  }

  #next(): Promise<IteratorResult<Uint8Array>> {
    if (this.#head < this.#queue.length) {
      const value = this.#queue[this.#head]!;
      this.#queue[this.#head++] = undefined as unknown as Uint8Array;
      if (this.#head === this.#queue.length) {
        this.#queue = [];
        this.#head = 0;
      } else if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
        this.#queue = this.#queue.slice(this.#head);
        this.#head = 0;
      }
      this.#queuedBytes -= value.length;
      if (this.#paused && this.#queuedBytes < TCP_READ_HIGH_WATER / 2) {
        this.#paused = false;
        this.#socket.resume();
      }
      return Promise.resolve({ done: false, value });
    }
    if (this.#ended || this.#localClosed) {
      const err = this.#localClosed ? null : this.#error;
      this.#error = null; // thrown once; later calls just see the end
      return err ? Promise.reject(err) : Promise.resolve({ done: true, value: undefined });
    }
    if (this.#reader) return Promise.reject(new Error("TCP transport read concurrently"));
    return new Promise((resolve, reject) => {
      this.#reader = resolve;
      this.#readerReject = reject;
    });
  }

  #enqueue(message: Uint8Array): void {
    const reader = this.#reader;
    if (reader) {
      this.#reader = this.#readerReject = null;
      reader({ done: false, value: message });
      return;
    }
    this.#queue.push(message);
    this.#queuedBytes += message.length;
    if (!this.#paused && this.#queuedBytes > TCP_READ_HIGH_WATER) {
      this.#paused = true;
      this.#socket.pause();
    }
  }

  /** No more data will be queued: wake a waiting reader with the end (or the error). */
  #finishReading(): void {
    this.#ended = true;
    const reader = this.#reader;
    const reject = this.#readerReject;
    if (!reader || !reject) return;
    this.#reader = this.#readerReject = null;
    const err = this.#localClosed ? null : this.#error;
    if (err) {
      this.#error = null;
      reject(err);
    } else {
      reader({ done: true, value: undefined });
    }
  }

  #downError(): NodeDownError {
    return new NodeDownError(`connection to ${this.remoteAddress} is closed`);
  }
}

/**
 * Opens a TCP connection to host:port. Rejects with NodeDownError naming the address when the
 * connection is refused, unreachable or unanswered within TCP_CONNECT_TIMEOUT_MS, and with
 * TimeoutError when `signal` aborts first.
 */
export function connectTcp(
  host: string,
  port: number,
  options: ConnectTcpOptions = {},
): Promise<Transport> {
  const address = formatAddress(host, port);
  const { signal } = options;
  if (signal?.aborted) {
    return Promise.reject(
      new TimeoutError(`connecting to ${address} was aborted: ${reason(signal)}`),
    );
  }
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port, noDelay: true });
    const fail = (err: Error) => {
      cleanup();
      socket.destroy();
      reject(err);
    };
    const onAbort = () => {
      fail(new TimeoutError(`connecting to ${address} was aborted: ${reason(signal)}`));
    };
    const onError = (err: Error) => {
      fail(new NodeDownError(`cannot connect to ${address}: ${describe(err)}; is the node up?`));
    };
    const timer = setTimeout(() => {
      fail(
        new NodeDownError(
          `no answer from ${address} within ${TCP_CONNECT_TIMEOUT_MS / 1000} s; is it reachable?`,
        ),
      );
    }, TCP_CONNECT_TIMEOUT_MS);
    const cleanup = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      socket.off("error", onError);
      socket.off("connect", onConnect);
    };
    const onConnect = () => {
      cleanup();
      resolve(new TcpTransport(socket, address));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    socket.on("error", onError);
    socket.on("connect", onConnect);
  });
}

function reason(signal: AbortSignal | undefined): string {
  const r: unknown = signal?.reason;
  if (r instanceof Error) return r.message;
  return r === undefined ? "no reason given" : String(r);
}

/**
 * Listens on host:port (port 0 picks a free port) and hands every accepted connection to
 * `onTransport`. Rejects with ConfigError when the address cannot be bound. The listener's
 * `close()` stops accepting; transports already handed out stay open until closed themselves.
 */
export function listenTcp(
  host: string,
  port: number,
  onTransport: (transport: Transport) => void,
): Promise<Listener> {
  return new Promise((resolve, reject) => {
    const server = createServer({ noDelay: true }, (socket) => {
      onTransport(new TcpTransport(socket, formatAddress(socket.remoteAddress, socket.remotePort)));
    });
    const onListenError = (err: Error) => {
      reject(
        new ConfigError(
          `cannot listen on ${formatAddress(host, port)}: ${describe(err)}; choose another address`,
        ),
      );
    };
    server.once("error", onListenError);
    server.listen(port, host, () => {
      server.off("error", onListenError);
      // Accept errors (EMFILE and the like) affect one connection attempt, not the listener.
      server.on("error", () => {});
      const bound = server.address();
      const boundPort = typeof bound === "object" && bound ? bound.port : port;
      let closing: Promise<void> | undefined;
      resolve({
        port: boundPort,
        host,
        close: () => {
          closing ??= new Promise<void>((done) => {
            server.close();
            done();
          });
          return closing;
        },
      });
    });
  });
}
