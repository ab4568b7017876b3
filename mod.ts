/**
 * nodectl — call named services on other machines over an encrypted, mutually authenticated
 * Noise channel (X25519, ChaCha20-Poly1305, BLAKE2s; the cookie is the pre-shared key). This
 * module re-exports the public API.
 *
 * @example
 * ```ts ignore
 * import { Node, secureNetwork, tcpDialer } from "./mod.ts";
 * const node = await Node.start({ name: "public@host", network: secureNetwork(tcpDialer, cfg), listen: false });
 * console.log(await node.call("SecretService", "get_data", [], { node: "private@host" }));
 * ```
 *
 * @module
 */
export * from "./errors.ts";
export { PROTOCOL_VERSION, VERSION } from "./version.ts";

// transport/: keys, cookie, pinning, the Noise handshake and networks
export { DEAD_PEER_TIMEOUT_MS, KEEPALIVE_INTERVAL_MS } from "./transport/constants.ts";
export {
  checkCookieStrength,
  COOKIE_ENV,
  COOKIE_FILE_NAME,
  defaultConfigDir,
  derivePsk,
  ensurePrivateDir,
  estimateCookieBits,
  generateCookie,
  loadCookie,
  type LoadCookieOptions,
  type LoadedCookie,
  MIN_COOKIE_BITS,
  writeFileExclusive,
} from "./transport/cookie.ts";
export { generateKeyPair, type KeyPair, publicKeyFingerprint } from "./transport/crypto.ts";
export {
  HANDSHAKE_TIMEOUT_MS,
  type HandshakeConfig,
  NOISE_PROTOCOL,
} from "./transport/handshake.ts";
export { type Identity, identityPath, loadOrCreateIdentity } from "./transport/identity.ts";
export {
  type CheckResult,
  KNOWN_NODES_FILE_NAME,
  type KnownNode,
  KnownNodes,
  type PinResult,
} from "./transport/known_nodes.ts";
export { memoryDialer } from "./transport/memory_dialer.ts";
export {
  plainNetwork,
  type PlainNetworkOptions,
  secureNetwork,
  tcpDialer,
  type TransportDialer,
} from "./transport/network.ts";
export type { SessionOptions } from "./transport/session.ts";
export type { Clock, TimerHandle } from "./transport/timers.ts";
export type {
  CloseReason,
  Listener,
  Network,
  PeerInfo,
  Session,
  Transport,
} from "./transport/types.ts";

// node/: names, nodes, calls, monitors
export type { BackoffOptions } from "./node/backoff.ts";
export type { MonitorOptions, NodeEvent } from "./node/monitor.ts";
export {
  DEFAULT_PORT,
  formatAddress,
  type NodeName,
  parseNodeName,
  shortHostname,
  shortName,
} from "./node/names.ts";
export * from "./node/node.ts";
export { defaultRunDir } from "./node/run_dir.ts";
export type { CallContext, ServiceDefinition, ServiceFunction } from "./node/services.ts";

// services/: the Secret store, SecretService, PublicService, logging
export {
  createLogger,
  isLogLevel,
  LOG_LEVELS,
  type Logger,
  type LoggerOptions,
  type LogLevel,
} from "./services/log.ts";
export { PrivateAPI } from "./services/private_api.ts";
export {
  DEFAULT_HTTP_HOST,
  DEFAULT_HTTP_PORT,
  type HealthStatus,
  type PublicServiceHandle,
  type PublicServiceOptions,
  startPublicService,
} from "./services/public_service.ts";
export {
  SECRET_SERVICE,
  secretService,
  type SecretServiceOptions,
} from "./services/secret_service.ts";
export { DEFAULT_KEY, type SecretInfo, SecretStore } from "./services/secret_store.ts";
