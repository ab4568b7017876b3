/**
 * Internal errors of the Noise layer (`crypto.ts`, `noise_state.ts`). They never reach a user as
 * they are: the node layer maps them to the classes in `errors.ts` (a failed handshake becomes
 * an `AuthFailedError`, a failed transport decrypt a `ProtocolError`, and so on).
 *
 * @module
 */

/**
 * Authenticated decryption failed: a wrong key or psk, a tampered or truncated message. Also
 * thrown, before any crypto is done, for a handshake message too short (or too long) for its
 * tokens.
 */
export class DecryptError extends Error {
  override name = "DecryptError";
  constructor(message = "decryption failed: the message was tampered with or the key is wrong") {
    super(message);
  }
}

/**
 * An X25519 computation produced the all-zero shared secret: the peer sent a low-order (or
 * otherwise invalid) public key. The handshake must be abandoned.
 */
export class InvalidDhError extends Error {
  override name = "InvalidDhError";
  constructor(
    message = "X25519 gave an all-zero shared secret: the peer's public key is a low-order point",
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** The 64-bit nonce of a cipher state reached 2^64-1 (reserved); the key must not be used again. */
export class NonceExhaustedError extends Error {
  override name = "NonceExhaustedError";
  constructor(
    message = "nonce exhausted: 2^64-1 messages were sent with this key; rekey or reconnect",
  ) {
    super(message);
  }
}

/**
 * A handshake step was taken out of order: writing when it is the peer's turn, reading after
 * completion, splitting before completion, or using a handshake that already failed.
 */
export class HandshakeStateError extends Error {
  override name = "HandshakeStateError";
}
