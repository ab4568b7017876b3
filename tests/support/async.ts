/**
 * Waiting helpers for tests that never sleep.
 */

/** Resolves after pending I/O callbacks had a chance to run (not a timed wait). */
export function turn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** The first `n` messages of `s` (fewer if it ends first). */
export async function take(s: AsyncIterable<Uint8Array>, n: number): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  if (n === 0) return out;
  for await (const m of s) {
    out.push(m);
    if (out.length === n) break;
  }
  return out;
}
