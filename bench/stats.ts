/**
 * Small helpers for `deno task bench`: percentiles, timed loops, unit formatting and aligned
 * tables. No runtime-specific APIs, so the bench can also be bundled for Node.
 *
 * @module
 */

/** The `p`-th percentile (0..100) of `samples` by nearest rank; NaN for no samples. */
export function percentile(samples: readonly number[], p: number): number {
  if (samples.length === 0) return NaN;
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!;
}

/** The median of `samples`. */
export function median(samples: readonly number[]): number {
  return percentile(samples, 50);
}

/**
 * Runs `fn` until `ms` milliseconds have passed and at least `minIterations` ran, but never
 * more than `maxIterations` times. Returns the iteration count and the elapsed seconds.
 */
export function timeLoop(
  fn: (i: number) => void,
  ms: number,
  minIterations = 1,
  maxIterations = 10_000_000,
): { iterations: number; seconds: number } {
  const start = performance.now();
  let i = 0;
  while (i < maxIterations && (i < minIterations || performance.now() - start < ms)) fn(i++);
  return { iterations: i, seconds: (performance.now() - start) / 1000 };
}

/** Async variant of {@link timeLoop}: `fn` runs one call at a time. */
export async function timeLoopAsync(
  fn: (i: number) => Promise<void>,
  ms: number,
  minIterations = 1,
  maxIterations = 10_000_000,
): Promise<{ iterations: number; seconds: number }> {
  const start = performance.now();
  let i = 0;
  while (i < maxIterations && (i < minIterations || performance.now() - start < ms)) {
    await fn(i++);
  }
  return { iterations: i, seconds: (performance.now() - start) / 1000 };
}

/** Megabytes (10^6 bytes) per second. */
export function mbps(bytes: number, seconds: number): number {
  return bytes / seconds / 1e6;
}

/** A number with thousands separators and `digits` decimals. */
export function num(n: number, digits = 0): string {
  if (!Number.isFinite(n)) return "n/a";
  return n.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

/** A duration given in microseconds, printed in µs or ms, whichever reads better. */
export function dur(us: number): string {
  if (!Number.isFinite(us)) return "n/a";
  if (us < 1000) return `${num(us, us < 10 ? 1 : 0)} µs`;
  return `${num(us / 1000, us < 10_000 ? 2 : 1)} ms`;
}

/** A ratio like "1.23x". */
export function ratio(a: number, b: number): string {
  if (!Number.isFinite(a) || !Number.isFinite(b) || b === 0) return "n/a";
  return `${(a / b).toFixed(2)}x`;
}

/** A percentage of `limit`. */
export function pct(value: number, limit: number): string {
  if (!Number.isFinite(value) || !Number.isFinite(limit) || limit === 0) return "n/a";
  return `${((value / limit) * 100).toFixed(0)} %`;
}

/** Mark for a goal: met, missed, or not measured. */
export function met(ok: boolean | undefined): string {
  return ok === undefined ? "-" : ok ? "yes" : "NO";
}

/**
 * Aligned text table: the first column is left-aligned, the others right-aligned. Rows that are
 * a single string are printed as they are (sub-headings, notes).
 */
export function table(header: string[], rows: (string[] | string)[]): string {
  const cells = [header, ...rows.filter((r): r is string[] => Array.isArray(r))];
  const widths = header.map((_, c) => Math.max(...cells.map((r) => [...(r[c] ?? "")].length)));
  const pad = (s: string, w: number, left: boolean) => {
    const fill = " ".repeat(Math.max(0, w - [...s].length));
    return left ? s + fill : fill + s;
  };
  const line = (r: string[]) =>
    r.map((cell, c) => pad(cell, widths[c]!, c === 0)).join("  ").trimEnd();
  const rule = widths.map((w) => "-".repeat(w)).join("  ");
  const out = [line(header), rule];
  for (const r of rows) out.push(Array.isArray(r) ? line(r) : r);
  return out.join("\n");
}
