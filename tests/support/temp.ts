/**
 * Temporary directories and file modes for tests that write files.
 */
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** A fresh temporary directory whose name starts with `prefix`; the caller removes it. */
export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Wraps a test body that takes a directory. */
export type WithTempDir = (fn: (dir: string) => void | Promise<void>) => () => Promise<void>;

/**
 * A wrapper that turns `fn` into a test body run with a fresh temporary directory (named with
 * `prefix`), removed afterwards.
 */
export function tempDirWrapper(prefix: string): WithTempDir {
  return (fn) => async () => {
    const dir = tempDir(prefix);
    try {
      await fn(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

/** The permission bits of `path` (`0o600`, `0o700`, ...). */
export function fileMode(path: string): number {
  return statSync(path).mode & 0o777;
}
