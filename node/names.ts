/**
 * Node names, the way Erlang spells them: `name@host` (a long name: DNS name or IP literal),
 * `name@host:port`, `name@[::1]:port` for IPv6 with a port, and short names (`private` →
 * `private@<short hostname>`). The port is a routing hint, not part of the node's identity:
 * `private@host:4371` and `private@host` name the same node.
 *
 * There is no epmd: nothing answers name queries over the network. A name without a port is
 * found on {@link DEFAULT_PORT}, except for nodes on this host, which are looked up in the run
 * directory (see `run_dir.ts`).
 *
 * @module
 */
import { isIP } from "node:net";
import { hostname } from "node:os";
import { ConfigError } from "../errors.ts";

/**
 * The port a node listens on, and callers connect to, when its name carries no port and it is
 * not on the caller's host. 4370 is one above Erlang's epmd (4369): close enough to remember,
 * but not epmd's, so nodectl never collides with, or is mistaken for, a running epmd.
 */
export const DEFAULT_PORT = 4370;

/** A parsed, validated node name. */
export interface NodeName {
  /** The node's identity, `alive@host` (IPv6 hosts in brackets: `alive@[::1]`); no port. */
  readonly name: string;
  /** The part before `@` ("private"). */
  readonly alive: string;
  /** The host part without brackets ("host.example", "10.0.0.1", "::1"). */
  readonly host: string;
  /** The port given in the name, if any. */
  readonly port?: number;
}

const ALIVE = /^[A-Za-z0-9_-]{1,64}$/;
const LABEL = /^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$/;
const FORMS = "use name@host, name@host:port, name@[ipv6]:port or a short name";

function invalid(text: string, why: string): ConfigError {
  return new ConfigError(`invalid node name '${text}': ${why}`);
}

/** This machine's host name up to the first dot ("vm" for "vm.example.com"). */
export function shortHostname(): string {
  return hostname().split(".")[0] || "localhost";
}

/** `alive@<short hostname>`: the node name Erlang's `--sname alive` gives. */
export function shortName(alive: string): string {
  if (!ALIVE.test(alive)) {
    throw invalid(alive, "the name part may use only letters, digits, '_' and '-' (1-64 chars)");
  }
  return `${alive}@${shortHostname()}`;
}

function parsePort(text: string, port: string): number {
  if (!/^[0-9]{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535) {
    throw invalid(text, `port '${port}' is not a number from 1 to 65535`);
  }
  return Number(port);
}

function checkHost(text: string, host: string): void {
  if (host.length > 253) throw invalid(text, "the host is longer than 253 characters");
  if (/^[0-9.]+$/.test(host)) {
    if (isIP(host) !== 4) throw invalid(text, `'${host}' is not a valid IPv4 address`);
    return;
  }
  const labels = host.endsWith(".") ? host.slice(0, -1).split(".") : host.split(".");
  for (const label of labels) {
    if (!LABEL.test(label)) {
      throw invalid(
        text,
        `'${host}' is not a DNS name or IP address (labels are letters, digits and '-')`,
      );
    }
  }
}

/** Names parsed lately (valid ones that carry a host), frozen; cleared when it gets full. */
const parsed = new Map<string, NodeName>();
const PARSED_MAX = 1024;

/**
 * Parses and validates a node name. A bare `alive` is a short name on this host.
 *
 * The result is frozen, and the same object for the same text while it is remembered: a node
 * calls the same few names over and over.
 *
 * @example
 * ```ts
 * parseNodeName("private@[::1]:4371"); // { name: "private@[::1]", alive: "private", host: "::1", port: 4371 }
 * ```
 * @throws ConfigError with a one-line message saying what is wrong.
 */
export function parseNodeName(text: string): NodeName {
  let name = parsed.get(text);
  if (name !== undefined) return name;
  name = Object.freeze(parse(text));
  // A short name depends on the host name, which may change: only names with a host are kept.
  if (text.includes("@")) {
    if (parsed.size >= PARSED_MAX) parsed.clear();
    parsed.set(text, name);
  }
  return name;
}

function parse(text: string): NodeName {
  if (text.length === 0) throw invalid(text, `the name is empty; ${FORMS}`);
  if (/\s/.test(text)) throw invalid(text, `the name contains whitespace; ${FORMS}`);
  const at = text.indexOf("@");
  const alive = at < 0 ? text : text.slice(0, at);
  if (!ALIVE.test(alive)) {
    throw invalid(
      text,
      alive === ""
        ? `the name part before '@' is empty; ${FORMS}`
        : "the name part may use only letters, digits, '_' and '-' (1-64 chars)",
    );
  }
  if (at < 0) return { name: `${alive}@${shortHostname()}`, alive, host: shortHostname() };
  let rest = text.slice(at + 1);
  if (rest === "") throw invalid(text, `nothing after '@'; ${FORMS}`);
  if (rest.includes("@")) throw invalid(text, "more than one '@'");
  let host: string;
  let port: number | undefined;
  if (rest.startsWith("[")) {
    const close = rest.indexOf("]");
    if (close < 0) throw invalid(text, "'[' without a closing ']'");
    host = rest.slice(1, close);
    rest = rest.slice(close + 1);
    if (isIP(host) !== 6) throw invalid(text, `'${host}' in brackets is not an IPv6 address`);
    if (rest !== "") {
      if (!rest.startsWith(":")) throw invalid(text, `unexpected '${rest}' after ']'`);
      port = parsePort(text, rest.slice(1));
    }
  } else if (rest.indexOf(":") !== rest.lastIndexOf(":")) {
    // Several colons and no brackets: a bare IPv6 address, which cannot carry a port.
    host = rest;
    if (isIP(host) !== 6) {
      throw invalid(text, `'${host}' is not an IPv6 address; write name@[ipv6]:port`);
    }
  } else {
    const colon = rest.indexOf(":");
    host = colon < 0 ? rest : rest.slice(0, colon);
    if (host === "") throw invalid(text, `the host is empty; ${FORMS}`);
    if (colon >= 0) port = parsePort(text, rest.slice(colon + 1));
    checkHost(text, host);
  }
  const name = isIP(host) === 6 ? `${alive}@[${host}]` : `${alive}@${host}`;
  return port === undefined ? { name, alive, host } : { name, alive, host, port };
}

/** Writes a node name back with its port: `alive@host:port` or `alive@[v6]:port`. */
export function formatNodeName(node: NodeName): string {
  return node.port === undefined ? node.name : `${node.name}:${node.port}`;
}

/** Writes `host:port`, bracketing IPv6 hosts: `[::1]:4370`. */
export function formatAddress(address: { host: string; port: number }): string {
  return isIP(address.host) === 6
    ? `[${address.host}]:${address.port}`
    : `${address.host}:${address.port}`;
}

/**
 * Whether `host` is this machine: its host name (full or short), `localhost`, `127.x.x.x` or
 * `::1`. Names on such hosts are resolved through the run directory.
 */
export function isLocalHost(host: string): boolean {
  const h = host.toLowerCase().replace(/\.$/, "");
  if (h === "localhost" || h === "::1" || h === "0:0:0:0:0:0:0:1") return true;
  if (isIP(h) === 4) return h.startsWith("127.");
  const full = hostname().toLowerCase();
  return h === full || h === shortHostname().toLowerCase();
}
