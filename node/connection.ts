/**
 * One session to a peer, seen by the node layer: the hello exchange, calls multiplexed by id,
 * serving the peer's calls, and the retire handshake that drains a duplicate session.
 *
 * @module
 */
import { BadArgError, NodeDownError, PayloadTooLargeError, ProtocolError } from "../errors.ts";
import type { CloseReason, PeerInfo, Session } from "../transport/types.ts";
import {
  decodeMessage,
  decodeValue,
  encodeMessage,
  encodeValue,
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
  /** Runs a call from the peer. */
  serve(conn: Connection, service: string, fn: string, args: unknown[]): Promise<unknown>;
  /** Writes a log line. */
  log(level: "debug" | "info" | "warn" | "error", message: string): void;
}

interface Pending {
  service: string;
  fn: string;
  resolve(value: unknown): void;
  reject(err: Error): void;
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
    const max = session.maxMessageSize;
    this.#send({
      type: "hello",
      creation: host.creation,
      hidden: host.hidden,
      ...(max !== undefined ? { max } : {}),
    }).catch(() => {});
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

  #send(message: Message): Promise<void> {
    return this.#sendBytes(encodeMessage(message));
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
    return this.session.send(bytes);
  }

  /** Calls `service.fn` on the peer with CBOR-encoded `args`; rejects with signal.reason on abort. */
  call(service: string, fn: string, args: Uint8Array, signal?: AbortSignal): Promise<unknown> {
    if (this.closed || this.closing) {
      return Promise.reject(
        new NodeDownError(`${this.peer.name} is not connected (session closed)`, this.peer.name),
      );
    }
    if (signal?.aborted) return Promise.reject(signal.reason);
    const id = this.#nextId++;
    return new Promise<unknown>((resolve, reject) => {
      const onAbort = () => {
        if (this.#pending.delete(id)) {
          reject(signal!.reason);
          this.#maybeFinish();
        }
      };
      const done = () => signal?.removeEventListener("abort", onAbort);
      this.#pending.set(id, {
        service,
        fn,
        resolve: (v) => {
          done();
          resolve(v);
        },
        reject: (e) => {
          done();
          reject(e);
        },
      });
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#send({ type: "call", id, service, fn, args }).catch((err) => {
        const p = this.#pending.get(id);
        if (!p) return;
        this.#pending.delete(id);
        p.reject(this.#sendError(err, service, fn));
        this.#maybeFinish();
      });
    });
  }

  /** Sends a cast: no reply, no report of remote failures. */
  async cast(service: string, fn: string, args: Uint8Array): Promise<void> {
    try {
      await this.#send({ type: "cast", service, fn, args });
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
    this.#send({ type: "retire" }).catch(() => {});
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
      await this.#send({ type: "bye", reconnect });
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
        void this.#serve(message.id, message.service, message.fn, message.args);
        return;
      case "cast":
        void this.#serve(undefined, message.service, message.fn, message.args);
        return;
      case "reply": {
        const p = this.#pending.get(message.id);
        if (!p) return;
        this.#pending.delete(message.id);
        try {
          p.resolve(
            decodeValue(
              message.value,
              `the reply of ${p.service}.${p.fn} from ${this.peer.name}`,
            ),
          );
        } catch (err) {
          p.reject(err as Error);
        }
        this.#maybeFinish();
        return;
      }
      case "error": {
        const p = this.#pending.get(message.id);
        if (!p) return;
        this.#pending.delete(message.id);
        p.reject(errorFromWire(message));
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

  async #serve(
    id: number | undefined,
    service: string,
    fn: string,
    argBytes: Uint8Array,
  ): Promise<void> {
    this.#serving++;
    let reply: Message | undefined;
    try {
      const args = decodeValue(
        argBytes,
        `arguments of ${service}.${fn} sent to ${this.#host.name}`,
      );
      if (!Array.isArray(args)) {
        throw new BadArgError(`arguments of ${service}.${fn} must be an array`);
      }
      const value = await this.#host.serve(this, service, fn, args);
      if (id !== undefined) {
        reply = {
          type: "reply",
          id,
          value: encodeValue(value, `the reply of ${service}.${fn} on ${this.#host.name}`),
        };
      }
    } catch (err) {
      if (id === undefined) {
        this.#host.log(
          "warn",
          `cast ${service}.${fn} from ${this.peer.name} failed: ${(err as Error).message}`,
        );
      } else {
        reply = { type: "error", id, ...errorToWire(err) };
      }
    }
    try {
      if (reply && !this.closed) await this.#sendReply(reply, service, fn);
    } finally {
      this.#serving--;
      this.#maybeFinish();
    }
  }

  async #sendReply(reply: Message, service: string, fn: string): Promise<void> {
    let bytes: Uint8Array;
    try {
      bytes = encodeMessage(reply);
    } catch (err) {
      if (reply.type !== "error" && reply.type !== "reply") return;
      bytes = encodeMessage({ type: "error", id: reply.id, ...errorToWire(err) });
    }
    try {
      await this.#sendBytes(bytes);
    } catch (err) {
      if (!(err instanceof PayloadTooLargeError) || reply.type !== "reply") {
        if (!this.closed) {
          this.#host.log("warn", `reply to ${this.peer.name} not sent: ${String(err)}`);
        }
        return;
      }
      const tooLarge = new PayloadTooLargeError(
        `the reply of ${service}.${fn} on ${this.#host.name} is too large: ${err.message}`,
      );
      await this.#send({ type: "error", id: reply.id, ...errorToWire(tooLarge) }).catch(() => {});
    }
  }

  #onClosed(reason: CloseReason): void {
    this.#closedReason = reason;
    this.closing = true;
    if (this.#graceTimer !== undefined) clearTimeout(this.#graceTimer);
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of pending) {
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
