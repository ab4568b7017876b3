/** nodectl's release version. */
export const VERSION = "0.1.0";

/**
 * The wire protocol version. Two nodes speak only when their protocol versions are equal; it is
 * bound into the Noise prologue and sent in clear in the first handshake message so a mismatch
 * is reported as such instead of as a bad cookie.
 */
export const PROTOCOL_VERSION = 1;
