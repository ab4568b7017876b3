/**
 * Call deadlines without a timer per call: deadlines are filed in slots of {@link GRAIN_MS}
 * (one doubly linked list per slot) and one timer, armed for the earliest slot that has any,
 * expires them slot by slot. Adding a deadline is a clock read and a few pointer writes (a Map
 * lookup when it opens a slot); removing one is a few pointer writes. Under steady traffic,
 * where almost every call ends long before its deadline, the timer fires about once per
 * timeout.
 *
 * A deadline never fires early, and fires at most one slot (plus event-loop delay) late. The
 * timer keeps the process alive only while some deadline is pending, as a per-call timer would.
 *
 * @module
 */
import { performance } from "node:perf_hooks";
import { clearTimeout, setTimeout } from "node:timers";

/** Deadlines are rounded up to a multiple of this many ms. */
export const GRAIN_MS = 5;

/** Something with a deadline, filed in {@link Deadlines}; its fields belong to `Deadlines`. */
export interface Timed {
  /** The slot it is filed under, or -1 when it is not filed. */
  slot: number;
  /** Neighbours in its slot's list while filed. */
  prev: Timed | undefined;
  next: Timed | undefined;
  /** Called once, when the deadline has passed; it is no longer filed by then. */
  expire(): void;
}

/** A fresh, unfiled {@link Timed} calling `expire`. */
export function timed(expire: () => void): Timed {
  return { slot: -1, prev: undefined, next: undefined, expire };
}

const noop = () => {};

/** The list head of a slot: a Timed that is never filed itself. */
function head(slot: number): Timed {
  const h: Timed = { slot, prev: undefined, next: undefined, expire: noop };
  h.prev = h.next = h;
  return h;
}

/** A set of pending deadlines sharing one timer. */
export class Deadlines {
  readonly #now: () => number;
  readonly #slots = new Map<number, Timed>();
  #count = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timerSlot = Infinity;
  /** The slot `add` used last, and its head: consecutive deadlines mostly share a slot. */
  #lastSlot = NaN;
  #lastHead: Timed | undefined;

  /** `now` is the clock, in ms (default: `performance.now`). */
  constructor(now: () => number = () => performance.now()) {
    this.#now = now;
  }

  /** Number of deadlines filed. */
  get size(): number {
    return this.#count;
  }

  /** Files `t` to expire `ms` from now. `t` must not be filed already. */
  add(t: Timed, ms: number): void {
    const slot = Math.ceil((this.#now() + ms) / GRAIN_MS);
    let h = slot === this.#lastSlot ? this.#lastHead : this.#slots.get(slot);
    if (h === undefined) this.#slots.set(slot, h = head(slot));
    this.#lastSlot = slot;
    this.#lastHead = h;
    const tail = h.prev!;
    t.prev = tail;
    t.next = h;
    tail.next = t;
    h.prev = t;
    t.slot = slot;
    if (this.#count++ === 0) this.#timer?.ref();
    if (slot < this.#timerSlot) this.#arm(slot);
  }

  /** Unfiles `t`, if it is filed. */
  remove(t: Timed): void {
    if (t.slot < 0) return;
    t.prev!.next = t.next;
    t.next!.prev = t.prev;
    t.prev = t.next = undefined;
    t.slot = -1;
    if (--this.#count === 0) this.#timer?.unref();
  }

  #arm(slot: number): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timerSlot = slot;
    this.#timer = setTimeout(this.#fire, Math.max(1, slot * GRAIN_MS - this.#now()));
    if (this.#count === 0) this.#timer.unref();
  }

  #fire = (): void => {
    this.#timer = undefined;
    this.#timerSlot = Infinity;
    this.#lastSlot = NaN;
    this.#lastHead = undefined;
    const now = this.#now();
    const due: Timed[] = [];
    let next = Infinity;
    for (const [slot, h] of this.#slots) {
      if (slot * GRAIN_MS <= now) {
        this.#slots.delete(slot);
        for (let t = h.next!; t !== h;) {
          const after = t.next!;
          t.prev = t.next = undefined;
          t.slot = -1;
          due.push(t);
          t = after;
        }
      } else if (h.next === h) {
        this.#slots.delete(slot);
      } else if (slot < next) {
        next = slot;
      }
    }
    this.#count -= due.length;
    if (next !== Infinity) this.#arm(next);
    for (const t of due) t.expire();
  };
}

/** The deadlines of every node in this process. */
export const deadlines = new Deadlines();

/**
 * Settles like `promise`, or rejects with `onTimeout()` if `ms` pass first.
 */
export function withDeadline<T>(promise: Promise<T>, ms: number, onTimeout: () => Error) {
  return new Promise<T>((resolve, reject) => {
    const t = timed(() => reject(onTimeout()));
    deadlines.add(t, ms);
    promise.then(
      (v) => {
        deadlines.remove(t);
        resolve(v);
      },
      (e) => {
        deadlines.remove(t);
        reject(e);
      },
    );
  });
}
