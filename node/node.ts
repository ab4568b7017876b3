/**
 * A node: Erlang distribution semantics over authenticated sessions. Services registered on a
 * node are found only there (like locally registered names); a call naming another node
 * connects to it on demand; connections are not transitive; each pair of nodes shares one
 * session; a lost peer is reported as `nodedown` and its in-flight calls fail at once.
 *
 * @module
 */
import { randomBytes } from "node:crypto";
import { isIP } from "node:net";
import { performance } from "node:perf_hooks";
import { BadArgError, ConfigError, NodectlError, NodeDownError, TimeoutError } from "../errors.ts";
import type { CloseReason, Listener, Network, Session } from "../transport/types.ts";
import { backoffDelay, type BackoffOptions, DEFAULT_BACKOFF } from "./backoff.ts";
import { Connection, type ConnectionHost, raceSignal } from "./connection.ts";
import { withDeadline } from "./deadlines.ts";
import { EventHub, type MonitorOptions, type NodeEvent } from "./monitor.ts";
import { DEFAULT_PORT, formatAddress, isLocalHost, type NodeName, parseNodeName } from "./names.ts";
import { encodeValue } from "./protocol.ts";
import { RunDir, type RunDirClaim } from "./run_dir.ts";
import { type ServiceDefinition, ServiceRegistry } from "./services.ts";

/** Log severity. */
export type NodeLogLevel = "debug" | "info" | "warn" | "error";

/** Options of {@link Node.start}. */
export interface NodeOptions {
  /** `name@host`, `name@host:port`, `name@[v6]:port`, or a short name (`private`). */
  name: string;
  /** How sessions are opened and accepted (Noise over TCP in production). */
  network: Network;
  /**
   * Where to accept sessions, or false for none (a client-only node). Default: the port in
   * the name on all interfaces; for a name on this host without a port (a short name, as
   * with `--sname`), an ephemeral port on loopback, published in the run directory; otherwise
   * {@link DEFAULT_PORT} on all interfaces.
   */
  listen?: { host: string; port: number } | false;
  /** Run directory (default `$XDG_RUNTIME_DIR/nodectl` or `<tmpdir>/nodectl-<uid>`). */
  runDir?: string;
  /** A hidden node is not listed by its peers' `nodes()` (Erlang's hidden nodes). */
  hidden?: boolean;
  /** Default deadline of `call`, `cast` and `connect`, in ms (5000). */
  callTimeoutMs?: number;
  /** Reconnect timing after a lost connection, or false to never reconnect by itself. */
  reconnect?: BackoffOptions | false;
  /** Receives log lines; default: none. */
  log?: (level: NodeLogLevel, message: string) => void;
}

/** Options of {@link Node.call} and {@link Node.cast}. */
export interface CallOptions {
  /** The node to call; omitted or this node's own name: an in-process call. */
  node?: string;
  /** One deadline for resolving, connecting, the handshake and the call (callTimeoutMs). */
  timeoutMs?: number;
}

/** Options of {@link Node.connect}. */
export interface ConnectOptions {
  /** Deadline for resolving, connecting and the handshake (callTimeoutMs). */
  timeoutMs?: number;
}

/** Options of {@link Node.nodes}. */
export interface NodesOptions {
  /** Include hidden connections (Erlang's `nodes(connected)`); default false. */
  hidden?: boolean;
}

interface Attempt {
  readonly promise: Promise<Connection>;
  readonly controller: AbortController;
  waiters: number;
  settled: boolean;
  resolve(conn: Connection): void;
  reject(err: unknown): void;
}

interface Peer {
  readonly name: string;
  /** How it was last named (with its port, if any): where reconnects go. */
  target: NodeName | undefined;
  /** The session used for new calls. */
  active: Connection | undefined;
  /** Every open session with the peer, the active one included. */
  readonly conns: Set<Connection>;
  /** nodeup was reported and nodedown not yet. */
  up: boolean;
  /** Hidden flag of the connection nodeup was reported for. */
  hidden: boolean;
  attempt: Attempt | undefined;
  /** Reconnect after a loss (explicitly connected or called). */
  wanted: boolean;
  failures: number;
  timer: ReturnType<typeof setTimeout> | undefined;
}

class Deadline {
  readonly controller = new AbortController();
  phase = "";
  #timer: ReturnType<typeof setTimeout>;

  constructor(ms: number, what: string) {
    this.#timer = setTimeout(
      () =>
        this.controller.abort(new TimeoutError(`${what} timed out after ${ms} ms${this.phase}`)),
      ms,
    );
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  clear(): void {
    clearTimeout(this.#timer);
  }
}

function checkTimeout(ms: number, what: string): number {
  if (!Number.isFinite(ms) || ms <= 0) {
    throw new ConfigError(`${what} must be a positive number of ms, got ${ms}`);
  }
  return ms;
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function defaultListen(name: NodeName): { host: string; port: number } {
  const v6 = isIP(name.host) === 6;
  const any = v6 ? "::" : "0.0.0.0";
  if (name.port !== undefined) return { host: any, port: name.port };
  const loopbackIp = v6 ? name.host === "::1" : name.host.startsWith("127.");
  if (loopbackIp || (isLocalHost(name.host) && !name.host.includes("."))) {
    return { host: v6 ? "::1" : "127.0.0.1", port: 0 };
  }
  return { host: any, port: DEFAULT_PORT };
}

/**
 * A node of a nodectl cluster.
 *
 * @example
 * ```ts ignore
 * const priv = await Node.start({ name: "private@host", network });
 * priv.register("SecretService", { functions: { get_data: () => "secret data" } });
 *
 * const pub = await Node.start({ name: "public@host", network: otherNetwork });
 * pub.nodes(); // []
 * await pub.call("SecretService", "get_data", [], { node: "private@host" }); // "secret data"
 * pub.nodes(); // ["private@host"]
 * for await (const ev of pub.monitor()) console.log(ev.type, ev.node);
 * ```
 */
export class Node {
  /** This node's name, `alive@host` (no port). */
  readonly name: string;
  /** Whether this node is hidden. */
  readonly hidden: boolean;
  /** Random id of this incarnation; a restarted node has a new one. */
  readonly creation: string;
  /** Default deadline of calls, in ms. */
  readonly callTimeoutMs: number;

  readonly #parsed: NodeName;
  readonly #network: Network;
  readonly #services: ServiceRegistry;
  readonly #events = new EventHub();
  readonly #peers = new Map<string, Peer>();
  readonly #reconnect: BackoffOptions | false;
  readonly #log: (level: NodeLogLevel, message: string) => void;
  readonly #runDirPath: string | undefined;
  #runDir: RunDir | undefined;
  #claim: RunDirClaim | undefined;
  #listener: Listener | undefined;
  #helloCount = 0;
  #stopped = false;
  #host: ConnectionHost;

  private constructor(name: NodeName, options: NodeOptions) {
    this.#parsed = name;
    this.name = name.name;
    this.hidden = options.hidden ?? false;
    this.creation = randomBytes(8).toString("hex");
    this.callTimeoutMs = checkTimeout(options.callTimeoutMs ?? 5000, "callTimeoutMs");
    const reconnect = options.reconnect ?? DEFAULT_BACKOFF;
    if (reconnect !== false) {
      checkTimeout(reconnect.initialMs, "reconnect.initialMs");
      checkTimeout(reconnect.maxMs, "reconnect.maxMs");
      if (reconnect.initialMs > reconnect.maxMs) {
        throw new ConfigError("reconnect.initialMs must not exceed reconnect.maxMs");
      }
    }
    this.#reconnect = reconnect;
    this.#network = options.network;
    this.#services = new ServiceRegistry(this.name);
    this.#log = options.log ?? (() => {});
    this.#runDirPath = options.runDir;
    this.#host = {
      name: this.name,
      creation: this.creation,
      hidden: this.hidden,
      onHello: (c) => this.#onHello(c),
      onRetire: (c) => this.#onRetire(c),
      onBye: (c, reconnect) => this.#onBye(c, reconnect),
      onClosed: (c, reason) => this.#onClosed(c, reason),
      serve: (c, service, fn, args) => this.#services.run(service, fn, args, c.peer),
      log: (level, msg) => this.#log(level, msg),
    };
  }

  /**
   * Starts a node: validates its name, claims it in the run directory (failing if a live
   * process holds it) and listens.
   *
   * @throws ConfigError for a malformed name or option, a name in use, or a failed listen.
   */
  static async start(options: NodeOptions): Promise<Node> {
    const node = new Node(parseNodeName(options.name), options);
    if (options.listen === false) return node;
    const address = options.listen ?? defaultListen(node.#parsed);
    node.#claim = node.#dir().claim(node.#parsed);
    try {
      node.#listener = await options.network.listen(address, (s) => node.#accept(s));
      node.#claim.publish({ host: node.#listener.host, port: node.#listener.port });
    } catch (err) {
      node.#claim.release();
      await node.#listener?.close().catch(() => {});
      if (err instanceof NodectlError) throw err;
      throw new ConfigError(
        `${node.name} cannot listen on ${formatAddress(address)}: ${message(err)}; `
          + "pick another port",
      );
    }
    node.#log("info", `${node.name} listening on ${formatAddress(node.#listener)}`);
    return node;
  }

  /** Where this node accepts sessions, if it listens. */
  get listenAddress(): { host: string; port: number } | undefined {
    return this.#listener ? { host: this.#listener.host, port: this.#listener.port } : undefined;
  }

  #dir(): RunDir {
    return this.#runDir ??= new RunDir(this.#runDirPath);
  }

  // ---- services ----------------------------------------------------------------------------

  /**
   * Registers a service under `name`, callable by peers (subject to its allowlists) and
   * in-process. Only the functions it declares are callable.
   *
   * @throws ConfigError for a malformed or taken name.
   */
  register(name: string, service: ServiceDefinition): void {
    this.#services.register(name, service);
  }

  /** Unregisters a service; returns whether it was registered. */
  unregister(name: string): boolean {
    return this.#services.unregister(name);
  }

  /** Names of the services registered on this node. */
  registered(): string[] {
    return this.#services.names();
  }

  // ---- calls -------------------------------------------------------------------------------

  /**
   * Calls `service.fn(...args)` on `options.node` (connecting to it if needed), or in-process
   * when no node (or this node's own name) is given. One deadline covers name resolution,
   * connecting, the handshake and the call.
   *
   * @throws NoProcError, UndefError, RemoteError, BadArgError, PayloadTooLargeError,
   *   NodeDownError (unreachable, or lost mid-call: promptly, not at the deadline),
   *   TimeoutError, AuthFailedError, ConfigError (malformed node name).
   */
  call(
    service: string,
    fn: string,
    args: unknown[] = [],
    options: CallOptions = {},
  ): Promise<unknown> {
    try {
      const { timeoutMs, target } = this.#prepareCall(service, fn, args, options);
      if (!target) {
        return withDeadline(
          this.#services.invoke(service, fn, args, "local"),
          timeoutMs,
          () =>
            new TimeoutError(
              `call ${service}.${fn} on ${this.name} timed out after ${timeoutMs} ms `
                + "in the local service",
            ),
        );
      }
      // Connected already (the usual case): no timer, no AbortController, no extra await.
      const peer = this.#peers.get(target.name);
      const conn = peer && this.#sessionOf(peer);
      if (conn) {
        this.#using(peer, target, conn);
        return conn.call(service, fn, args, timeoutMs);
      }
      return this.#connectAndCall(service, fn, args, timeoutMs, target);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * What a call and a cast check first: the arguments are an array, the timeout is valid and
   * the node is running. `target` is the node to send to, or undefined to run in-process (no
   * node given, or this node's own name).
   */
  #prepareCall(
    service: string,
    fn: string,
    args: unknown[],
    options: CallOptions,
  ): { timeoutMs: number; target: NodeName | undefined } {
    if (!Array.isArray(args)) {
      throw new BadArgError(`arguments of ${service}.${fn} must be an array`);
    }
    const timeoutMs = options.timeoutMs === undefined
      ? this.callTimeoutMs
      : checkTimeout(options.timeoutMs, "timeoutMs");
    this.#checkRunning();
    const target = options.node === undefined ? undefined : parseNodeName(options.node);
    return { timeoutMs, target: target && target.name !== this.name ? target : undefined };
  }

  /** A call that has to connect first: one deadline covers connecting and the call. */
  async #connectAndCall(
    service: string,
    fn: string,
    args: unknown[],
    timeoutMs: number,
    target: NodeName,
  ): Promise<unknown> {
    // Arguments that cannot be sent fail before connecting.
    const encoded = encodeValue(args, `arguments of ${service}.${fn}`);
    const started = performance.now();
    const what = `call ${service}.${fn} on ${target.name}`;
    const deadline = new Deadline(timeoutMs, what);
    deadline.phase = " while connecting";
    let conn: Connection;
    try {
      conn = await this.#connection(target, deadline.signal);
    } finally {
      deadline.clear();
    }
    const remaining = timeoutMs - (performance.now() - started);
    if (remaining <= 0) {
      throw new TimeoutError(`${what} timed out after ${timeoutMs} ms${deadline.phase}`);
    }
    return await conn.call(service, fn, { encoded }, timeoutMs, remaining);
  }

  /**
   * Sends `service.fn(...args)` without waiting for a result (Erlang's cast). Resolves once the
   * message is handed to the session; failures on the remote side are logged there, not
   * reported. Rejects if the node cannot be reached within the deadline or the arguments
   * cannot be sent.
   */
  cast(
    service: string,
    fn: string,
    args: unknown[] = [],
    options: CallOptions = {},
  ): Promise<void> {
    try {
      const { timeoutMs, target } = this.#prepareCall(service, fn, args, options);
      if (!target) {
        this.#services.invoke(service, fn, args, "local").catch((err) =>
          this.#log("warn", `cast ${service}.${fn} failed: ${message(err)}`)
        );
        return Promise.resolve();
      }
      const what = `cast ${service}.${fn} to ${target.name}`;
      const peer = this.#peers.get(target.name);
      const conn = peer && this.#sessionOf(peer);
      if (conn) {
        this.#using(peer, target, conn);
        return withDeadline(
          conn.cast(service, fn, args),
          timeoutMs,
          () => new TimeoutError(`${what} timed out after ${timeoutMs} ms while connecting`),
        );
      }
      return this.#connectAndCast(service, fn, args, timeoutMs, target, what);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  async #connectAndCast(
    service: string,
    fn: string,
    args: unknown[],
    timeoutMs: number,
    target: NodeName,
    what: string,
  ): Promise<void> {
    const encoded = encodeValue(args, `arguments of ${service}.${fn}`);
    const deadline = new Deadline(timeoutMs, what);
    deadline.phase = " while connecting";
    try {
      const conn = await this.#connection(target, deadline.signal);
      await raceSignal(conn.cast(service, fn, { encoded }), deadline.signal);
    } finally {
      deadline.clear();
    }
  }

  // ---- connections -------------------------------------------------------------------------

  /**
   * Connects to a node (Erlang's `Node.connect`), and keeps reconnecting to it after a loss.
   * Connecting to this node itself does nothing.
   *
   * @throws NodeDownError, TimeoutError, AuthFailedError, ConfigError.
   */
  async connect(node: string, options: ConnectOptions = {}): Promise<void> {
    const timeoutMs = checkTimeout(options.timeoutMs ?? this.callTimeoutMs, "timeoutMs");
    this.#checkRunning();
    const target = parseNodeName(node);
    if (target.name === this.name) return;
    const deadline = new Deadline(timeoutMs, `connecting to ${target.name}`);
    try {
      await this.#ensureConnected(target, deadline.signal);
    } finally {
      deadline.clear();
    }
  }

  /**
   * Closes every session with `node` and stops reconnecting to it; the peer is asked not to
   * reconnect either (it still may, by calling). Returns whether it was connected.
   */
  async disconnect(node: string): Promise<boolean> {
    const name = parseNodeName(node).name;
    const peer = this.#peers.get(name);
    if (!peer) return false;
    peer.wanted = false;
    this.#clearTimer(peer);
    peer.attempt?.controller.abort(
      new NodeDownError(`${this.name} disconnected from ${name} while connecting`, name),
    );
    const conns = [...peer.conns];
    for (const c of conns) c.closing = true;
    await Promise.all(conns.map((c) => c.bye(false, `disconnected by ${this.name}`)));
    await Promise.all(conns.map((c) => c.done));
    return conns.length > 0;
  }

  /**
   * Connected nodes, sorted (Erlang's `Node.list`): hidden connections are left out unless
   * `{ hidden: true }`. A connection is hidden when either end is a hidden node.
   */
  nodes(options: NodesOptions = {}): string[] {
    const out: string[] = [];
    for (const peer of this.#peers.values()) {
      if (peer.active && peer.up && (options.hidden || !peer.hidden)) out.push(peer.name);
    }
    return out.sort();
  }

  /**
   * Node events from now on: `nodeup` when a peer becomes connected, `nodedown` (with the
   * reason) when its last session ends. Hidden connections only with `{ hidden: true }`.
   * The iteration ends when the node stops; `break` out of it to unsubscribe.
   */
  monitor(options: MonitorOptions = {}): AsyncIterableIterator<NodeEvent> {
    const sub = this.#events.subscribe(options);
    if (this.#stopped) void sub.return?.();
    return sub;
  }

  /**
   * Stops the node: closes every session (peers see nodedown), stops listening, removes its
   * run directory entry and ends monitors. Idempotent.
   */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    const conns: Connection[] = [];
    for (const peer of this.#peers.values()) {
      this.#clearTimer(peer);
      peer.attempt?.controller.abort(
        new NodeDownError(`${this.name} stopped while connecting to ${peer.name}`, peer.name),
      );
      conns.push(...peer.conns);
    }
    await this.#listener?.close().catch((err) => this.#log("warn", `listener: ${message(err)}`));
    await Promise.all(conns.map((c) => c.bye(true, `${this.name} stopped`)));
    await Promise.all(conns.map((c) => c.done));
    this.#claim?.release();
    this.#events.close();
    this.#log("info", `${this.name} stopped`);
  }

  #checkRunning(): void {
    if (this.#stopped) {
      throw new NodeDownError(`${this.name} is stopped; start a new node`, this.name);
    }
  }

  #peer(name: string): Peer {
    let peer = this.#peers.get(name);
    if (!peer) {
      peer = {
        name,
        target: undefined,
        active: undefined,
        conns: new Set(),
        up: false,
        hidden: false,
        attempt: undefined,
        wanted: false,
        failures: 0,
        timer: undefined,
      };
      this.#peers.set(name, peer);
    }
    return peer;
  }

  #forget(peer: Peer): void {
    if (
      peer.conns.size === 0 && !peer.attempt && !peer.wanted && peer.timer === undefined
      && this.#peers.get(peer.name) === peer
    ) {
      this.#peers.delete(peer.name);
    }
  }

  /** Where to find `target`: its port; the run directory for this host; else DEFAULT_PORT. */
  #resolve(target: NodeName): { host: string; port: number; note: string } {
    if (target.port !== undefined) return { host: target.host, port: target.port, note: "" };
    if (isLocalHost(target.host)) {
      const dir = this.#dir();
      const entry = dir.lookup(target.alive);
      if (entry && entry.host !== null && entry.port !== null) {
        if (entry.name !== target.name) {
          throw new NodeDownError(
            `no node ${target.name} on this host: its '${target.alive}' node is ${entry.name}; `
              + "call it by that name",
            target.name,
          );
        }
        return { host: entry.host, port: entry.port, note: "" };
      }
      return {
        host: target.host,
        port: DEFAULT_PORT,
        note: ` (not registered in ${dir.path}, tried the default port)`,
      };
    }
    return { host: target.host, port: DEFAULT_PORT, note: "" };
  }

  /**
   * Resolves once `target` has a session. Callers then take `#sessionOf(peer)` synchronously:
   * the session to use can change (a duplicate being retired) between this resolving and the
   * caller resuming.
   */
  async #ensureConnected(target: NodeName, signal: AbortSignal): Promise<Peer> {
    const peer = this.#peer(target.name);
    if (target.port !== undefined || !peer.target) peer.target = target;
    let conn = this.#sessionOf(peer);
    if (!conn) {
      const attempt = peer.attempt ?? this.#startAttempt(peer, target);
      attempt.waiters++;
      try {
        conn = await raceSignal(attempt.promise, signal);
      } finally {
        if (--attempt.waiters === 0 && !attempt.settled) {
          attempt.controller.abort(
            new TimeoutError(`connecting to ${target.name}: every caller gave up`),
          );
        }
      }
    }
    // Reconnect to it after a loss, unless it is a hidden node that connected to us.
    if (conn.outbound || !conn.peerHidden) peer.wanted = true;
    return peer;
  }

  /** What #ensureConnected records when it finds `peer` connected through `conn`. */
  #using(peer: Peer, target: NodeName, conn: Connection): void {
    if (target.port !== undefined || !peer.target) peer.target = target;
    // Reconnect to it after a loss, unless it is a hidden node that connected to us.
    if (conn.outbound || !conn.peerHidden) peer.wanted = true;
  }

  /** The session for new calls to `peer`, if there is one. */
  #sessionOf(peer: Peer): Connection | undefined {
    const conn = peer.active;
    return conn && !conn.closed && !conn.closing && !conn.sentRetire ? conn : undefined;
  }

  /** Connects if needed, then picks the session for one message, in the same tick. */
  async #connection(target: NodeName, signal: AbortSignal): Promise<Connection> {
    for (let tries = 0;; tries++) {
      const peer = await this.#ensureConnected(target, signal);
      const conn = this.#sessionOf(peer);
      if (conn) return conn;
      if (tries === 2) {
        throw new NodeDownError(`${target.name} keeps dropping its session`, target.name);
      }
    }
  }

  #startAttempt(peer: Peer, target: NodeName): Attempt {
    const controller = new AbortController();
    let resolve!: (c: Connection) => void;
    let reject!: (e: unknown) => void;
    const promise = new Promise<Connection>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => {});
    const attempt: Attempt = {
      promise,
      controller,
      waiters: 0,
      settled: false,
      resolve: (c) => {
        if (attempt.settled) return;
        attempt.settled = true;
        if (peer.attempt === attempt) peer.attempt = undefined;
        resolve(c);
      },
      reject: (e) => {
        if (attempt.settled) return;
        attempt.settled = true;
        if (peer.attempt === attempt) peer.attempt = undefined;
        reject(e);
        this.#forget(peer);
      },
    };
    peer.attempt = attempt;
    void this.#dial(peer, target, attempt);
    return attempt;
  }

  async #dial(peer: Peer, target: NodeName, attempt: Attempt): Promise<void> {
    const signal = attempt.controller.signal;
    try {
      const address = this.#resolve(target);
      const where = formatAddress(address);
      let session: Session;
      try {
        session = await raceSignal(
          this.#network.connect({ host: address.host, port: address.port }, {
            expectedName: target.name,
            signal,
          }),
          signal,
        );
      } catch (err) {
        if (signal.aborted) throw signal.reason;
        if (err instanceof NodeDownError) {
          throw err.message.includes(target.name) && address.note === ""
            ? err
            : new NodeDownError(
              `cannot reach ${target.name} at ${where}${address.note}: ${err.message}`,
              target.name,
            );
        }
        if (err instanceof NodectlError) throw err;
        throw new NodeDownError(
          `cannot reach ${target.name} at ${where}${address.note}: ${message(err)}`,
          target.name,
        );
      }
      if (this.#stopped) {
        await session.close(`${this.name} stopped`);
        throw new NodeDownError(`${this.name} stopped while connecting`, target.name);
      }
      if (session.peer.name !== target.name) {
        await session.close("unexpected peer name");
        throw new NodeDownError(
          `${where} answered as ${session.peer.name}, not ${target.name}`,
          target.name,
        );
      }
      // Established sessions always go through the hello, even if the callers gave up: the
      // peer may already use it.
      const conn = this.#adopt(session, true);
      await raceSignal(conn.hello, signal);
      if (!peer.active) throw new NodeDownError(`${target.name} went away`, target.name);
      attempt.resolve(peer.active);
    } catch (err) {
      attempt.reject(err);
    }
  }

  #accept(session: Session): void {
    const name = session.peer.name;
    let ok = false;
    try {
      ok = parseNodeName(name).name === name && name !== this.name;
    } catch { /* not a node name */ }
    if (!ok || this.#stopped) {
      this.#log("warn", `refusing a session from '${name}'`);
      void session.close(this.#stopped ? `${this.name} stopped` : "unacceptable node name");
      return;
    }
    this.#adopt(session, false);
  }

  #adopt(session: Session, outbound: boolean): Connection {
    const peer = this.#peer(session.peer.name);
    const conn = new Connection(session, outbound, this.#host);
    peer.conns.add(conn);
    return conn;
  }

  /** Who decides between duplicate sessions: the node whose name sorts first. */
  #isArbiter(peer: Peer): boolean {
    return this.name < peer.name;
  }

  #onHello(conn: Connection): void {
    const peer = this.#peer(conn.peer.name);
    conn.helloOrder = ++this.#helloCount;
    if (this.#stopped || conn.closing) return;
    const cur = peer.active;
    if (!cur || cur.closed || cur.closing) {
      this.#activate(peer, conn);
      return;
    }
    const restarted = cur.peerCreation !== conn.peerCreation;
    if (restarted || cur.outbound === conn.outbound) {
      // The peer restarted, or re-opened a session it had given up on: the old ones are stale.
      const why = restarted ? `${peer.name} restarted` : `${peer.name} replaced its session`;
      const stale = [...peer.conns].filter((c) =>
        c !== conn && c.helloOrder > 0
        && (restarted ? c.peerCreation !== conn.peerCreation : c.outbound === conn.outbound)
      );
      peer.active = undefined;
      for (const c of stale) {
        c.closing = true;
        void c.close(why);
      }
      this.#down(peer, { kind: "local", message: why });
      this.#activate(peer, conn);
      return;
    }
    // Two sessions, one opened by each side (simultaneous connect): the arbiter keeps the newest
    // and retires the other; its peer switches when told. Both drain, nothing in flight fails.
    if (this.#isArbiter(peer)) {
      cur.retire(this.callTimeoutMs + 1000);
      this.#activate(peer, conn);
    } else if (cur.gotRetire) {
      this.#switch(peer, conn, cur);
    }
  }

  #onRetire(conn: Connection): void {
    const peer = this.#peer(conn.peer.name);
    if (this.#isArbiter(peer)) return; // the peer's acknowledgement
    if (peer.active !== conn) {
      conn.retire(this.callTimeoutMs + 1000);
      return;
    }
    const next = this.#newestUsable(peer, conn);
    if (next) this.#switch(peer, next, conn);
  }

  #switch(peer: Peer, next: Connection, old: Connection): void {
    peer.active = next;
    old.retire(this.callTimeoutMs + 1000);
    this.#log("debug", `${peer.name}: duplicate session retired`);
  }

  #newestUsable(peer: Peer, except?: Connection): Connection | undefined {
    let best: Connection | undefined;
    for (const c of peer.conns) {
      if (c !== except && c.usable && (!best || c.helloOrder > best.helloOrder)) best = c;
    }
    return best;
  }

  #activate(peer: Peer, conn: Connection): void {
    peer.active = conn;
    peer.failures = 0;
    this.#clearTimer(peer);
    peer.attempt?.resolve(conn);
    if (!peer.up) {
      peer.up = true;
      peer.hidden = conn.hidden;
      this.#log("info", `nodeup ${peer.name}${peer.hidden ? " (hidden)" : ""}`);
      this.#events.emit({ type: "nodeup", node: peer.name, hidden: peer.hidden });
    }
  }

  #down(peer: Peer, reason: CloseReason): void {
    if (!peer.up) return;
    peer.up = false;
    this.#log("info", `nodedown ${peer.name}: ${reason.message}`);
    this.#events.emit({ type: "nodedown", node: peer.name, hidden: peer.hidden, reason });
  }

  #onBye(conn: Connection, reconnect: boolean): void {
    const peer = this.#peer(conn.peer.name);
    if (!reconnect) {
      peer.wanted = false;
      this.#clearTimer(peer);
    }
  }

  #onClosed(conn: Connection, reason: CloseReason): void {
    const peer = this.#peer(conn.peer.name);
    peer.conns.delete(conn);
    if (peer.active === conn) {
      peer.active = undefined;
      const next = this.#newestUsable(peer);
      if (next) {
        peer.active = next;
      } else {
        this.#down(peer, reason);
        this.#scheduleReconnect(peer);
      }
    }
    this.#forget(peer);
  }

  #clearTimer(peer: Peer): void {
    if (peer.timer !== undefined) clearTimeout(peer.timer);
    peer.timer = undefined;
  }

  #scheduleReconnect(peer: Peer): void {
    if (this.#stopped || !peer.wanted || this.#reconnect === false || peer.timer !== undefined) {
      return;
    }
    const target = peer.target ?? parseNodeName(peer.name);
    const delay = backoffDelay(peer.failures, this.#reconnect);
    peer.timer = setTimeout(async () => {
      peer.timer = undefined;
      if (this.#stopped || !peer.wanted || peer.active) return;
      const deadline = new Deadline(this.callTimeoutMs, `reconnecting to ${peer.name}`);
      try {
        await this.#ensureConnected(target, deadline.signal);
      } catch (err) {
        peer.failures++;
        this.#log("debug", `reconnect to ${peer.name} failed: ${message(err)}`);
        this.#scheduleReconnect(peer);
      } finally {
        deadline.clear();
      }
    }, delay);
  }
}
