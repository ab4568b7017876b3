/**
 * What every bench workload shares: the run's cookie and PSK (derived once), a temp directory
 * for config and run dirs, and whether this is a `--quick` run.
 *
 * @module
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { derivePsk } from "../transport/cookie.ts";

/** Loopback only. */
export const HOST = "127.0.0.1";
/** 1 MiB. */
export const MiB = 1024 * 1024;

/** Shared state of one bench run. */
export interface BenchContext {
  /** A strong random cookie (hex), for the compiled binary's NODECTL_COOKIE. */
  readonly cookie: string;
  /** derivePsk(cookie), computed once. */
  readonly psk: Uint8Array;
  /** A smoke run: fewer iterations. */
  readonly quick: boolean;
  /** `full`, or `quick` in a smoke run. */
  q<T>(full: T, quick: T): T;
  /** A fresh private directory under the run's temp dir. */
  freshDir(label: string): string;
  /** Removes the temp dir. */
  dispose(): void;
}

/** A new context: random cookie, its PSK, a temp dir. */
export function createContext(quick: boolean): BenchContext {
  const root = mkdtempSync(join(tmpdir(), "nodectl-bench-"));
  let count = 0;
  const cookie = randomBytes(32).toString("hex");
  return {
    cookie,
    psk: derivePsk(cookie),
    quick,
    q: (full, quickValue) => quick ? quickValue : full,
    freshDir(label) {
      const d = join(root, `${label}-${++count}`);
      mkdirSync(d, { recursive: true, mode: 0o700 });
      return d;
    },
    dispose() {
      rmSync(root, { recursive: true, force: true });
    },
  };
}
