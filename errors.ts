/**
 * Errors a user can act on, one class per condition. Each has a stable `code` that crosses the
 * wire (a remote failure arrives as the same class) and maps to a CLI exit code.
 *
 * @module
 */

/** Stable error codes; they cross the wire and never change meaning. */
export type ErrorCode =
  | "noproc"
  | "undef"
  | "nodedown"
  | "timeout"
  | "auth_failed"
  | "remote_error"
  | "payload_too_large"
  | "badarg"
  | "config"
  | "protocol";

/** CLI exit code for each error code (0 success, 1 other failure, 2 usage error). */
export const EXIT_CODES: Readonly<Record<ErrorCode, number>> = {
  noproc: 3,
  undef: 4,
  nodedown: 5,
  timeout: 6,
  auth_failed: 7,
  remote_error: 8,
  payload_too_large: 9,
  badarg: 10,
  config: 11,
  protocol: 12,
};

/** Base class: a one-line, actionable message and a stable code. */
export abstract class NodectlError extends Error {
  abstract readonly code: ErrorCode;
  /** The process exit code the CLI uses for this error. */
  get exitCode(): number {
    return EXIT_CODES[this.code];
  }
}

/** No service registered under that name on that node. */
export class NoProcError extends NodectlError {
  readonly code = "noproc";
  override name = "NoProcError";
  constructor(
    message: string,
    readonly node: string,
    readonly service: string,
    readonly available: string[] = [],
  ) {
    super(message);
  }
}

/** The service exists but does not declare that function (or the caller is not allowed). */
export class UndefError extends NodectlError {
  readonly code = "undef";
  override name = "UndefError";
}

/** The node is unreachable, or the connection was lost mid-call. */
export class NodeDownError extends NodectlError {
  readonly code = "nodedown";
  override name = "NodeDownError";
  constructor(message: string, readonly node?: string) {
    super(message);
  }
}

/** The deadline passed. */
export class TimeoutError extends NodectlError {
  readonly code = "timeout";
  override name = "TimeoutError";
}

/** Which check refused a handshake. */
export type AuthFailure =
  | "cookie_mismatch"
  | "key_changed"
  | "key_not_listed"
  | "refused_by_peer"
  | "name_mismatch";

/** The handshake failed: wrong cookie, changed or unlisted key. Says which side refused. */
export class AuthFailedError extends NodectlError {
  readonly code = "auth_failed";
  override name = "AuthFailedError";
  constructor(
    message: string,
    readonly reason: AuthFailure,
    readonly refusedBy: "local" | "remote",
  ) {
    super(message);
  }
}

/** The remote function threw; carries its message and remote stack. */
export class RemoteError extends NodectlError {
  readonly code = "remote_error";
  override name = "RemoteError";
  constructor(message: string, readonly remoteStack?: string) {
    super(message);
  }
}

/** A message exceeded the configured maximum size. */
export class PayloadTooLargeError extends NodectlError {
  readonly code = "payload_too_large";
  override name = "PayloadTooLargeError";
}

/** Arguments (or a reply) could not be encoded or decoded. */
export class BadArgError extends NodectlError {
  readonly code = "badarg";
  override name = "BadArgError";
}

/** Bad configuration: a malformed name, a weak cookie, an unreadable key file. */
export class ConfigError extends NodectlError {
  readonly code = "config";
  override name = "ConfigError";
}

/** The peer broke the protocol: malformed frame, wrong version. */
export class ProtocolError extends NodectlError {
  readonly code = "protocol";
  override name = "ProtocolError";
}
