/**
 * Transport constants, kept apart from the code that uses them (as wireguard-go's
 * device/constants.go does). The first group is fixed by the Noise specification and must never
 * change; the second is modelled on WireGuard's timers; the third is this implementation's own
 * choice and may be tuned without breaking the wire format.
 *
 * @module
 */

// --- Fixed by the Noise Protocol Framework (revision 34, section 3) ---------------------------

/** Largest Noise message, and so the largest wire message a `Transport` carries, in bytes. */
export const NOISE_MAX_MESSAGE = 65535;

/** Size of the ChaCha20-Poly1305 authentication tag appended to every Noise transport message. */
export const TAG_LENGTH = 16;

/** Largest plaintext of one Noise transport message: the frames it carries, headers included. */
export const MAX_FRAME_PLAINTEXT = NOISE_MAX_MESSAGE - TAG_LENGTH;

// --- Modelled on WireGuard (whitepaper section 6.1, device/constants.go) ----------------------

/** A send key is replaced (REKEY frame) after this many Noise messages were encrypted with it. */
export const REKEY_AFTER_MESSAGES = 2n ** 60n;

/** A key is never used for this many Noise messages: the session closes first. */
export const REJECT_AFTER_MESSAGES = 2n ** 64n - 2n ** 13n - 1n;

/** A send key is replaced (REKEY frame) once it is this old, in milliseconds. */
export const REKEY_AFTER_TIME_MS = 120_000;

/** Default: a KEEPALIVE frame is sent when nothing else was sent for this long. */
export const KEEPALIVE_INTERVAL_MS = 2_500;

/** Default: a session that received nothing for this long is closed as dead. */
export const DEAD_PEER_TIMEOUT_MS = 10_000;

// --- Implementation choices ---------------------------------------------------------------------

/** Default largest application message a session sends or accepts: 64 MiB. */
export const DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024;

/** Hard ceiling for `maxMessageSize`: a DATA frame carries the total length as a u32. */
export const MAX_MESSAGE_SIZE_LIMIT = 0xffff_ffff;

/** Longest UTF-8 reason a CLOSE frame carries, in bytes; longer reasons are truncated. */
export const MAX_CLOSE_REASON_BYTES = 256;

/** Length prefix in front of every wire message on TCP: 2 bytes, big-endian. */
export const TCP_LENGTH_PREFIX = 2;

/** A TCP connect that got no answer within this long fails with NodeDownError. */
export const TCP_CONNECT_TIMEOUT_MS = 10_000;

/** After `close()`, a TCP socket whose peer does not finish the close is destroyed this late. */
export const TCP_CLOSE_LINGER_MS = 2_000;

/** Bytes a TCP transport buffers for writing before `send()` waits for the socket to drain. */
export const TCP_WRITE_HIGH_WATER = 1024 * 1024;

/** Bytes a TCP transport buffers unread before it pauses the socket. */
export const TCP_READ_HIGH_WATER = 1024 * 1024;

/** Default depth, in wire messages, of each direction of an in-memory transport pair. */
export const MEMORY_QUEUE_DEPTH = 64;

/**
 * Bytes of received, unconsumed messages a session holds before it stops reading the transport
 * (at least one message is always accepted, whatever its size).
 */
export const SESSION_INBOX_HIGH_WATER = 16 * 1024 * 1024;
