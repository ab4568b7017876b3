/**
 * Assertions for tests, on top of node:assert (JSR's @std/assert is not reachable from here).
 */
import nodeAssert from "node:assert/strict";

/** Asserts that `cond` is truthy. */
export function assert(cond: unknown, message?: string): asserts cond {
  nodeAssert.ok(cond, message);
}

/** Asserts deep strict equality. */
export function assertEquals<T>(actual: unknown, expected: T, message?: string): void {
  nodeAssert.deepStrictEqual(actual, expected, message);
}

/** Asserts deep strict inequality. */
export function assertNotEquals(actual: unknown, expected: unknown, message?: string): void {
  nodeAssert.notDeepStrictEqual(actual, expected, message);
}

/** Asserts that `actual` matches `re`. */
export function assertMatch(actual: string, re: RegExp, message?: string): void {
  nodeAssert.match(actual, re, message);
}

/** Asserts that `fn` throws an error of class `cls` whose message contains `includes`. */
export function assertThrows<E extends Error>(
  fn: () => unknown,
  cls?: new(...args: never[]) => E,
  includes?: string,
): E {
  try {
    fn();
  } catch (err) {
    if (cls) nodeAssert.ok(err instanceof cls, `expected ${cls.name}, got ${String(err)}`);
    if (includes) {
      nodeAssert.ok(
        String((err as Error).message).includes(includes),
        `message "${(err as Error).message}" lacks "${includes}"`,
      );
    }
    return err as E;
  }
  throw new nodeAssert.AssertionError({ message: "expected the function to throw" });
}

/** Asserts that the promise rejects with class `cls` whose message contains `includes`. */
export async function assertRejects<E extends Error>(
  fn: () => Promise<unknown>,
  cls?: new(...args: never[]) => E,
  includes?: string,
): Promise<E> {
  try {
    await fn();
  } catch (err) {
    if (cls) nodeAssert.ok(err instanceof cls, `expected ${cls.name}, got ${String(err)}`);
    if (includes) {
      nodeAssert.ok(
        String((err as Error).message).includes(includes),
        `message "${(err as Error).message}" lacks "${includes}"`,
      );
    }
    return err as E;
  }
  throw new nodeAssert.AssertionError({ message: "expected the promise to reject" });
}
