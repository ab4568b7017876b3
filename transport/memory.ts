/**
 * An in-memory `Transport` pair, for testing everything above the socket without one. Messages
 * pass whole (no length prefix); each direction is a bounded queue whose `send()` waits while the
 * queue is full, so backpressure behaves as it does on a socket.
 *
 * @module
 */

import { NodeDownError } from "../errors.ts";
import { MEMORY_QUEUE_DEPTH, NOISE_MAX_MESSAGE } from "./constants.ts";
import type { Transport } from "./types.ts";

/** Options for `memoryTransportPair`. */
export interface MemoryTransportOptions {
  /** Messages each direction holds before `send()` waits (default MEMORY_QUEUE_DEPTH). */
  queueDepth?: number;
  /** `remoteAddress` of the first and of the second transport (default "memory" for both). */
  remoteAddresses?: readonly [string, string];
}

interface Waiter {
  resolve(): void;
  reject(err: Error): void;
}

const DONE: IteratorReturnResult<undefined> = { done: true, value: undefined };

/** One direction: a bounded FIFO with waiting readers and waiting senders. */
class Pipe {
  #items: Uint8Array[] = [];
  #head = 0;
  #readers: ((result: IteratorResult<Uint8Array>) => void)[] = [];
  #senders: Waiter[] = [];
  #ended = false;

  constructor(readonly depth: number) {}

  get size(): number {
    return this.#items.length - this.#head;
  }

  /** Queues `message`; resolves once the queue is within its depth. */
  push(message: Uint8Array): Promise<void> {
    const reader = this.#readers.shift();
    if (reader) {
      reader({ done: false, value: message });
      return Promise.resolve();
    }
    this.#items.push(message);
    if (this.size <= this.depth) return Promise.resolve();
    return new Promise((resolve, reject) => this.#senders.push({ resolve, reject }));
  }

  pull(): Promise<IteratorResult<Uint8Array>> {
    if (this.size > 0) {
      const value = this.#items[this.#head]!;
      this.#items[this.#head++] = undefined as unknown as Uint8Array;
      if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
        this.#items = this.#items.slice(this.#head);
        this.#head = 0;
      }
      // Each pull moves the oldest message waiting beyond the depth into it.
      this.#senders.shift()?.resolve();
      return Promise.resolve({ done: false, value });
    }
    if (this.#ended) return Promise.resolve(DONE);
    return new Promise((resolve) => this.#readers.push(resolve));
  }

  /** The writing side closed: readers drain what is queued, then see the end. */
  end(err: Error): void {
    this.#ended = true;
    for (const s of this.#senders.splice(0)) s.reject(err);
    if (this.size === 0) { for (const r of this.#readers.splice(0)) r(DONE); }
  }

  /** The reading side closed: queued messages are dropped and readers see the end now. */
  discard(err: Error): void {
    this.#items = [];
    this.#head = 0;
    this.end(err);
  }
}

class MemoryTransport implements Transport {
  readonly closed: Promise<void>;
  #onClose: () => void;

  constructor(
    readonly remoteAddress: string,
    private readonly inbound: Pipe,
    private readonly outbound: Pipe,
    private readonly state: { closed: boolean },
    closed: Promise<void>,
    onClose: () => void,
  ) {
    this.closed = closed;
    this.#onClose = onClose;
  }

  send(message: Uint8Array): Promise<void> {
    if (message.length > NOISE_MAX_MESSAGE) {
      return Promise.reject(
        new RangeError(`wire message of ${message.length} bytes exceeds ${NOISE_MAX_MESSAGE}`),
      );
    }
    if (this.state.closed) return Promise.reject(this.#downError());
    // A copy, as a socket would make: the caller may reuse its buffer once send() returns.
    return this.outbound.push(new Uint8Array(message));
  }

  /** Joins `parts` into one message (the one copy `send()` makes anyway) and queues it. */
  sendParts(parts: readonly Uint8Array[]): Promise<void> {
    let length = 0;
    for (const part of parts) length += part.length;
    if (length > NOISE_MAX_MESSAGE) {
      return Promise.reject(
        new RangeError(`wire message of ${length} bytes exceeds ${NOISE_MAX_MESSAGE}`),
      );
    }
    if (this.state.closed) return Promise.reject(this.#downError());
    const message = new Uint8Array(length);
    let at = 0;
    for (const part of parts) {
      message.set(part, at);
      at += part.length;
    }
    return this.outbound.push(message);
  }

  close(): void {
    if (this.state.closed) return;
    this.state.closed = true;
    const err = this.#downError();
    this.inbound.discard(err);
    this.outbound.end(err);
    this.#onClose();
  }

  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    return { next: () => this.inbound.pull() };
  }

  #downError(): NodeDownError {
    return new NodeDownError(`in-memory transport to ${this.remoteAddress} is closed`);
  }
}

/**
 * Creates two connected in-memory transports: what one sends, the other iterates, whole and in
 * order. Closing either closes both: the closer's iteration ends at once, the other's after it
 * drained what was already queued, and both `closed` promises resolve. Sends waiting for queue
 * space reject with NodeDownError on close.
 */
export function memoryTransportPair(options: MemoryTransportOptions = {}): [Transport, Transport] {
  const depth = options.queueDepth ?? MEMORY_QUEUE_DEPTH;
  if (!Number.isInteger(depth) || depth < 1) {
    throw new RangeError(`queueDepth must be a positive integer, got ${depth}`);
  }
  const [nameA, nameB] = options.remoteAddresses ?? ["memory", "memory"];
  const aToB = new Pipe(depth);
  const bToA = new Pipe(depth);
  const state = { closed: false };
  let resolveClosed!: () => void;
  const closed = new Promise<void>((resolve) => resolveClosed = resolve);
  // When one side closes, the other's inbound ends after draining (the closer's outbound.end)
  // and its outbound is dropped (the closer's inbound.discard).
  return [
    new MemoryTransport(nameA, bToA, aToB, state, closed, resolveClosed),
    new MemoryTransport(nameB, aToB, bToA, state, closed, resolveClosed),
  ];
}
