/**
 * An in-memory switchboard of transports keyed by "host:port", so the whole stack above the
 * socket (handshake, sessions, nodes) runs in one process without one. For tests.
 *
 * @module
 */
import { NodeDownError, TimeoutError } from "../errors.ts";
import { memoryTransportPair } from "./memory.ts";
import type { TransportDialer } from "./network.ts";
import type { Transport } from "./types.ts";

/** A dialer whose listeners and connections live in this process. */
export function memoryDialer(): TransportDialer {
  const listeners = new Map<string, (t: Transport) => void>();
  let nextPort = 40000;
  let nextClient = 50000;
  return {
    listen(address, onTransport) {
      const port = address.port === 0 ? nextPort++ : address.port;
      // A wildcard address listens for every host name, as it does on a socket.
      const wildcard = address.host === "0.0.0.0" || address.host === "::";
      const key = wildcard ? `*:${port}` : `${address.host}:${port}`;
      if (listeners.has(key)) {
        return Promise.reject(new Error(`address ${key} is already in use`));
      }
      listeners.set(key, onTransport);
      return Promise.resolve({
        host: address.host,
        port,
        close() {
          listeners.delete(key);
          return Promise.resolve();
        },
      });
    },
    connect(address, signal) {
      if (signal?.aborted) return Promise.reject(new TimeoutError("connect aborted"));
      const key = `${address.host}:${address.port}`;
      const accept = listeners.get(key) ?? listeners.get(`*:${address.port}`);
      if (!accept) return Promise.reject(new NodeDownError(`connection refused by ${key}`));
      const [client, server] = memoryTransportPair({
        remoteAddresses: [key, `${address.host}:${nextClient++}`],
      });
      accept(server);
      return Promise.resolve(client);
    },
  };
}
