/**
 * What the bench's nodes share: the network of a node (encrypted over Noise with its own
 * identity and known_nodes file, or the plain unencrypted baseline), and the `Bench` service.
 *
 * @module
 */
import { join } from "node:path";
import type { ServiceDefinition } from "../node/services.ts";
import { generateKeyPair } from "../transport/crypto.ts";
import { KNOWN_NODES_FILE_NAME, KnownNodes } from "../transport/known_nodes.ts";
import { plainNetwork, secureNetwork, tcpDialer } from "../transport/network.ts";
import type { Network } from "../transport/types.ts";

/** Which network a node uses. */
export type Mode = "secure" | "plain";

/** Name of the service every bench node serves. */
export const BENCH_SERVICE = "Bench";

/** Environment variable carrying the hex PSK to a child node (derived once by the bench). */
export const PSK_ENV = "NODECTL_BENCH_PSK";

/**
 * The network of node `name`: Noise over TCP (fresh identity key, known_nodes in `configDir`,
 * default session timers) or plain TCP sessions with the same framing and no crypto.
 */
export function benchNetwork(
  mode: Mode,
  name: string,
  psk: Uint8Array,
  configDir: string,
): Network {
  if (mode === "plain") return plainNetwork(tcpDialer, { localName: name });
  return secureNetwork(tcpDialer, {
    localName: name,
    identity: generateKeyPair(),
    psk,
    knownNodes: KnownNodes.load(join(configDir, KNOWN_NODES_FILE_NAME), { strict: false }),
    log: (line) => console.error(`[${name}] ${line}`),
  });
}

/**
 * `Bench.echo(x)` returns its argument; `Bench.blob(n)` returns `n` bytes (one buffer per size,
 * allocated once, so the reply measures the transport, not the allocator).
 */
export function benchService(): ServiceDefinition {
  const blobs = new Map<number, Uint8Array>();
  return {
    functions: {
      echo: (_ctx, x) => x,
      blob: (_ctx, n) => {
        if (typeof n !== "number" || !Number.isInteger(n) || n < 0 || n > 64 * 1024 * 1024) {
          throw new RangeError("blob(n) needs an integer n from 0 to 64 MiB");
        }
        let b = blobs.get(n);
        if (!b) blobs.set(n, b = new Uint8Array(n).fill(0xa5));
        return b;
      },
    },
  };
}

/** Hex of `bytes`. */
export function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Bytes of `hex`. */
export function fromHex(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}
