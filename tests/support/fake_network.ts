/**
 * An in-memory `Network` test double for the node layer: sessions paired in memory, each
 * delivering whole messages in order, keyed by "host:port". It can partition two nodes (stop
 * delivering without closing, optionally declaring the sessions dead later, as the session
 * layer's keepalive would), reset or hard-kill a node, and blackhole an address (connects never
 * complete until their signal aborts).
 */
import {
  AuthFailedError,
  NodeDownError,
  PayloadTooLargeError,
  TimeoutError,
} from "../../errors.ts";
import type { CloseReason, Listener, Network, PeerInfo, Session } from "../../transport/types.ts";

/** Options of a {@link FakeNetwork}. */
export interface FakeNetworkOptions {
  /** Largest message a session sends (default 1 MiB); above it send() rejects. */
  maxMessageSize?: number;
  /** Random extra latency, up to this many ms, on connects and deliveries (order is kept). */
  jitterMs?: number;
}

/** Options of one endpoint (one node's view of the network). */
export interface FakeEndpointOptions {
  /** Presented to peers as PeerInfo.hidden. */
  hidden?: boolean;
  /** Presented to peers as PeerInfo.fingerprint (default "SHA256:fake-<name>"). */
  fingerprint?: string;
}

interface Endpoint {
  readonly name: string;
  readonly host: string;
  readonly info: PeerInfo;
  dead: boolean;
}

interface ListenerEntry {
  readonly endpoint: Endpoint;
  readonly onSession: (session: Session) => void;
}

type Delivery = { kind: "message"; bytes: Uint8Array } | { kind: "close"; message: string };

/** Both ends of one session and what is held back while partitioned. */
class Link {
  readonly held: [FakeSession, Delivery][] = [];
  /** Everything sent either way is lost, and neither side is told. */
  severed = false;
  a!: FakeSession;
  b!: FakeSession;
  deadTimer: ReturnType<typeof setTimeout> | undefined;
  constructor(readonly net: FakeNetwork) {}

  get open(): boolean {
    return !this.a.isClosed || !this.b.isClosed;
  }

  partitioned(): boolean {
    return this.net.isPartitioned(this.a.local.name, this.b.local.name);
  }

  deliver(to: FakeSession, d: Delivery): void {
    if (this.severed) return;
    if (this.partitioned()) {
      this.held.push([to, d]);
      return;
    }
    this.#send(to, d);
  }

  #queues = new Map<FakeSession, { at: number; d: Delivery }[]>();

  #send(to: FakeSession, d: Delivery): void {
    if (this.net.jitterMs === 0) {
      queueMicrotask(() => to.receive(d));
      return;
    }
    let queue = this.#queues.get(to);
    if (!queue) this.#queues.set(to, queue = []);
    const last = queue[queue.length - 1]?.at ?? 0;
    queue.push({ at: Math.max(last, performance.now() + Math.random() * this.net.jitterMs), d });
    if (queue.length === 1) this.#pump(to, queue);
  }

  /** Delivers `to`'s queue in order, one timer at a time. */
  #pump(to: FakeSession, queue: { at: number; d: Delivery }[]): void {
    const head = queue[0];
    if (!head) return;
    this.net.later(() => {
      queue.shift();
      to.receive(head.d);
      this.#pump(to, queue);
    }, Math.max(0, head.at - performance.now()));
  }

  flush(): void {
    for (const [to, d] of this.held.splice(0)) this.#send(to, d);
  }

  clearTimer(): void {
    if (this.deadTimer !== undefined) clearTimeout(this.deadTimer);
    this.deadTimer = undefined;
  }
}

class FakeSession implements Session {
  readonly peer: PeerInfo;
  readonly closed: Promise<CloseReason>;
  #inbox: Uint8Array[] = [];
  #reader: ((r: IteratorResult<Uint8Array>) => void) | undefined;
  #reason: CloseReason | undefined;
  #resolveClosed!: (r: CloseReason) => void;
  other!: FakeSession;

  constructor(readonly local: Endpoint, remote: Endpoint, readonly link: Link) {
    this.peer = remote.info;
    this.closed = new Promise((resolve) => this.#resolveClosed = resolve);
  }

  get isClosed(): boolean {
    return this.#reason !== undefined;
  }

  send(message: Uint8Array): Promise<void> {
    if (this.#reason) {
      return Promise.reject(new NodeDownError(`session to ${this.peer.name} is closed`));
    }
    const max = this.link.net.maxMessageSize;
    if (message.length > max) {
      return Promise.reject(
        new PayloadTooLargeError(
          `message of ${message.length} bytes exceeds the ${max}-byte limit`,
        ),
      );
    }
    this.link.deliver(this.other, { kind: "message", bytes: message.slice() });
    return Promise.resolve();
  }

  close(message = "closed"): Promise<void> {
    if (this.#reason) return Promise.resolve();
    this.end({ kind: "local", message });
    this.link.deliver(this.other, { kind: "close", message });
    return Promise.resolve();
  }

  receive(d: Delivery): void {
    if (this.#reason) return;
    if (d.kind === "close") {
      this.end({ kind: "remote", message: d.message });
      return;
    }
    const reader = this.#reader;
    if (reader) {
      this.#reader = undefined;
      reader({ done: false, value: d.bytes });
    } else {
      this.#inbox.push(d.bytes);
    }
  }

  /** Ends this side: iteration stops after what was delivered, `closed` resolves. */
  end(reason: CloseReason): void {
    if (this.#reason) return;
    this.#reason = reason;
    if (this.other.isClosed) this.link.clearTimer();
    const reader = this.#reader;
    this.#reader = undefined;
    reader?.({ done: true, value: undefined });
    this.#resolveClosed(reason);
  }

  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    return {
      next: () => {
        const value = this.#inbox.shift();
        if (value) return Promise.resolve({ done: false, value });
        if (this.#reason) return Promise.resolve({ done: true, value: undefined });
        return new Promise((resolve) => this.#reader = resolve);
      },
    };
  }
}

/**
 * The switchboard. Give each node its own `endpoint(name)`.
 *
 * @example
 * ```ts ignore
 * const net = new FakeNetwork();
 * const a = await Node.start({ name: "a@hosta", network: net.endpoint("a@hosta"), runDir });
 * net.partition("a@hosta", "b@hostb", { deadAfterMs: 50 });
 * ```
 */
export class FakeNetwork {
  readonly maxMessageSize: number;
  readonly jitterMs: number;
  readonly #timers = new Set<ReturnType<typeof setTimeout>>();
  readonly #opened = new Map<string, number>();
  readonly #listeners = new Map<string, ListenerEntry>();
  readonly #links = new Set<Link>();
  readonly #partitions = new Map<string, { deadAfterMs: number | undefined }>();
  readonly #blackholes = new Set<string>();
  readonly #attempts = new Map<string, number>();
  #nextPort = 20000;

  constructor(options: FakeNetworkOptions = {}) {
    this.maxMessageSize = options.maxMessageSize ?? 1 << 20;
    this.jitterMs = options.jitterMs ?? 0;
  }

  /** @internal Runs `fn` after `ms`; pending runs are cancelled by close(). */
  later(fn: () => void, ms: number): void {
    const t = setTimeout(() => {
      this.#timers.delete(t);
      fn();
    }, ms);
    this.#timers.add(t);
  }

  #tick(): Promise<void> {
    return new Promise((resolve) => this.later(resolve, Math.random() * this.jitterMs));
  }

  static #pairKey(a: string, b: string): string {
    return a < b ? `${a}|${b}` : `${b}|${a}`;
  }

  /** @internal */
  isPartitioned(a: string, b: string): boolean {
    return this.#partitions.has(FakeNetwork.#pairKey(a, b));
  }

  /** The Network for node `name` ("alive@host"). */
  endpoint(name: string, options: FakeEndpointOptions = {}): Network {
    const at = name.indexOf("@");
    const host = name.slice(at + 1).replace(/^\[(.*)\]$/, "$1");
    const ep: Endpoint = {
      name,
      host,
      dead: false,
      info: {
        name,
        publicKey: new Uint8Array(0),
        fingerprint: options.fingerprint ?? `SHA256:fake-${name}`,
        hidden: options.hidden ?? false,
      },
    };
    return {
      listen: (address, onSession) => this.#listen(ep, address, onSession),
      connect: (address, opts) => this.#connect(ep, address, opts),
    };
  }

  #listen(
    ep: Endpoint,
    address: { host: string; port: number },
    onSession: (s: Session) => void,
  ): Promise<Listener> {
    const port = address.port === 0 ? this.#nextPort++ : address.port;
    const wildcard = address.host === "0.0.0.0" || address.host === "::";
    const key = `${wildcard ? ep.host : address.host}:${port}`;
    if (this.#listeners.has(key)) return Promise.reject(new Error(`address ${key} in use`));
    this.#listeners.set(key, { endpoint: ep, onSession });
    return Promise.resolve({
      host: address.host,
      port,
      close: () => {
        if (this.#listeners.get(key)?.endpoint === ep) this.#listeners.delete(key);
        return Promise.resolve();
      },
    });
  }

  async #connect(
    ep: Endpoint,
    address: { host: string; port: number },
    opts: { expectedName: string; signal?: AbortSignal },
  ): Promise<Session> {
    const key = `${address.host}:${address.port}`;
    this.#attempts.set(ep.name, (this.#attempts.get(ep.name) ?? 0) + 1);
    const hang = () =>
      new Promise<never>((_, reject) => {
        const signal = opts.signal;
        if (!signal) return; // never completes, as a blackholed SYN without a deadline
        if (signal.aborted) reject(new TimeoutError(`connect to ${key} aborted`));
        signal.addEventListener(
          "abort",
          () => reject(new TimeoutError(`connect to ${key} aborted`)),
          { once: true },
        );
      });
    if (opts.signal?.aborted) throw new TimeoutError(`connect to ${key} aborted`);
    if (ep.dead) throw new NodeDownError(`${ep.name} is dead`);
    if (this.#blackholes.has(key)) return await hang();
    await this.#tick();
    const entry = this.#listeners.get(key);
    if (!entry || entry.endpoint.dead) {
      throw new NodeDownError(`connection refused by ${key}`);
    }
    if (this.isPartitioned(ep.name, entry.endpoint.name)) return await hang();
    if (entry.endpoint.name !== opts.expectedName) {
      throw new AuthFailedError(
        `${key} is ${entry.endpoint.name}, not ${opts.expectedName}`,
        "name_mismatch",
        "local",
      );
    }
    const link = new Link(this);
    const client = new FakeSession(ep, entry.endpoint, link);
    const server = new FakeSession(entry.endpoint, ep, link);
    client.other = server;
    server.other = client;
    link.a = client;
    link.b = server;
    this.#links.add(link);
    const pair = FakeNetwork.#pairKey(ep.name, entry.endpoint.name);
    this.#opened.set(pair, (this.#opened.get(pair) ?? 0) + 1);
    void Promise.all([client.closed, server.closed]).then(() => this.#links.delete(link));
    entry.onSession(server);
    await this.#tick();
    return client;
  }

  /** Sessions open (at either end) between `a` and `b`, or in total. */
  openSessions(a?: string, b?: string): number {
    let n = 0;
    for (const link of this.#links) {
      if (!link.open) continue;
      if (a === undefined) n++;
      else if (
        (link.a.local.name === a && link.b.local.name === b)
        || (link.a.local.name === b && link.b.local.name === a)
      ) n++;
    }
    return n;
  }

  /** How many sessions were ever opened between `a` and `b`. */
  sessionsOpened(a: string, b: string): number {
    return this.#opened.get(FakeNetwork.#pairKey(a, b)) ?? 0;
  }

  /** How many times `name` called connect(). */
  connectAttempts(name: string): number {
    return this.#attempts.get(name) ?? 0;
  }

  /**
   * Stops traffic between `a` and `b` both ways without closing anything; new connects between
   * them hang. With `deadAfterMs`, their sessions are then closed as "dead" on both sides, as
   * the session layer does when keepalives stop.
   */
  partition(a: string, b: string, options: { deadAfterMs?: number } = {}): void {
    this.#partitions.set(FakeNetwork.#pairKey(a, b), { deadAfterMs: options.deadAfterMs });
    if (options.deadAfterMs === undefined) return;
    for (const link of this.#between(a, b)) {
      link.clearTimer();
      link.deadTimer = setTimeout(() => {
        link.deadTimer = undefined;
        const reason = {
          kind: "dead" as const,
          message: `no traffic for ${options.deadAfterMs} ms`,
        };
        link.a.end(reason);
        link.b.end(reason);
      }, options.deadAfterMs);
    }
  }

  /** Ends a partition; held messages are delivered. */
  heal(a: string, b: string): void {
    this.#partitions.delete(FakeNetwork.#pairKey(a, b));
    for (const link of this.#between(a, b)) {
      link.clearTimer();
      link.flush();
    }
  }

  /** Breaks every session between `a` and `b` at once (a reset: both sides see an error). */
  reset(a: string, b: string): void {
    for (const link of this.#between(a, b)) this.#break(link, "connection reset");
  }

  /** Hard kill: `name`'s listeners vanish and its sessions break; peers notice at once. */
  kill(name: string): void {
    for (const [key, entry] of this.#listeners) {
      if (entry.endpoint.name === name) {
        entry.endpoint.dead = true;
        this.#listeners.delete(key);
      }
    }
    for (const link of this.#links) {
      if (link.a.local.name === name || link.b.local.name === name) {
        this.#break(link, `${name} was killed`);
      }
    }
  }

  /**
   * Power loss: `name`'s listeners vanish and everything on its sessions is lost from now on,
   * but its peers are not told (their sessions stay open until something notices). A node
   * started again under the same name gets a fresh endpoint.
   */
  vanish(name: string): void {
    for (const [key, entry] of this.#listeners) {
      if (entry.endpoint.name === name) {
        entry.endpoint.dead = true;
        this.#listeners.delete(key);
      }
    }
    for (const link of this.#links) {
      if (link.a.local.name === name || link.b.local.name === name) link.severed = true;
    }
  }

  /** Connects to `host:port` never complete (until their signal aborts). */
  blackhole(address: string): void {
    this.#blackholes.add(address);
  }

  #between(a: string, b: string): Link[] {
    return [...this.#links].filter((l) =>
      (l.a.local.name === a && l.b.local.name === b)
      || (l.a.local.name === b && l.b.local.name === a)
    );
  }

  #break(link: Link, message: string): void {
    const error = new NodeDownError(message);
    link.a.end({ kind: "error", message, error });
    link.b.end({ kind: "error", message, error });
  }

  /** Closes every session and clears every timer (end of test). */
  close(): void {
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    for (const link of this.#links) {
      link.clearTimer();
      link.a.end({ kind: "local", message: "network closed" });
      link.b.end({ kind: "local", message: "network closed" });
    }
    this.#links.clear();
    this.#listeners.clear();
  }
}
