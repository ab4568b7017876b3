/**
 * A tiny line logger in the seed's format: `17:07:59.889 [info]  SecretService started` (local
 * time, HH:MM:SS.mmm, the level in brackets padded to line up). Writes to stderr by default.
 * Callers must never pass a secret value in a message; the logger keeps each entry on one line.
 *
 * @module
 */
import process from "node:process";

/** Levels from most to least verbose; `"silent"` logs nothing. */
export const LOG_LEVELS = ["debug", "info", "warn", "error", "silent"] as const;

/** A log level name. */
export type LogLevel = typeof LOG_LEVELS[number];

/** The four logging functions; each writes one line when its level is enabled. */
export interface Logger {
  /** Fine detail for troubleshooting. */
  debug(message: string): void;
  /** Normal lifecycle events ("SecretService started"). */
  info(message: string): void;
  /** Something failed but the process carries on (a failed request, a lost peer). */
  warn(message: string): void;
  /** Something failed that needs attention. */
  error(message: string): void;
}

/** Options for {@link createLogger}. */
export interface LoggerOptions {
  /** Lowest level written (default `"info"`). */
  level?: LogLevel;
  /** Receives each formatted line, without a trailing newline (default: stderr). */
  write?: (line: string) => void;
  /** Clock for the timestamp (default: `new Date()`); for tests. */
  now?: () => Date;
}

/** True when `value` names a log level; for parsing a `--log-level` flag. */
export function isLogLevel(value: string): value is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(value);
}

const pad = (n: number, width: number) => String(n).padStart(width, "0");

/** Formats `date` as local `HH:MM:SS.mmm`. */
export function formatTime(date: Date): string {
  return `${pad(date.getHours(), 2)}:${pad(date.getMinutes(), 2)}:${pad(date.getSeconds(), 2)}.${
    pad(date.getMilliseconds(), 3)
  }`;
}

// Control characters (newlines included) are escaped so one call is always exactly one line.
// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/g;

function oneLine(message: string): string {
  return message.replace(
    CONTROL,
    (c) => c === "\n" ? "\\n" : `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`,
  );
}

/** Creates a logger writing lines like `17:07:59.889 [info]  message` at or above `level`. */
export function createLogger(options: LoggerOptions = {}): Logger {
  const threshold = LOG_LEVELS.indexOf(options.level ?? "info");
  const write = options.write ?? ((line: string) => void process.stderr.write(line + "\n"));
  const now = options.now ?? (() => new Date());
  const at = (level: Exclude<LogLevel, "silent">) => (message: string) => {
    if (LOG_LEVELS.indexOf(level) < threshold) return;
    write(`${formatTime(now())} [${level}]${" ".repeat(6 - level.length)}${oneLine(message)}`);
  };
  return { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}
