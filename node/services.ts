/**
 * Registered services: named sets of declared functions, the only code a peer can run (there
 * is no eval). Like Erlang's locally registered names, a service is found only on the node that
 * registered it.
 *
 * Allowlists: `allow[fn]` lists the peer node names and key fingerprints that may call `fn`
 * ("local" admits in-process callers). A function without an entry is open to every
 * authenticated peer and to local callers. A refused caller gets `UndefError` saying it is not
 * in the allowlist: peers are already authenticated by the cookie, so a clear refusal helps more
 * than it reveals, and it keeps the error codes as they are.
 *
 * @module
 */
import { ConfigError, NodectlError, NoProcError, RemoteError, UndefError } from "../errors.ts";
import type { PeerInfo } from "../transport/types.ts";

/** Who is calling: an authenticated peer, or code in this process. */
export interface CallContext {
  /** The peer as authenticated by the handshake, or "local" for an in-process call. */
  readonly caller: PeerInfo | "local";
}

/** A callable function of a service. Arguments come off the wire: validate them. */
export type ServiceFunction = (ctx: CallContext, ...args: unknown[]) => unknown;

/** A service: its functions, and optional per-function allowlists. */
export interface ServiceDefinition {
  /** The declared functions; nothing else on the service is callable. */
  functions: Record<string, ServiceFunction>;
  /**
   * Per-function allowlist of peer names or key fingerprints; "local" admits in-process callers.
   * A function without an entry is open to every authenticated peer.
   */
  allow?: Partial<Record<string, string[]>>;
}

const SERVICE_NAME = /^[A-Za-z_][A-Za-z0-9_.-]{0,127}$/;

function list(names: string[]): string {
  return names.length === 0 ? "none" : names.join(", ");
}

function callerName(caller: PeerInfo | "local"): string {
  return caller === "local" ? "local callers" : caller.name;
}

/** The services of one node. */
export class ServiceRegistry {
  #services = new Map<string, ServiceDefinition>();

  /** An empty registry for the node named `nodeName` (used in messages). */
  constructor(private readonly nodeName: string) {}

  /**
   * Registers `service` under `name`.
   *
   * @throws ConfigError for a malformed or taken name, or a non-function entry.
   */
  register(name: string, service: ServiceDefinition): void {
    if (!SERVICE_NAME.test(name)) {
      throw new ConfigError(
        `invalid service name '${name}': use letters, digits, '_', '.' and '-' (e.g. SecretService)`,
      );
    }
    if (this.#services.has(name)) {
      throw new ConfigError(
        `service ${name} is already registered on ${this.nodeName}; unregister it first`,
      );
    }
    for (const [fn, f] of Object.entries(service.functions)) {
      if (typeof f !== "function") {
        throw new ConfigError(`${name}.${fn} is not a function; functions holds only functions`);
      }
    }
    for (const fn of Object.keys(service.allow ?? {})) {
      if (!Object.hasOwn(service.functions, fn)) {
        throw new ConfigError(`${name}: allow names '${fn}', which is not one of its functions`);
      }
    }
    this.#services.set(name, {
      functions: { ...service.functions },
      ...(service.allow ? { allow: { ...service.allow } } : {}),
    });
  }

  /** Removes a service; returns whether it was registered. */
  unregister(name: string): boolean {
    return this.#services.delete(name);
  }

  /** Registered service names, sorted. */
  names(): string[] {
    return [...this.#services.keys()].sort();
  }

  #allowed(service: ServiceDefinition, fn: string, caller: PeerInfo | "local"): boolean {
    const allow = service.allow?.[fn];
    if (allow === undefined) return true;
    if (caller === "local") return allow.includes("local");
    // "local" names in-process callers only: a peer never matches it, whatever it calls itself.
    return allow.some((entry) =>
      entry !== "local"
      && (entry === caller.name || (caller.fingerprint !== "" && entry === caller.fingerprint))
    );
  }

  #callable(service: ServiceDefinition, caller: PeerInfo | "local"): string[] {
    return Object.keys(service.functions).filter((fn) => this.#allowed(service, fn, caller))
      .sort();
  }

  /** Names of the services `caller` may call at least one function of. */
  visibleTo(caller: PeerInfo | "local"): string[] {
    return this.names().filter((n) => this.#callable(this.#services.get(n)!, caller).length > 0);
  }

  /**
   * Runs `service.fn(ctx, ...args)` for `caller`.
   *
   * @throws NoProcError (no such service), UndefError (no such function, or not allowed),
   *   RemoteError (the function threw; NodectlErrors it throws pass through unchanged).
   */
  async invoke(
    serviceName: string,
    fn: string,
    args: unknown[],
    caller: PeerInfo | "local",
  ): Promise<unknown> {
    return await this.run(serviceName, fn, args, caller);
  }

  /**
   * Like {@link invoke}, but returns what the function returned as it is: a plain value at
   * once, a promise (rejecting as `invoke` would) for an async function. Synchronous failures
   * throw.
   */
  run(serviceName: string, fn: string, args: unknown[], caller: PeerInfo | "local"): unknown {
    const service = this.#services.get(serviceName);
    if (!service) {
      const available = this.visibleTo(caller);
      throw new NoProcError(
        `no service ${serviceName} on ${this.nodeName} (it has: ${list(available)})`
          + (caller === "local" ? "; to call another node's service, pass { node }" : ""),
        this.nodeName,
        serviceName,
        available,
      );
    }
    const f = Object.hasOwn(service.functions, fn) ? service.functions[fn] : undefined;
    if (typeof f !== "function") {
      throw new UndefError(
        `${serviceName} on ${this.nodeName} has no function '${fn}' `
          + `(it has: ${list(this.#callable(service, caller))})`,
      );
    }
    if (!this.#allowed(service, fn, caller)) {
      throw new UndefError(
        `${serviceName}.${fn} on ${this.nodeName} refuses ${callerName(caller)}: `
          + "not in its allowlist",
      );
    }
    let result: unknown;
    try {
      result = f({ caller }, ...args);
    } catch (err) {
      throw this.#failure(serviceName, fn, err);
    }
    if (
      (typeof result === "object" || typeof result === "function") && result !== null
      && typeof (result as { then?: unknown }).then === "function"
    ) {
      return Promise.resolve(result).then(undefined, (err) => {
        throw this.#failure(serviceName, fn, err);
      });
    }
    return result;
  }

  #failure(serviceName: string, fn: string, err: unknown): NodectlError {
    if (err instanceof NodectlError) return err;
    const e = err instanceof Error ? err : new Error(String(err));
    const remote = new RemoteError(
      `${serviceName}.${fn} on ${this.nodeName} threw ${e.name}: ${e.message}`,
      ...(e.stack !== undefined ? [e.stack] : []),
    );
    remote.cause = err;
    return remote;
  }
}
