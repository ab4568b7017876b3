/**
 * Reconnect delays: exponential backoff with jitter.
 *
 * @module
 */

/** Reconnect timing: the first delay and the cap. */
export interface BackoffOptions {
  /** Delay before the first reconnect attempt, in ms. */
  initialMs: number;
  /** Largest delay between attempts, in ms. */
  maxMs: number;
}

/** Default reconnect timing: 100 ms, doubling up to 10 s. */
export const DEFAULT_BACKOFF: Readonly<BackoffOptions> = { initialMs: 100, maxMs: 10_000 };

/**
 * The delay before reconnect attempt number `attempt` (0 first): `initialMs · 2^attempt`, capped
 * at `maxMs`, then jittered to between half and all of that ("equal jitter"), so peers that lost
 * each other at the same moment do not retry in lockstep.
 *
 * @example
 * ```ts
 * backoffDelay(3, { initialMs: 100, maxMs: 10_000 }); // between 400 and 800
 * ```
 */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions,
  random: () => number = Math.random,
): number {
  const base = Math.min(options.maxMs, options.initialMs * 2 ** Math.min(attempt, 52));
  return base / 2 + random() * (base / 2);
}
