/**
 * PublicService, the public node's HTTP front: `GET /data` answers with the secret fetched from
 * the private node through {@link PrivateAPI}, `GET /healthz` says whether the private node is
 * reachable. Failures are one-line JSON naming the error code and reason, never a stack.
 *
 * @module
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { ConfigError, NodectlError, TimeoutError } from "../errors.ts";
import type { Logger } from "./log.ts";
import type { PrivateAPI } from "./private_api.ts";

/** Default HTTP listen address: loopback only. */
export const DEFAULT_HTTP_HOST = "127.0.0.1";
/** Default HTTP port. */
export const DEFAULT_HTTP_PORT = 8080;
/** How long `/healthz` waits for `checkHealth` before answering 503 (ms). */
export const DEFAULT_HEALTH_TIMEOUT_MS = 5000;

/** What a health check reports about the private node. */
export type HealthStatus = { ok: true } | { ok: false; reason: string };

/** Options for {@link startPublicService}. */
export interface PublicServiceOptions {
  /** Listen address; defaults to 127.0.0.1:8080. Port 0 picks a free port. */
  http?: { host?: string; port?: number };
  /** The client used for `GET /data`. */
  api: Pick<PrivateAPI, "getData">;
  /** Name of the private node, for messages and error bodies. */
  privateNode: string;
  /** Whether the private node is reachable now. */
  checkHealth: () => Promise<HealthStatus>;
  /** Receives one line per start, stop and failed request (never a secret). */
  log: Logger;
  /** Deadline for `checkHealth` (default {@link DEFAULT_HEALTH_TIMEOUT_MS}). */
  healthTimeoutMs?: number;
}

/** A running PublicService. */
export interface PublicServiceHandle {
  /** The bound host. */
  readonly host: string;
  /** The bound port (the real one when 0 was asked for). */
  readonly port: number;
  /** Stops listening and drops open connections; idempotent. */
  close(): Promise<void>;
}

const MAX_REASON = 300;

/** First line of a message, bounded, for an HTTP body or a log line. */
function reasonOf(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  const line = (message.split(/\r?\n/, 1)[0] ?? "").trim() || "unknown error";
  return line.length > MAX_REASON ? line.slice(0, MAX_REASON) + "…" : line;
}

/** HTTP status and code for a failure of the call to the private node. */
function classify(err: unknown): { status: number; code: string } {
  if (err instanceof TimeoutError) return { status: 504, code: err.code };
  if (err instanceof NodectlError) return { status: 502, code: err.code };
  return { status: 502, code: "internal" };
}

function send(
  res: ServerResponse,
  status: number,
  body: string,
  type: "text/plain" | "application/json",
  extra: Record<string, string> = {},
): void {
  res.writeHead(status, {
    "content-type": `${type}; charset=utf-8`,
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    ...extra,
  });
  res.end(body);
}

function sendError(
  res: ServerResponse,
  status: number,
  code: string,
  message: string,
  node?: string,
): void {
  const body = node === undefined ? { error: code, message } : { error: code, message, node };
  send(res, status, JSON.stringify(body), "application/json");
}

function withDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`${what} took longer than ${ms} ms`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/**
 * Starts PublicService on `http` (default 127.0.0.1:8080). Routes: `GET /data[?key=K]` → 200
 * text/plain secret, 502 (504 on timeout) JSON `{"error":code,"message":reason,"node":name}`;
 * `GET /healthz` → 200 `ok` or 503 with the reason; other paths 404, other methods 405.
 * Rejects with ConfigError when the address cannot be bound.
 */
export function startPublicService(options: PublicServiceOptions): Promise<PublicServiceHandle> {
  const host = options.http?.host ?? DEFAULT_HTTP_HOST;
  const port = options.http?.port ?? DEFAULT_HTTP_PORT;
  const { api, privateNode, log } = options;
  const healthTimeoutMs = options.healthTimeoutMs ?? DEFAULT_HEALTH_TIMEOUT_MS;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    return Promise.reject(
      new ConfigError(`HTTP port ${port} is not valid; use an integer from 0 to 65535`),
    );
  }

  const getData = async (url: URL, res: ServerResponse) => {
    const keys = url.searchParams.getAll("key");
    if (keys.length > 1 || keys[0] === "") {
      sendError(res, 400, "badarg", "give at most one non-empty key, as ?key=NAME");
      return;
    }
    try {
      const secret = await api.getData(keys[0]);
      send(res, 200, secret, "text/plain");
    } catch (err) {
      const { status, code } = classify(err);
      const reason = reasonOf(err);
      log.warn(`GET /data failed: ${code} from ${privateNode}: ${reason}`);
      sendError(res, status, code, reason, privateNode);
    }
  };

  const healthz = async (res: ServerResponse) => {
    let status: HealthStatus;
    try {
      status = await withDeadline(options.checkHealth(), healthTimeoutMs, "the health check");
    } catch (err) {
      status = { ok: false, reason: reasonOf(err) };
    }
    if (status.ok) {
      send(res, 200, "ok", "text/plain");
    } else {
      const reason = reasonOf(status.reason);
      log.warn(`GET /healthz: ${privateNode} unavailable: ${reason}`);
      send(res, 503, `${privateNode} unavailable: ${reason}`, "text/plain");
    }
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    let url: URL;
    try {
      url = new URL(req.url ?? "/", "http://localhost");
    } catch {
      sendError(res, 400, "badarg", "malformed request target");
      return;
    }
    const route = url.pathname === "/data" ? "data" : url.pathname === "/healthz" ? "healthz" : "";
    if (route === "") {
      sendError(res, 404, "not_found", "no such path; try GET /data or GET /healthz");
      return;
    }
    if (req.method !== "GET") {
      send(
        res,
        405,
        JSON.stringify({ error: "method_not_allowed", message: `use GET ${url.pathname}` }),
        "application/json",
        { allow: "GET" },
      );
      return;
    }
    if (route === "data") await getData(url, res);
    else await healthz(res);
    log.debug(`${req.method} ${url.pathname} ${res.statusCode}`);
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((err) => {
      log.error(`PublicService request failed: ${reasonOf(err)}`);
      if (!res.headersSent) sendError(res, 500, "internal", "internal error");
      else res.destroy();
    });
  });

  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      const hint = err.code === "EADDRINUSE"
        ? "the address is in use; stop the other process or choose another port"
        : err.code === "EACCES"
        ? "permission denied; use a port above 1023"
        : err.code === "EADDRNOTAVAIL"
        ? "no such local address; use an address of this machine"
        : "check the host and port";
      reject(new ConfigError(`cannot listen for HTTP on ${host}:${port} (${err.code}); ${hint}`));
    };
    server.once("error", onError);
    server.listen({ host, port }, () => {
      server.off("error", onError);
      server.on("error", (err) => log.error(`PublicService: ${reasonOf(err)}`));
      const bound = (server.address() as AddressInfo).port;
      const shown = host.includes(":") ? `[${host}]` : host;
      log.info(`PublicService listening on http://${shown}:${bound} (private node ${privateNode})`);
      let closing: Promise<void> | undefined;
      resolve({
        host,
        port: bound,
        close: () => {
          closing ??= new Promise<void>((done) => {
            server.close(() => done());
            server.closeAllConnections();
          }).then(() => log.info("PublicService stopped"));
          return closing;
        },
      });
    });
  });
}
