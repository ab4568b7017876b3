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
  /** The stable code that crosses the wire. */
  abstract readonly code: ErrorCode;
  /** The process exit code the CLI uses for this error. */
  get exitCode(): number {
    return EXIT_CODES[this.code];
  }
}

/** No service registered under that name on that node. */
export class NoProcError extends NodectlError {
  /** The stable code that crosses the wire. */
  readonly code = "noproc";
  /** The class name, as shown in logs. */
  override name = "NoProcError";
  /** Creates the error; `message` is one actionable line. */
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
  /** The stable code that crosses the wire. */
  readonly code = "undef";
  /** The class name, as shown in logs. */
  override name = "UndefError";
}

/** The node is unreachable, or the connection was lost mid-call. */
export class NodeDownError extends NodectlError {
  /** The stable code that crosses the wire. */
  readonly code = "nodedown";
  /** The class name, as shown in logs. */
  override name = "NodeDownError";
  /** Creates the error; `message` is one actionable line. */
  constructor(message: string, readonly node?: string) {
    super(message);
  }
}

/** The deadline passed. */
export class TimeoutError extends NodectlError {
  /** The stable code that crosses the wire. */
  readonly code = "timeout";
  /** The class name, as shown in logs. */
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
  /** The stable code that crosses the wire. */
  readonly code = "auth_failed";
  /** The class name, as shown in logs. */
  override name = "AuthFailedError";
  /** Creates the error; `message` is one actionable line. */
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
  /** The stable code that crosses the wire. */
  readonly code = "remote_error";
  /** The class name, as shown in logs. */
  override name = "RemoteError";
  /** Creates the error; `message` is one actionable line. */
  constructor(message: string, readonly remoteStack?: string) {
    super(message);
  }
}

/** A message exceeded the configured maximum size. */
export class PayloadTooLargeError extends NodectlError {
  /** The stable code that crosses the wire. */
  readonly code = "payload_too_large";
  /** The class name, as shown in logs. */
  override name = "PayloadTooLargeError";
}

/** Arguments (or a reply) could not be encoded or decoded. */
export class BadArgError extends NodectlError {
  /** The stable code that crosses the wire. */
  readonly code = "badarg";
  /** The class name, as shown in logs. */
  override name = "BadArgError";
}

/** Bad configuration: a malformed name, a weak cookie, an unreadable key file. */
export class ConfigError extends NodectlError {
  /** The stable code that crosses the wire. */
  readonly code = "config";
  /** The class name, as shown in logs. */
  override name = "ConfigError";
}

/** The peer broke the protocol: malformed frame, wrong version. */
export class ProtocolError extends NodectlError {
  /** The stable code that crosses the wire. */
  readonly code = "protocol";
  /** The class name, as shown in logs. */
  override name = "ProtocolError";
}
