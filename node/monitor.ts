/**
 * Node monitoring, like Erlang's `net_kernel:monitor_nodes/2`: a stream of `nodeup` and
 * `nodedown` events. Hidden connections are left out unless asked for.
 *
 * @module
 */
import type { CloseReason } from "../transport/types.ts";

/** A peer became reachable or stopped being reachable. */
export type NodeEvent =
  | {
    readonly type: "nodeup";
    /** The peer's node name. */
    readonly node: string;
    /** True when either end is a hidden node. */
    readonly hidden: boolean;
  }
  | {
    readonly type: "nodedown";
    readonly node: string;
    readonly hidden: boolean;
    /** Why the last session to the peer ended ("dead" when the session layer gave up on it). */
    readonly reason: CloseReason;
  };

/** Options of `Node.monitor()`. */
export interface MonitorOptions {
  /** Also report hidden connections (default false, as `nodes()` leaves them out). */
  hidden?: boolean;
}

class Subscription implements AsyncIterableIterator<NodeEvent> {
  #queue: NodeEvent[] = [];
  #waiting: ((r: IteratorResult<NodeEvent>) => void) | undefined;
  #done = false;

  constructor(readonly hidden: boolean, private readonly hub: EventHub) {}

  push(event: NodeEvent): void {
    if (this.#done || (event.hidden && !this.hidden)) return;
    const waiting = this.#waiting;
    if (waiting) {
      this.#waiting = undefined;
      waiting({ done: false, value: event });
    } else {
      this.#queue.push(event);
    }
  }

  end(): void {
    this.#done = true;
    const waiting = this.#waiting;
    this.#waiting = undefined;
    waiting?.({ done: true, value: undefined });
  }

  next(): Promise<IteratorResult<NodeEvent>> {
    const event = this.#queue.shift();
    if (event) return Promise.resolve({ done: false, value: event });
    if (this.#done) return Promise.resolve({ done: true, value: undefined });
    return new Promise((resolve) => this.#waiting = resolve);
  }

  return(): Promise<IteratorResult<NodeEvent>> {
    this.#queue = [];
    this.hub.unsubscribe(this);
    this.end();
    return Promise.resolve({ done: true, value: undefined });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<NodeEvent> {
    return this;
  }
}

/** Fans node events out to subscribers; each subscriber sees events from its subscription on. */
export class EventHub {
  #subs = new Set<Subscription>();

  /** Starts a subscription now; iterate it, `break` (or call `return()`) to stop. */
  subscribe(options: MonitorOptions = {}): AsyncIterableIterator<NodeEvent> {
    const sub = new Subscription(options.hidden ?? false, this);
    this.#subs.add(sub);
    return sub;
  }

  /** @internal Called by a subscription that ended. */
  unsubscribe(sub: Subscription): void {
    this.#subs.delete(sub);
  }

  /** Delivers `event` to every subscriber that wants it. */
  emit(event: NodeEvent): void {
    for (const sub of this.#subs) sub.push(event);
  }

  /** Ends every subscription (after it drained its queued events). */
  close(): void {
    for (const sub of this.#subs) sub.end();
    this.#subs.clear();
  }
}
