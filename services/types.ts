/**
 * The shapes services are written against, structurally matching what `node/` registers and
 * calls, so services stay decoupled from the node layer and testable without a network.
 *
 * @module
 */
import type { PeerInfo } from "../transport/types.ts";

/** Who is calling: a peer over an authenticated session, or code in this process. */
export interface CallContext {
  /** The remote peer, or `"local"` for an in-process caller. */
  readonly caller: PeerInfo | "local";
}

/** A function a service exposes; arguments arrive exactly as the caller sent them (unknown). */
export type ServiceFunction = (ctx: CallContext, ...args: unknown[]) => unknown;

/** What a service registers with the node: its functions and an optional per-function allowlist. */
export interface ServiceDefinition {
  /** Callable functions by name. */
  functions: Record<string, ServiceFunction>;
  /**
   * Per-function allowlist of peer node names or key fingerprints; `"local"` admits in-process
   * callers. A function without an entry is open to every authenticated peer.
   */
  allow?: Partial<Record<string, string[]>>;
}

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
