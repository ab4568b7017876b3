/**
 * nodectl's handshake: Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s with the cookie-derived key as PSK,
 * the node's persistent static key as `s`, and known_nodes pinning of the peer's key.
 *
 * Wire messages (each one Transport message, at most 65535 bytes):
 *
 *     INIT     I→R  type 1 | version u8 | Noise message 1   (psk, e)            payload empty
 *     RESPONSE R→I  type 2 | Noise message 2                (e, ee, s, es)      payload hello
 *     FINISH   I→R  type 3 | Noise message 3                (s, se)             payload hello
 *     ACCEPT   R→I  type 4 | transport message, c2 nonce 0                     payload empty
 *     VERSION  R→I  type 0xFE | version u8   (only when INIT carries another protocol version)
 *
 * Why this shape:
 * - psk0 mixes the cookie in before anything else, so INIT's payload tag authenticates the
 *   cookie: a responder rejects a wrong cookie on the first message, before any DH, and answers
 *   nothing (the peer learns nothing; the local log says why).
 * - XX sends both static keys encrypted (identity hiding from passive observers) and needs no
 *   key known in advance: first contact needs only the cookie; keys are then pinned like SSH's
 *   known_hosts. ee gives forward secrecy.
 * - ACCEPT tells the initiator that the responder accepted its key too, so "refused by the peer"
 *   is reported as such instead of surfacing later as a dropped connection.
 * - The prologue binds protocol name and version; the version also travels in clear in INIT so
 *   a mismatch is reported as a version mismatch rather than as a bad cookie.
 *
 * @module
 */
import { decode as cborDecode, encode as cborEncode } from "cborg";
import { AuthFailedError, NodeDownError, ProtocolError, TimeoutError } from "../errors.ts";
import { PROTOCOL_VERSION } from "../version.ts";
import { type KeyPair, publicKeyFingerprint } from "./crypto.ts";
import { keyChangedMessage, type KnownNodes, notListedMessage } from "./known_nodes.ts";
import { type CipherState, HandshakeState } from "./noise_state.ts";
import { NoiseSession, type SessionCiphers, type SessionOptions } from "./session.ts";
import type { PeerInfo, Session, Transport } from "./types.ts";

/** The Noise protocol nodectl speaks. */
export const NOISE_PROTOCOL = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s";
/** Default time allowed for a whole handshake, either side. */
export const HANDSHAKE_TIMEOUT_MS = 5_000;

const MSG_INIT = 1;
const MSG_RESPONSE = 2;
const MSG_FINISH = 3;
const MSG_ACCEPT = 4;
const MSG_VERSION = 0xfe;

/** The prologue: protocol name and version, bound into the handshake hash. */
export function prologue(version: number = PROTOCOL_VERSION): Uint8Array {
  return new TextEncoder().encode(`nodectl/${version}`);
}

/** What both sides need to run the handshake. */
export interface HandshakeConfig {
  /** This node's name, sent (encrypted) to the peer. */
  localName: string;
  /** A hidden node (short-lived `nodectl call`) is not listed or pinned by the peer. */
  hidden?: boolean;
  /** This node's static identity key. */
  identity: KeyPair;
  /** The 32-byte pre-shared key derived from the cookie. */
  psk: Uint8Array;
  /** Pinned peer keys; `undefined` disables pinning (tests only). */
  knownNodes?: KnownNodes;
  /** Deadline for the whole handshake (default 5 s). */
  timeoutMs?: number;
  /** Options for the session that follows. */
  session?: SessionOptions;
  /** Local log, one line per event. */
  log?: (line: string) => void;
  /** Protocol version to speak; only tests change it. */
  protocolVersion?: number;
}

interface Hello {
  name: string;
  hidden: boolean;
}

/** What a peer may call itself: `alive@host`, as node/names.ts builds them. */
const PEER_NAME = /^[A-Za-z0-9_-]{1,64}@[^\s@]{1,255}$/;

function encodeHello(h: Hello): Uint8Array {
  return cborEncode({ n: h.name, h: h.hidden });
}

function decodeHello(bytes: Uint8Array): Hello {
  let v: unknown;
  try {
    v = cborDecode(bytes);
  } catch {
    throw new ProtocolError("peer sent a malformed hello");
  }
  const o = v as { n?: unknown; h?: unknown };
  if (typeof o !== "object" || o === null || typeof o.n !== "string" || !PEER_NAME.test(o.n)) {
    throw new ProtocolError("peer sent a hello without a valid node name (name@host)");
  }
  return { name: o.n, hidden: o.h === true };
}

function withType(type: number, body: Uint8Array, extra?: number): Uint8Array {
  const head = extra === undefined ? 1 : 2;
  const out = new Uint8Array(head + body.length);
  out[0] = type;
  if (extra !== undefined) out[1] = extra;
  out.set(body, head);
  return out;
}

/** Reads transport messages one at a time, with the handshake's deadline. */
class Reader {
  #it: AsyncIterator<Uint8Array>;
  constructor(transport: Transport, private readonly signal: AbortSignal) {
    this.#it = transport[Symbol.asyncIterator]();
  }
  /** The next message, or `undefined` when the peer closed. */
  async next(): Promise<Uint8Array | undefined> {
    if (this.signal.aborted) throw this.signal.reason;
    let onAbort!: () => void;
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => reject(this.signal.reason);
      this.signal.addEventListener("abort", onAbort, { once: true });
    });
    try {
      const r = await Promise.race([this.#it.next(), aborted]);
      return r.done ? undefined : r.value;
    } finally {
      this.signal.removeEventListener("abort", onAbort);
    }
  }
  /** The underlying iterator, handed to the session. */
  get iterator(): AsyncIterator<Uint8Array> {
    return this.#it;
  }
}

function deadline(timeoutMs: number, outer?: AbortSignal): { signal: AbortSignal; done(): void } {
  const ctl = new AbortController();
  const timer = setTimeout(
    () => ctl.abort(new TimeoutError(`handshake did not finish within ${timeoutMs} ms`)),
    timeoutMs,
  );
  const onOuter = () => ctl.abort(outer?.reason);
  outer?.addEventListener("abort", onOuter, { once: true });
  if (outer?.aborted) onOuter();
  return {
    signal: ctl.signal,
    done() {
      clearTimeout(timer);
      outer?.removeEventListener("abort", onOuter);
    },
  };
}

function nameOf(node: string): string {
  const at = node.indexOf("@");
  return at < 0 ? node : node.slice(0, at);
}

/**
 * Checks a peer's static key against known_nodes: pins a new one, refuses a changed one, and
 * in strict mode refuses one not listed. Returns the AuthFailedError to raise, if any.
 */
function checkPeerKey(
  cfg: HandshakeConfig,
  peer: Hello,
  key: Uint8Array,
): AuthFailedError | undefined {
  const refusedBy = "local";
  const known = cfg.knownNodes;
  if (!known) return undefined;
  const verdict = known.check(peer.name, key);
  if (verdict.status === "known") return undefined;
  const fp = publicKeyFingerprint(key);
  if (verdict.status === "changed") {
    return new AuthFailedError(
      keyChangedMessage(peer.name, publicKeyFingerprint(verdict.pinned), fp, known.path),
      "key_changed",
      refusedBy,
    );
  }
  if (known.strict) {
    // A hidden node (a `nodectl call`) has a fresh name each run; its key is what is listed.
    if (peer.hidden && known.list().some((n) => equalKeys(n.publicKey, key))) return undefined;
    return new AuthFailedError(
      notListedMessage(peer.name, fp, known.path),
      "key_not_listed",
      refusedBy,
    );
  }
  if (peer.hidden) return undefined;
  // Another process may have pinned a different key for this name a moment ago.
  const pinned = known.pin(peer.name, key);
  if (pinned.status === "changed") {
    return new AuthFailedError(
      keyChangedMessage(peer.name, publicKeyFingerprint(pinned.pinned), fp, known.path),
      "key_changed",
      refusedBy,
    );
  }
  return undefined;
}

function equalKeys(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/**
 * Runs the initiator side on a fresh transport and resolves to an established session with the
 * node `expectedName`. Rejects with AuthFailedError (says which side refused and why),
 * ProtocolError (version mismatch, malformed message), NodeDownError or TimeoutError. The
 * transport is closed on failure.
 *
 * @example
 * ```ts ignore
 * const session = await initiate(await connectTcp("127.0.0.1", 4370), "private@host", config);
 * ```
 */
export async function initiate(
  transport: Transport,
  expectedName: string,
  cfg: HandshakeConfig,
  signal?: AbortSignal,
): Promise<Session> {
  const timeoutMs = cfg.timeoutMs ?? HANDSHAKE_TIMEOUT_MS;
  const dl = deadline(timeoutMs, signal);
  const version = cfg.protocolVersion ?? PROTOCOL_VERSION;
  const hs = new HandshakeState({
    protocolName: NOISE_PROTOCOL,
    initiator: true,
    prologue: prologue(version),
    s: cfg.identity,
    psks: [cfg.psk],
  });
  const reader = new Reader(transport, dl.signal);
  const where = `${expectedName} (${transport.remoteAddress})`;
  let ciphers: [CipherState, CipherState] | undefined;
  try {
    await transport.send(withType(MSG_INIT, hs.writeMessage(new Uint8Array(0)), version));
    const m2 = await reader.next();
    if (m2 === undefined) {
      throw new AuthFailedError(
        `${where} closed the connection at the first handshake message: the cookies differ (or it is not a nodectl node); use the same cookie on both nodes — its log says why`,
        "cookie_mismatch",
        "remote",
      );
    }
    if (m2[0] === MSG_VERSION && m2.length === 2) {
      throw new ProtocolError(
        `${where} speaks nodectl protocol ${
          m2[1]
        }, this node speaks ${version}: run the same nodectl release on both`,
      );
    }
    if (m2[0] !== MSG_RESPONSE) {
      throw new ProtocolError(`${where} sent an unexpected handshake message`);
    }
    let hello: Hello;
    try {
      hello = decodeHello(hs.readMessage(m2.subarray(1)));
    } catch (err) {
      hs.abandon();
      for (const c of ciphers ?? []) c.wipe();
      if (err instanceof ProtocolError) throw err;
      throw new AuthFailedError(
        `${where} answered with a handshake that does not authenticate under our cookie: the cookies differ`,
        "cookie_mismatch",
        "local",
      );
    }
    const remoteKey = hs.remoteStatic!;
    if (nameOf(hello.name) !== nameOf(expectedName)) {
      throw new AuthFailedError(
        `${transport.remoteAddress} is node ${hello.name}, not ${expectedName}: check the node name and port`,
        "name_mismatch",
        "local",
      );
    }
    const refusal = checkPeerKey(cfg, hello, remoteKey);
    if (refusal) throw refusal;
    await transport.send(
      withType(
        MSG_FINISH,
        hs.writeMessage(encodeHello({ name: cfg.localName, hidden: cfg.hidden ?? false })),
      ),
    );
    ciphers = hs.split();
    const [send, recv] = ciphers;
    const m4 = await reader.next();
    if (m4 === undefined) {
      throw new AuthFailedError(
        `${hello.name} (${transport.remoteAddress}) accepted our cookie but refused this node's key (${
          publicKeyFingerprint(cfg.identity.publicKey)
        }): it has another key pinned for ${cfg.localName}, or lists only known keys; see its log`,
        "refused_by_peer",
        "remote",
      );
    }
    if (m4[0] !== MSG_ACCEPT) {
      throw new ProtocolError(`${where} sent an unexpected handshake message`);
    }
    try {
      recv.decryptWithAd(new Uint8Array(0), m4.subarray(1));
    } catch {
      throw new ProtocolError(`${where} sent a handshake confirmation that failed authentication`);
    }
    return establish(transport, hello, remoteKey, { send, recv }, cfg, reader);
  } catch (err) {
    transport.close();
    if (dl.signal.aborted && !(err instanceof AuthFailedError || err instanceof ProtocolError)) {
      const reason = dl.signal.reason;
      if (reason instanceof TimeoutError) {
        throw new TimeoutError(`handshake with ${where} did not finish within ${timeoutMs} ms`);
      }
      throw reason instanceof Error ? reason : new TimeoutError(`handshake with ${where} aborted`);
    }
    if (err instanceof AuthFailedError || err instanceof ProtocolError) throw err;
    throw new NodeDownError(
      `connection to ${where} failed during the handshake: ${(err as Error).message}`,
      expectedName,
    );
  } finally {
    dl.done();
  }
}

/** The session that follows a completed handshake, reading on from the handshake's iterator. */
function establish(
  transport: Transport,
  hello: Hello,
  remoteKey: Uint8Array,
  ciphers: SessionCiphers,
  cfg: HandshakeConfig,
  reader: Reader,
): Session {
  const peer: PeerInfo = {
    name: hello.name,
    publicKey: remoteKey,
    fingerprint: publicKeyFingerprint(remoteKey),
    hidden: hello.hidden,
  };
  const options: SessionOptions = {
    ...cfg.session,
    ...(cfg.log ? { log: cfg.log } : {}),
    iterator: reader.iterator,
  };
  return new NoiseSession(transport, ciphers, peer, options);
}

/**
 * Runs the responder side on an accepted transport. Resolves to the session, or to `undefined`
 * when the handshake failed: then the transport is closed without a word to the peer and one
 * line saying why goes to the local log.
 */
export async function respond(
  transport: Transport,
  cfg: HandshakeConfig,
): Promise<Session | undefined> {
  const timeoutMs = cfg.timeoutMs ?? HANDSHAKE_TIMEOUT_MS;
  const dl = deadline(timeoutMs);
  const version = cfg.protocolVersion ?? PROTOCOL_VERSION;
  const reader = new Reader(transport, dl.signal);
  const from = transport.remoteAddress;
  const log = cfg.log ?? (() => {});
  let hs: HandshakeState | undefined;
  let established = false;
  try {
    const m1 = await reader.next();
    if (m1 === undefined) {
      log(`handshake from ${from} failed: closed before the first message`);
      return undefined;
    }
    if (m1[0] !== MSG_INIT || m1.length < 2) {
      log(`handshake from ${from} failed: not a nodectl handshake`);
      transport.close();
      return undefined;
    }
    if (m1[1] !== version) {
      log(
        `handshake from ${from} failed: it speaks nodectl protocol ${
          m1[1]
        }, this node speaks ${version}`,
      );
      await transport.send(withType(MSG_VERSION, new Uint8Array(0), version)).catch(() => {});
      transport.close();
      return undefined;
    }
    hs = new HandshakeState({
      protocolName: NOISE_PROTOCOL,
      initiator: false,
      prologue: prologue(version),
      s: cfg.identity,
      psks: [cfg.psk],
    });
    try {
      hs.readMessage(m1.subarray(2));
    } catch {
      log(
        `handshake from ${from} failed: cookie mismatch (the first message does not authenticate under our cookie)`,
      );
      transport.close();
      return undefined;
    }
    await transport.send(
      withType(
        MSG_RESPONSE,
        hs.writeMessage(encodeHello({ name: cfg.localName, hidden: cfg.hidden ?? false })),
      ),
    );
    const m3 = await reader.next();
    if (m3 === undefined) {
      log(
        `handshake from ${from} failed: the peer hung up after our response (it refused our key or name; see its log)`,
      );
      return undefined;
    }
    let hello: Hello;
    try {
      if (m3[0] !== MSG_FINISH) throw new ProtocolError("its final message has the wrong type");
      hello = decodeHello(hs.readMessage(m3.subarray(1)));
    } catch (err) {
      const why = err instanceof ProtocolError
        ? err.message
        : "its final message does not authenticate";
      log(`handshake from ${from} failed: ${why}`);
      transport.close();
      return undefined;
    }
    const remoteKey = hs.remoteStatic!;
    const refusal = checkPeerKey(cfg, hello, remoteKey);
    if (refusal) {
      log(`refused ${hello.name} from ${from}: ${refusal.message}`);
      transport.close();
      return undefined;
    }
    const [recv, send] = hs.split();
    await transport.send(
      withType(MSG_ACCEPT, send.encryptWithAd(new Uint8Array(0), new Uint8Array(0))),
    );
    established = true;
    return establish(transport, hello, remoteKey, { send, recv }, cfg, reader);
  } catch (err) {
    const why = dl.signal.aborted
      ? `no complete handshake within ${timeoutMs} ms`
      : (err as Error).message;
    log(`handshake from ${from} failed: ${why}`);
    transport.close();
    return undefined;
  } finally {
    dl.done();
    if (!established) hs?.abandon();
  }
}
