/**
 * The shapes services are written against. The service types are `node/`'s own, imported as
 * types only, so services carry no runtime dependency on the node layer and stay testable
 * without a network.
 *
 * @module
 */
import type { PeerInfo } from "../transport/types.ts";

export type { CallContext, ServiceDefinition, ServiceFunction } from "../node/services.ts";

/** Calls `fn` of `service` on a node fixed by whoever built the caller (e.g. `node.call`). */
export type Caller = (service: string, fn: string, args: unknown[]) => Promise<unknown>;

/**
 * True when `caller` matches an entry of `allowed`: `"local"` for in-process callers, otherwise
 * the peer's node name or its (non-empty) key fingerprint.
 */
export function callerAllowed(caller: PeerInfo | "local", allowed: readonly string[]): boolean {
  if (caller === "local") return allowed.includes("local");
  return allowed.some((entry) =>
    entry !== "local" && (entry === caller.name
      || (caller.fingerprint !== "" && entry === caller.fingerprint))
  );
}

/** Printable name of a caller for messages and logs ("local" or "name (fingerprint)"). */
export function describeCaller(caller: PeerInfo | "local"): string {
  if (caller === "local") return "local";
  return caller.fingerprint === "" ? caller.name : `${caller.name} (${caller.fingerprint})`;
}

/** A short type name for messages about a wrong argument or reply (never the value itself). */
export function typeName(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (value instanceof Uint8Array) return "bytes";
  const t = typeof value;
  if (t === "undefined") return "nothing";
  if (t === "object") return "an object";
  return `a ${t}`;
}
