/**
 * A tiny clock seam: sessions read time and set timers only through `Clock`, so keepalive, rekey
 * and dead-peer tests drive a `FakeClock` instead of sleeping.
 *
 * @module
 */

import { performance } from "node:perf_hooks";
import { clearTimeout as clearNodeTimeout, setTimeout as setNodeTimeout } from "node:timers";

/** An opaque handle returned by `Clock.setTimeout`. */
export type TimerHandle = unknown;

/** Time and one-shot timers. */
export interface Clock {
  /** Milliseconds on a monotonic scale (only differences are meaningful). */
  now(): number;
  /** Calls `fn` once, `ms` milliseconds from now. */
  setTimeout(fn: () => void, ms: number): TimerHandle;
  /** Cancels a timer; harmless if it already fired or was cancelled. */
  clearTimeout(handle: TimerHandle): void;
}

/**
 * The real clock: monotonic `performance.now()` and unref'd timers (a pending keepalive never
 * keeps the process alive on its own; the socket does).
 */
export const realClock: Clock = {
  now: () => performance.now(),
  setTimeout(fn, ms) {
    const t = setNodeTimeout(fn, Math.max(0, ms));
    t.unref();
    return t;
  },
  clearTimeout(handle) {
    clearNodeTimeout(handle as ReturnType<typeof setNodeTimeout>);
  },
};

interface FakeTimer {
  readonly due: number;
  readonly seq: number;
  readonly fn: () => void;
}

/** A manual clock for tests: time moves only when `advance()` is called. */
export class FakeClock implements Clock {
  #now: number;
  #seq = 0;
  #timers = new Set<FakeTimer>();

  /** Starts at `start` milliseconds (default 0). */
  constructor(start = 0) {
    this.#now = start;
  }

  /** The current fake time. */
  now(): number {
    return this.#now;
  }

  /** Registers a timer due at now + ms. */
  setTimeout(fn: () => void, ms: number): TimerHandle {
    const timer: FakeTimer = { due: this.#now + Math.max(0, ms), seq: this.#seq++, fn };
    this.#timers.add(timer);
    return timer;
  }

  /** Cancels a timer. */
  clearTimeout(handle: TimerHandle): void {
    this.#timers.delete(handle as FakeTimer);
  }

  /** Number of timers not yet fired or cancelled. */
  get pending(): number {
    return this.#timers.size;
  }

  /**
   * Moves time forward by `ms`, firing every timer that falls due on the way in order of due time
   * (timers set by a firing timer fire too if they fall due within the window). Time stands at
   * each timer's due time while it runs.
   */
  advance(ms: number): void {
    const end = this.#now + ms;
    for (;;) {
      let next: FakeTimer | undefined;
      for (const t of this.#timers) {
        if (
          t.due <= end && (!next || t.due < next.due || (t.due === next.due && t.seq < next.seq))
        ) {
          next = t;
        }
      }
      if (!next) break;
      this.#timers.delete(next);
      this.#now = Math.max(this.#now, next.due);
      next.fn();
    }
    this.#now = end;
  }
}
