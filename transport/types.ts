/**
 * The seams between layers. `node/` sees only `Session` and `Network`; it never touches sockets
 * or crypto. `Transport` is what a socket (or an in-memory pipe) offers the session layer.
 *
 * @module
 */

/**
 * A bidirectional channel of whole wire messages, each at most 65535 bytes (Noise's limit).
 * TCP frames them with a 2-byte length prefix; the in-memory pair passes them as they are.
 * Iteration ends when the peer closes; it throws if the channel breaks.
 */
export interface Transport extends AsyncIterable<Uint8Array> {
  /** Queues one wire message; resolves when the channel accepted it (backpressure). */
  send(message: Uint8Array): Promise<void>;
  /**
   * Optional: queues ONE wire message made of `parts` back to back, as `send()` of their
   * concatenation would, without the caller joining them first. The transport may keep the
   * arrays until they are written: do not modify them afterwards.
   */
  sendParts?(parts: readonly Uint8Array[]): Promise<void>;
  /** Closes both directions; idempotent. */
  close(): void;
  /** Resolves once the channel is closed, by either side. */
  readonly closed: Promise<void>;
  /** Printable address of the other end, for logs ("127.0.0.1:4370", "memory"). */
  readonly remoteAddress: string;
}

/** Who is on the other end of an established session. */
export interface PeerInfo {
  /** The peer's node name as it presented it in the handshake ("private@host"). */
  readonly name: string;
  /** The peer's static X25519 public key (32 bytes); empty for a plain (unencrypted) session. */
  readonly publicKey: Uint8Array;
  /** Short printable fingerprint of `publicKey` ("SHA256:..."-like), "" for plain sessions. */
  readonly fingerprint: string;
  /** A hidden node (a short-lived `nodectl call`) is not listed or pinned by the other side. */
  readonly hidden: boolean;
}

/** Why a session ended. */
export type CloseReason =
  | { kind: "local"; message: string }
  | { kind: "remote"; message: string }
  | { kind: "dead"; message: string }
  | { kind: "error"; message: string; error: Error };

/**
 * An established, authenticated channel of application messages of any size up to
 * `maxMessageSize`. Large messages are split into frames and interleaved fairly with other
 * sends, so a small message is never stuck behind a large one.
 */
export interface Session extends AsyncIterable<Uint8Array> {
  /** Who the session is with, as authenticated by the handshake. */
  readonly peer: PeerInfo;
  /** The largest message this side accepts (and sends); told to the peer by the node layer. */
  readonly maxMessageSize?: number;
  /** Sends one whole message. Rejects with PayloadTooLargeError above the limit. */
  send(message: Uint8Array): Promise<void>;
  /** Closes the session cleanly (the peer is told); idempotent. */
  close(message?: string): Promise<void>;
  /** Resolves with the reason once the session has ended, however it ended. */
  readonly closed: Promise<CloseReason>;
}

/** A listening endpoint. */
export interface Listener {
  /** The bound port (useful when asked for port 0). */
  readonly port: number;
  /** The bound host. */
  readonly host: string;
  /** Stops accepting; sessions already handed out stay open. */
  close(): Promise<void>;
}

/** What the node layer needs from the network: accept and open sessions. */
export interface Network {
  /** Accepts sessions on host:port; each completed handshake is handed to `onSession`. */
  listen(
    address: { host: string; port: number },
    onSession: (session: Session) => void,
  ): Promise<Listener>;
  /**
   * Opens a session to host:port, expecting the peer to be `expectedName`. Rejects with
   * AuthFailedError, NodeDownError or TimeoutError (when `signal` aborts) — never hangs.
   */
  connect(
    address: { host: string; port: number },
    options: { expectedName: string; signal?: AbortSignal },
  ): Promise<Session>;
}
