/**
 * One session to a peer, seen by the node layer: the hello exchange, calls multiplexed by id,
 * serving the peer's calls, and the retire handshake that drains a duplicate session.
 *
 * @module
 */
import {
  BadArgError,
  NodeDownError,
  PayloadTooLargeError,
  ProtocolError,
  TimeoutError,
} from "../errors.ts";
import type { CloseReason, PeerInfo, Session } from "../transport/types.ts";
import { deadlines, type Timed } from "./deadlines.ts";
import {
  decodeArgs,
  decodeErrorExtra,
  decodeMessage,
  decodeReply,
  encodeCall,
  encodeCast,
  encodeError,
  encodeHello,
  encodeMessage,
  encodeReply,
  errorFromWire,
  errorToWire,
  type Message,
} from "./protocol.ts";

/** What a connection needs from its node. */
export interface ConnectionHost {
  /** The node's name. */
  readonly name: string;
  /** The node's incarnation, sent in the hello. */
  readonly creation: string;
  /** Whether the node is hidden, sent in the hello. */
  readonly hidden: boolean;
  /** The peer's hello arrived. */
  onHello(conn: Connection): void;
  /** The peer sent `retire` on this session. */
  onRetire(conn: Connection): void;
  /** The peer is closing this session; `reconnect: false` means "do not come back". */
  onBye(conn: Connection, reconnect: boolean): void;
  /** The session ended; pending calls have already been failed. */
  onClosed(conn: Connection, reason: CloseReason): void;
  /** Runs a call from the peer: its value, or a promise of it. */
  serve(conn: Connection, service: string, fn: string, args: unknown[]): unknown;
  /** Writes a log line. */
  log(level: "debug" | "info" | "warn" | "error", message: string): void;
}

/** Arguments already encoded as CBOR (a call that had to connect first encoded them early). */
export interface EncodedArgs {
  readonly encoded: Uint8Array;
}

/** A call waiting for its reply; filed in `deadlines` until it settles. */
class Pending implements Timed {
  slot = -1;
  prev: Timed | undefined = undefined;
  next: Timed | undefined = undefined;
  resolve!: (value: unknown) => void;
  reject!: (err: Error) => void;

  constructor(
    readonly id: number,
    readonly service: string,
    readonly fn: string,
    /** The whole deadline of the call, for the timeout message. */
    readonly timeoutMs: number,
    readonly onExpire: (p: Pending) => void,
  ) {}

  expire(): void {
    this.onExpire(this);
  }
}

function isThenable(v: unknown): v is PromiseLike<unknown> {
  return (typeof v === "object" || typeof v === "function") && v !== null
    && typeof (v as { then?: unknown }).then === "function";
}

/**
 * Rejects with `signal.reason` when `signal` aborts first.
 */
export function raceSignal<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}

/** A session to one peer, once the node layer has taken it over. */
export class Connection {
  /** The session. */
  readonly session: Session;
  /** Who is on the other end (as authenticated by the handshake). */
  readonly peer: PeerInfo;
  /** True when this node opened the session. */
  readonly outbound: boolean;
  /** The peer's incarnation, from its hello. */
  peerCreation: string | undefined;
  /** Whether the peer says it is hidden. */
  peerHidden: boolean;
  /** Order in which hellos arrived on this node (larger is newer); 0 before the hello. */
  helloOrder = 0;
  /** This side sent `retire`: it sends no new calls here. */
  sentRetire = false;
  /** The peer sent `retire`: it sends no new calls here. */
  gotRetire = false;
  /** close() was called (or the session ended). */
  closing = false;
  /** Resolves when the peer's hello arrives; rejects if the session ends first. */
  readonly hello: Promise<void>;
  /** Resolves once the session ended and the node was told. */
  readonly done: Promise<void>;

  #host: ConnectionHost;
  #pending = new Map<number, Pending>();
  #nextId = 1;
  #serving = 0;
  #closedReason: CloseReason | undefined;
  #helloResolve!: () => void;
  #peerMax: number | undefined;
  #helloReject!: (err: Error) => void;
  #graceTimer: ReturnType<typeof setTimeout> | undefined;

  /** Takes over `session`: sends the hello and starts reading. */
  constructor(session: Session, outbound: boolean, host: ConnectionHost) {
    this.session = session;
    this.peer = session.peer;
    this.outbound = outbound;
    this.peerHidden = session.peer.hidden;
    this.#host = host;
    this.hello = new Promise<void>((resolve, reject) => {
      this.#helloResolve = resolve;
      this.#helloReject = reject;
    });
    this.hello.catch(() => {});
    this.done = session.closed.then((reason) => this.#onClosed(reason));
    this.#sendBytes(encodeHello(host.creation, host.hidden, session.maxMessageSize)).catch(
      () => {},
    );
    void this.#readLoop();
  }

  /** True when either end is hidden: such a connection is not listed by `nodes()`. */
  get hidden(): boolean {
    return this.#host.hidden || this.peerHidden;
  }

  /** Whether the session has ended. */
  get closed(): boolean {
    return this.#closedReason !== undefined;
  }

  /** Usable for new calls: open, hello done, not being retired or closed. */
  get usable(): boolean {
    return !this.closed && !this.closing && this.helloOrder > 0 && !this.sentRetire
      && !this.gotRetire;
  }

  /**
   * Sends an encoded message, refusing one over the peer's advertised limit here rather than
   * letting the peer drop the whole session for it.
   */
  #sendBytes(bytes: Uint8Array): Promise<void> {
    if (this.#peerMax !== undefined && bytes.length > this.#peerMax) {
      return Promise.reject(
        new PayloadTooLargeError(
          `${bytes.length} bytes is over ${this.peer.name}'s limit of ${this.#peerMax} bytes`,
        ),
      );
    }
    try {
      return this.session.send(bytes);
    } catch (err) {
      return Promise.reject(err); // a session that throws must not break the read loop
    }
  }

  /**
   * Calls `service.fn(...args)` on the peer. Rejects with TimeoutError once `remainingMs` have
   * passed (the message names `timeoutMs`, the call's whole deadline), with BadArgError for
   * arguments that cannot be encoded, and with NodeDownError if the session ends first.
   */
  call(
    service: string,
    fn: string,
    args: unknown[] | EncodedArgs,
    timeoutMs: number,
    remainingMs = timeoutMs,
  ): Promise<unknown> {
    if (this.closed || this.closing) {
      return Promise.reject(
        new NodeDownError(`${this.peer.name} is not connected (session closed)`, this.peer.name),
      );
    }
    const id = this.#nextId++;
    let bytes: Uint8Array;
    try {
      bytes = Array.isArray(args)
        ? encodeCall(id, service, fn, args)
        : encodeMessage({ type: "call", id, service, fn, args: args.encoded });
    } catch (err) {
      return Promise.reject(err);
    }
    const p = new Pending(id, service, fn, timeoutMs, this.#expire);
    const promise = new Promise<unknown>((resolve, reject) => {
      p.resolve = resolve;
      p.reject = reject;
    });
    this.#pending.set(id, p);
    deadlines.add(p, remainingMs);
    this.#sendBytes(bytes).catch((err) => {
      if (this.#pending.get(id) !== p) return;
      this.#settle(p);
      p.reject(this.#sendError(err, service, fn));
      this.#maybeFinish();
    });
    return promise;
  }

  #settle(p: Pending): void {
    this.#pending.delete(p.id);
    deadlines.remove(p);
  }

  #expire = (p: Pending): void => {
    if (this.#pending.get(p.id) !== p) return;
    this.#pending.delete(p.id);
    p.reject(
      new TimeoutError(
        `call ${p.service}.${p.fn} on ${this.peer.name} timed out after ${p.timeoutMs} ms `
          + "waiting for the reply",
      ),
    );
    this.#maybeFinish();
  };

  /** Sends a cast: no reply, no report of remote failures. */
  async cast(service: string, fn: string, args: unknown[] | EncodedArgs): Promise<void> {
    const bytes = Array.isArray(args)
      ? encodeCast(service, fn, args)
      : encodeMessage({ type: "cast", service, fn, args: args.encoded });
    try {
      await this.#sendBytes(bytes);
    } catch (err) {
      throw this.#sendError(err, service, fn);
    }
  }

  #sendError(err: unknown, service: string, fn: string): Error {
    if (err instanceof PayloadTooLargeError) {
      return new PayloadTooLargeError(
        `arguments of ${service}.${fn} for ${this.peer.name} are too large: ${err.message}`,
      );
    }
    if (err instanceof BadArgError) return err;
    const why = this.#closedReason?.message ?? (err instanceof Error ? err.message : String(err));
    return new NodeDownError(
      `${this.peer.name} went down during ${service}.${fn}: ${why}`,
      this.peer.name,
    );
  }

  /** Tells the peer this side sends no new calls here; the session closes once drained. */
  retire(graceMs: number): void {
    if (this.sentRetire || this.closed) return;
    this.sentRetire = true;
    this.#sendBytes(encodeMessage({ type: "retire" })).catch(() => {});
    this.#graceTimer = setTimeout(() => {
      void this.close("duplicate session retired (grace period over)");
    }, graceMs);
    this.#maybeFinish();
  }

  /** Says goodbye (best effort) and closes. */
  async bye(reconnect: boolean, message: string): Promise<void> {
    if (this.closed) return;
    this.closing = true;
    try {
      await this.#sendBytes(encodeMessage({ type: "bye", reconnect }));
    } catch { /* closing anyway */ }
    await this.close(message);
  }

  /** Closes the session; idempotent. */
  async close(message: string): Promise<void> {
    this.closing = true;
    if (this.closed) return;
    try {
      await this.session.close(message);
    } catch (err) {
      this.#host.log("debug", `closing session to ${this.peer.name}: ${String(err)}`);
    }
  }

  #maybeFinish(): void {
    if (
      this.sentRetire && this.gotRetire && this.#pending.size === 0 && this.#serving === 0
      && !this.closing
    ) {
      void this.close("duplicate session retired");
    }
  }

  async #readLoop(): Promise<void> {
    try {
      for await (const bytes of this.session) {
        let message: Message;
        try {
          message = decodeMessage(bytes);
        } catch (err) {
          await this.#protocolError((err as Error).message);
          return;
        }
        if (this.peerCreation === undefined) {
          if (message.type !== "hello") {
            await this.#protocolError(`expected hello, got ${message.type}`);
            return;
          }
          this.peerCreation = message.creation;
          this.#peerMax = message.max;
          this.peerHidden = this.peerHidden || message.hidden;
          this.#host.onHello(this);
          this.#helloResolve();
          continue;
        }
        this.#handle(message);
      }
    } catch (err) {
      this.#host.log("debug", `session to ${this.peer.name} broke: ${String(err)}`);
    }
  }

  async #protocolError(why: string): Promise<void> {
    const err = new ProtocolError(`${this.peer.name} broke the protocol: ${why}`);
    this.#host.log("warn", err.message);
    this.#helloReject(err);
    await this.close(err.message);
  }

  #handle(message: Message): void {
    switch (message.type) {
      case "hello":
        void this.#protocolError("a second hello");
        return;
      case "call":
        this.#serve(message.id, message.service, message.fn, message.args);
        return;
      case "cast":
        this.#serve(undefined, message.service, message.fn, message.args);
        return;
      case "reply": {
        const p = this.#pending.get(message.id);
        if (!p) return;
        this.#settle(p);
        try {
          p.resolve(decodeReply(message.value, p.service, p.fn, this.peer.name));
        } catch (err) {
          p.reject(err as Error);
        }
        this.#maybeFinish();
        return;
      }
      case "error": {
        const p = this.#pending.get(message.id);
        if (!p) return;
        this.#settle(p);
        try {
          const extra = decodeErrorExtra(message.extra, p.service, p.fn, this.peer.name);
          p.reject(errorFromWire({ ...message, extra }));
        } catch (err) {
          p.reject(err as Error);
        }
        this.#maybeFinish();
        return;
      }
      case "retire":
        this.gotRetire = true;
        this.#host.onRetire(this);
        this.#maybeFinish();
        return;
      case "bye":
        this.closing = true;
        this.#host.onBye(this, message.reconnect);
        return;
    }
  }

  /**
   * Runs a call (`id`) or cast (no id) from the peer and sends its answer. A function that
   * returns a plain value is answered at once, without a trip through the microtask queue.
   */
  #serve(id: number | undefined, service: string, fn: string, argBytes: Uint8Array): void {
    this.#serving++;
    let result: unknown;
    try {
      // Decoded before anything else: `argBytes` is a view of the received message.
      const args = decodeArgs({ service, fn, args: argBytes }, this.#host.name);
      result = this.#host.serve(this, service, fn, args);
    } catch (err) {
      return this.#answer(id, service, fn, err, false);
    }
    if (isThenable(result)) {
      Promise.resolve(result).then(
        (value) => this.#answer(id, service, fn, value, true),
        (err) => this.#answer(id, service, fn, err, false),
      );
    } else {
      this.#answer(id, service, fn, result, true);
    }
  }

  /** Sends the reply (or error) of a served call; logs a failed cast. */
  #answer(id: number | undefined, service: string, fn: string, outcome: unknown, ok: boolean) {
    let reply: Uint8Array | undefined;
    if (id === undefined) {
      if (!ok) {
        this.#host.log(
          "warn",
          `cast ${service}.${fn} from ${this.peer.name} failed: ${(outcome as Error).message}`,
        );
      }
    } else if (ok) {
      try {
        reply = encodeReply(id, outcome, service, fn, this.#host.name);
      } catch (err) {
        ok = false;
        reply = this.#errorReply(id, err);
      }
    } else {
      reply = this.#errorReply(id, outcome);
    }
    if (reply === undefined || id === undefined || this.closed) return this.#servedOne();
    this.#sendBytes(reply).then(
      this.#servedOne,
      (err) => this.#replyFailed(err, id, ok, service, fn).finally(this.#servedOne),
    );
  }

  #servedOne = (): void => {
    this.#serving--;
    this.#maybeFinish();
  };

  #errorReply(id: number, err: unknown): Uint8Array | undefined {
    try {
      return encodeError(id, errorToWire(err));
    } catch (e) {
      this.#host.log("warn", `error reply to ${this.peer.name} not sent: ${String(e)}`);
      return undefined;
    }
  }

  /** A reply was not sent: one too large for the peer is answered with that error instead. */
  async #replyFailed(
    err: unknown,
    id: number,
    isValue: boolean,
    service: string,
    fn: string,
  ): Promise<void> {
    if (!(err instanceof PayloadTooLargeError) || !isValue) {
      if (!this.closed) {
        this.#host.log("warn", `reply to ${this.peer.name} not sent: ${String(err)}`);
      }
      return;
    }
    const tooLarge = new PayloadTooLargeError(
      `the reply of ${service}.${fn} on ${this.#host.name} is too large: ${err.message}`,
    );
    const bytes = this.#errorReply(id, tooLarge);
    if (bytes) await this.#sendBytes(bytes).catch(() => {});
  }

  #onClosed(reason: CloseReason): void {
    this.#closedReason = reason;
    this.closing = true;
    if (this.#graceTimer !== undefined) clearTimeout(this.#graceTimer);
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of pending) {
      deadlines.remove(p);
      p.reject(
        new NodeDownError(
          `${this.peer.name} went down during ${p.service}.${p.fn}: ${reason.message}`,
          this.peer.name,
        ),
      );
    }
    this.#helloReject(
      new NodeDownError(
        `${this.peer.name} closed the session before it was set up: ${reason.message}`,
        this.peer.name,
      ),
    );
    this.#host.onClosed(this, reason);
  }
}
