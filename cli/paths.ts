/**
 * Default locations, XDG-style: data under $XDG_DATA_HOME/nodectl/<node> (else
 * ~/.local/share/nodectl/<node>).
 *
 * @module
 */
import { homedir } from "node:os";
import { isAbsolute, join } from "node:path";
import { ConfigError } from "../mod.ts";

/** The default data directory of node `alive`. */
export function defaultDataDir(env: Record<string, string | undefined>, alive: string): string {
  const xdg = env.XDG_DATA_HOME;
  if (xdg !== undefined && isAbsolute(xdg)) return join(xdg, "nodectl", alive);
  const home = env.HOME || homedir();
  if (!home) {
    throw new ConfigError("cannot find the data directory: set HOME, XDG_DATA_HOME or --data-dir");
  }
  return join(home, ".local", "share", "nodectl", alive);
}
