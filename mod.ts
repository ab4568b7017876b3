/**
 * nodectl — call named services on other machines over an encrypted, mutually authenticated
 * Noise channel. This module re-exports the public API.
 *
 * @module
 */
export { PROTOCOL_VERSION, VERSION } from "./version.ts";
