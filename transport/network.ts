/**
 * `Network` implementations for the node layer: transports (TCP or in-memory) plus the Noise
 * handshake, or, for the benchmark's in-run baseline only, plain unencrypted sessions.
 *
 * @module
 */
import { decode as cborDecode, encode as cborEncode } from "cborg";
import { NodeDownError, ProtocolError, TimeoutError } from "../errors.ts";
import { type HandshakeConfig, initiate, respond } from "./handshake.ts";
import { NoiseSession, type SessionOptions } from "./session.ts";
import { connectTcp, listenTcp } from "./tcp.ts";
import type { Listener, Network, Session, Transport } from "./types.ts";

/** Opens and accepts raw transports: TCP, or an in-memory switchboard in tests. */
export interface TransportDialer {
  /** Accepts transports on `address`, handing each to `onTransport`. */
  listen(
    address: { host: string; port: number },
    onTransport: (t: Transport) => void,
  ): Promise<Listener>;
  /** Opens a transport to `address`; rejects with NodeDownError, or TimeoutError on abort. */
  connect(address: { host: string; port: number }, signal?: AbortSignal): Promise<Transport>;
}

/** TCP transports (2-byte length framing, TCP_NODELAY). */
export const tcpDialer: TransportDialer = {
  listen: (address, onTransport) => listenTcp(address.host, address.port, onTransport),
  connect: (address, signal) => connectTcp(address.host, address.port, signal ? { signal } : {}),
};

/** Handshakes allowed in flight on one listener; more are dropped (flood protection). */
export const MAX_PENDING_HANDSHAKES = 512;

/**
 * A Network whose sessions are Noise-encrypted and mutually authenticated by the cookie, with
 * the peer's key pinned in known_nodes.
 *
 * @example
 * ```ts ignore
 * const network = secureNetwork(tcpDialer, { localName: "public@host", identity, psk, knownNodes });
 * const session = await network.connect({ host: "10.0.0.2", port: 4370 }, { expectedName: "private@10.0.0.2" });
 * ```
 */
export function secureNetwork(dialer: TransportDialer, cfg: HandshakeConfig): Network {
  return {
    async listen(address, onSession) {
      let pending = 0;
      return await dialer.listen(address, (transport) => {
        if (pending >= MAX_PENDING_HANDSHAKES) {
          cfg.log?.(
            `handshake from ${transport.remoteAddress} dropped: ${pending} handshakes already in progress`,
          );
          transport.close();
          return;
        }
        pending++;
        respond(transport, cfg).then((session) => {
          if (session) onSession(session);
        }).finally(() => pending--);
      });
    },
    async connect(address, options) {
      const transport = await dial(dialer, address, options.expectedName, options.signal);
      return await initiate(transport, options.expectedName, cfg, options.signal);
    },
  };
}

async function dial(
  dialer: TransportDialer,
  address: { host: string; port: number },
  expectedName: string,
  signal: AbortSignal | undefined,
): Promise<Transport> {
  try {
    return await dialer.connect(address, signal);
  } catch (err) {
    if (err instanceof TimeoutError || err instanceof NodeDownError) throw err;
    throw new NodeDownError(
      `cannot reach ${expectedName} at ${address.host}:${address.port}: ${(err as Error).message}`,
      expectedName,
    );
  }
}

/** Options of the plain (unencrypted) network. */
export interface PlainNetworkOptions {
  /** This node's name, sent to the peer. */
  localName: string;
  /** Whether this node is hidden. */
  hidden?: boolean;
  /** Options for the sessions. */
  session?: SessionOptions;
}

/**
 * UNENCRYPTED, UNAUTHENTICATED sessions with the same framing as the secure ones. It exists only
 * as the benchmark's in-run baseline (the cost of Noise is the difference); nothing in the CLI
 * can select it.
 */
export function plainNetwork(dialer: TransportDialer, opts: PlainNetworkOptions): Network {
  const hello = () => cborEncode({ n: opts.localName, h: opts.hidden ?? false });
  const start = async (t: Transport, it: AsyncIterator<Uint8Array>): Promise<Session> => {
    const r = await it.next();
    if (r.done) throw new NodeDownError(`${t.remoteAddress} closed during the hello`);
    const v = cborDecode(r.value) as { n?: unknown; h?: unknown };
    if (typeof v?.n !== "string") throw new ProtocolError("malformed hello");
    return new NoiseSession(t, null, {
      name: v.n,
      publicKey: new Uint8Array(0),
      fingerprint: "",
      hidden: v.h === true,
    }, { ...opts.session, iterator: it });
  };
  return {
    listen(address, onSession) {
      return dialer.listen(address, (t) => {
        const it = t[Symbol.asyncIterator]();
        t.send(hello()).then(() => start(t, it)).then(onSession, () => t.close());
      });
    },
    async connect(address, options) {
      const t = await dial(dialer, address, options.expectedName, options.signal);
      const it = t[Symbol.asyncIterator]();
      await t.send(hello());
      return await start(t, it);
    },
  };
}
