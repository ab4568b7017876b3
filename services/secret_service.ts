/**
 * SecretService, registered on the private node: `get_data()` / `get_data(key)` read the Secret
 * store; the admin function `set_secret(key, value)` sets or rotates a secret and is callable
 * only in-process ("local") or by allowlisted peers.
 *
 * @module
 */
import { BadArgError, UndefError } from "../errors.ts";
import type { Logger } from "./log.ts";
import { checkKey, DEFAULT_KEY, type SecretStore } from "./secret_store.ts";
import {
  type CallContext,
  callerAllowed,
  describeCaller,
  type ServiceDefinition,
} from "./types.ts";
import { typeName } from "./types.ts";

/** The name SecretService is registered under. */
export const SECRET_SERVICE = "SecretService";

/** Options for {@link secretService}. */
export interface SecretServiceOptions {
  /**
   * Peers (node names or key fingerprints) that may call `set_secret`, besides in-process
   * callers, which always may.
   */
  adminAllow?: string[];
  /** Where to note rotations (key, version and caller; never the value). */
  log?: Logger;
}

/** `get_data` found nothing under the requested key; reaches a remote caller as RemoteError. */
export class NoSuchSecretError extends Error {
  override name = "NoSuchSecretError";
  constructor(readonly key: string) {
    super(`no secret under key '${key}'`);
  }
}

function argCount(fn: string, args: unknown[], min: number, max: number, usage: string): void {
  if (args.length < min || args.length > max) {
    throw new BadArgError(
      `SecretService.${fn} takes ${usage}, got ${args.length} argument${
        args.length === 1 ? "" : "s"
      }`,
    );
  }
}

function stringArg(fn: string, what: string, value: unknown): string {
  if (typeof value !== "string") {
    throw new BadArgError(`SecretService.${fn}: ${what} must be a string, got ${typeName(value)}`);
  }
  return value;
}

/**
 * Builds SecretService over `store`. `get_data()` returns the default secret, `get_data(key)`
 * the one under `key` (NoSuchSecretError if none); `set_secret(key, value)` stores `value` and
 * returns its new version. Wrong argument types or counts throw BadArgError.
 */
export function secretService(
  store: SecretStore,
  options: SecretServiceOptions = {},
): ServiceDefinition {
  const admins = ["local", ...(options.adminAllow ?? [])];
  return {
    functions: {
      get_data(_ctx: CallContext, ...args: unknown[]): string {
        argCount("get_data", args, 0, 1, "no argument or one key");
        const key = args[0] === undefined
          ? DEFAULT_KEY
          : checkKey(stringArg("get_data", "the key", args[0]));
        const value = store.get(key);
        if (value === undefined) throw new NoSuchSecretError(key);
        return value;
      },
      set_secret(ctx: CallContext, ...args: unknown[]): number {
        // The node enforces `allow` before calling; checked again so that no other path to
        // this function (a test, a future registry) can skip it.
        if (!callerAllowed(ctx.caller, admins)) {
          throw new UndefError(
            `SecretService.set_secret is not allowed for ${describeCaller(ctx.caller)}; `
              + "list its node name or key fingerprint in the private node's admin allowlist",
          );
        }
        argCount("set_secret", args, 2, 2, "two arguments (key, value)");
        const key = checkKey(stringArg("set_secret", "the key", args[0]));
        const value = stringArg("set_secret", "the value", args[1]);
        const version = store.set(key, value);
        options.log?.info(
          `secret '${key}' set to version ${version} by ${describeCaller(ctx.caller)}`,
        );
        return version;
      },
    },
    allow: { set_secret: admins },
  };
}
