/**
 * The Noise suite 25519_ChaChaPoly_BLAKE2s on node:crypto natives. This is the only module that
 * touches node:crypto primitives; everything above it works with raw `Uint8Array`s.
 *
 * All byte arrays returned are plain `Uint8Array`s (views, never `Buffer`s), so they compare
 * equal to other `Uint8Array`s under deep-equality checks.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createHmac,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  type KeyObject,
  randomBytes as nodeRandomBytes,
  timingSafeEqual,
} from "node:crypto";
import process from "node:process";
import { DecryptError, InvalidDhError } from "./noise_errors.ts";

/** Length of an X25519 public key, private key and shared secret. */
export const DHLEN = 32;
/** Length of a BLAKE2s digest. */
export const HASHLEN = 32;
/** Length of a ChaCha20-Poly1305 key. */
export const KEYLEN = 32;
/** Length of a Poly1305 authentication tag. */
export const TAGLEN = 16;
/** BLAKE2s block length (the HMAC block size). */
export const BLOCKLEN = 64;

/** An X25519 key pair, both halves raw 32-byte arrays. */
export interface KeyPair {
  /** The public key (u-coordinate, little-endian, 32 bytes). */
  readonly publicKey: Uint8Array;
  /** The private scalar (32 bytes; clamped on use). Wipe it with `wipe()` when done. */
  readonly privateKey: Uint8Array;
}

// DER wrappers that turn a raw X25519 key into PKCS#8 / SPKI (RFC 8410): the raw key follows.
const PKCS8_X25519_PREFIX = Uint8Array.of(
  0x30,
  0x2e,
  0x02,
  0x01,
  0x00,
  0x30,
  0x05,
  0x06,
  0x03,
  0x2b,
  0x65,
  0x6e,
  0x04,
  0x22,
  0x04,
  0x20,
);
const SPKI_X25519_PREFIX = Uint8Array.of(
  0x30,
  0x2a,
  0x30,
  0x05,
  0x06,
  0x03,
  0x2b,
  0x65,
  0x6e,
  0x03,
  0x21,
  0x00,
);

/**
 * HMAC done by hand (RFC 2104 over two createHash calls) instead of createHmac, chosen per
 * runtime by what was measured on the project's 2-core machine (CPU time of a two-output Noise
 * HKDF, three HMAC-BLAKE2s of 32-byte keys): under Deno 2.9 createHmac takes 25-37 µs (it builds
 * its pads through Buffer.concat and fresh Buffer pools), by hand 16-25 µs; under Node 24
 * createHmac takes 8.2-8.8 µs, by hand 11.8-12 µs. Both compute the same RFC 2104 HMAC (tests
 * check they agree).
 */
const HMAC_BY_HAND = typeof process.versions.deno === "string";

const CIPHER = "chacha20-poly1305";
const HASH = "blake2s256";
const EMPTY = new Uint8Array(0);
const HKDF_ONE = Uint8Array.of(1);
const HKDF_TWO = Uint8Array.of(2);
const HKDF_THREE = Uint8Array.of(3);

/**
 * The nonce buffer, reused: createCipheriv/createDecipheriv copy the IV before returning, and
 * this module is synchronous, so nothing else can observe it in between.
 */
const nonceBuffer = new Uint8Array(12);
const nonceView = new DataView(nonceBuffer.buffer);

/**
 * Private-key KeyObjects, keyed by the raw private key array they were built from (or exported
 * to, for generated keys). Building one from DER costs about as much as the X25519 itself on
 * Node, and a static key is used for every handshake. Each entry holds a copy of the bytes it
 * was built from, so an array changed in place is noticed and rebuilt; `wipe()` drops the entry.
 */
const privateKeyObjects = new WeakMap<Uint8Array, { bytes: Uint8Array; key: KeyObject }>();
/**
 * Public-key KeyObjects, the same way: a peer's ephemeral key takes part in two DHs of an XX
 * handshake, and its array (kept by the HandshakeState) is the same for both.
 */
const publicKeyObjects = new WeakMap<Uint8Array, { bytes: Uint8Array; key: KeyObject }>();

function asBytes(buf: Uint8Array): Uint8Array {
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

function requireLength(bytes: Uint8Array, length: number, what: string): void {
  if (bytes.length !== length) {
    throw new RangeError(`${what} must be ${length} bytes, got ${bytes.length}`);
  }
}

function withPrefix(prefix: Uint8Array, raw: Uint8Array): Uint8Array {
  const der = new Uint8Array(prefix.length + raw.length);
  der.set(prefix);
  der.set(raw, prefix.length);
  return der;
}

function privateKeyObject(privateKey: Uint8Array): KeyObject {
  const cached = privateKeyObjects.get(privateKey);
  if (cached !== undefined && timingSafeEqual(cached.bytes, privateKey)) return cached.key;
  const der = withPrefix(PKCS8_X25519_PREFIX, privateKey);
  const key = createPrivateKey({ key: der as Buffer, format: "der", type: "pkcs8" });
  der.fill(0);
  privateKeyObjects.set(privateKey, { bytes: new Uint8Array(privateKey), key });
  return key;
}

function publicKeyObject(publicKey: Uint8Array): KeyObject {
  const cached = publicKeyObjects.get(publicKey);
  if (cached !== undefined && sameBytes(cached.bytes, publicKey)) return cached.key;
  // JWK is the cheaper import on both runtimes (measured: 1.9 against 3.2 µs for DER under
  // Deno, 2.8 against 6.3 µs under Node).
  const x = Buffer.from(publicKey.buffer, publicKey.byteOffset, publicKey.byteLength)
    .toString("base64url");
  const key = createPublicKey({ key: { kty: "OKP", crv: "X25519", x }, format: "jwk" });
  publicKeyObjects.set(publicKey, { bytes: new Uint8Array(publicKey), key });
  return key;
}

function rawPublicKey(key: KeyObject): Uint8Array {
  const spki = key.export({ format: "der", type: "spki" });
  return new Uint8Array(spki.subarray(SPKI_X25519_PREFIX.length));
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function isAllZero(bytes: Uint8Array): boolean {
  let acc = 0;
  for (let i = 0; i < bytes.length; i++) acc |= bytes[i]!;
  return acc === 0;
}

function setNonce(n: bigint): Uint8Array {
  // Bytes 0..3 stay zero; bytes 4..11 are n, little-endian. setBigUint64 wraps silently, so
  // the range is checked here.
  if (n < 0n || n > 0xffff_ffff_ffff_ffffn) {
    throw new RangeError(`nonce out of range: ${n}`);
  }
  nonceView.setBigUint64(4, n, true);
  return nonceBuffer;
}

/**
 * A fresh random X25519 key pair. The KeyObject the runtime generated is kept for dh() (not
 * rebuilt from the raw bytes); the raw halves come from a PKCS#8 export (wiped after) and a JWK
 * export of the public key, the cheapest pair of exports on both runtimes (measured: 21 µs in
 * all under Deno, 46 µs under Node, against 23 and 64 µs for importing a random seed).
 */
export function generateKeyPair(): KeyPair {
  const pair = generateKeyPairSync("x25519");
  const der = pair.privateKey.export({ format: "der", type: "pkcs8" });
  try {
    if (
      der.length !== PKCS8_X25519_PREFIX.length + DHLEN
      || !sameBytes(der.subarray(0, PKCS8_X25519_PREFIX.length), PKCS8_X25519_PREFIX)
    ) {
      throw new RangeError("the runtime exported an X25519 private key in an unexpected form");
    }
    const privateKey = new Uint8Array(der.subarray(PKCS8_X25519_PREFIX.length));
    const x = pair.publicKey.export({ format: "jwk" }).x;
    const publicKey = typeof x === "string" ? new Uint8Array(Buffer.from(x, "base64url")) : EMPTY;
    if (publicKey.length !== DHLEN) {
      throw new RangeError("the runtime exported an X25519 public key in an unexpected form");
    }
    privateKeyObjects.set(privateKey, { bytes: new Uint8Array(privateKey), key: pair.privateKey });
    return { publicKey, privateKey };
  } finally {
    der.fill(0);
  }
}

/** The key pair for a raw 32-byte private key (copied: the pair owns its arrays). */
export function keyPairFromPrivate(privateKey: Uint8Array): KeyPair {
  requireLength(privateKey, DHLEN, "X25519 private key");
  const own = new Uint8Array(privateKey);
  const publicKey = rawPublicKey(createPublicKey(privateKeyObject(own)));
  return { publicKey, privateKey: own };
}

let dhCount = 0;

/**
 * How many X25519 computations dh() has attempted in this process. A diagnostic for tests
 * (e.g. "a wrong cookie costs the responder no DH"); never reset.
 */
export function dhOperations(): number {
  return dhCount;
}

/**
 * X25519(privateKey, publicKey). Throws InvalidDhError when the shared secret is all zero (the
 * public key is a low-order point); that is checked here explicitly, whatever the runtime's
 * X25519 does on its own (Node's and Deno's OpenSSL-backed implementations already refuse).
 */
export function dh(privateKey: Uint8Array, publicKey: Uint8Array): Uint8Array {
  requireLength(privateKey, DHLEN, "X25519 private key");
  requireLength(publicKey, DHLEN, "X25519 public key");
  const priv = privateKeyObject(privateKey);
  let shared: Uint8Array;
  dhCount++;
  try {
    shared = diffieHellman({ privateKey: priv, publicKey: publicKeyObject(publicKey) });
  } catch (err) {
    throw new InvalidDhError(undefined, { cause: err });
  }
  if (isAllZero(shared)) throw new InvalidDhError();
  return asBytes(shared);
}

/**
 * ChaCha20-Poly1305 encryption with the Noise nonce encoding (4 zero bytes, then `n` as 64-bit
 * little-endian). Returns ciphertext followed by the 16-byte tag.
 */
export function aeadEncrypt(
  key: Uint8Array,
  n: bigint,
  ad: Uint8Array,
  plaintext: Uint8Array,
): Uint8Array {
  const cipher = createCipheriv(CIPHER, key, setNonce(n), { authTagLength: TAGLEN });
  if (ad.length > 0) cipher.setAAD(ad, { plaintextLength: plaintext.length });
  const body = cipher.update(plaintext);
  cipher.final();
  const out = new Uint8Array(body.length + TAGLEN);
  out.set(body);
  out.set(cipher.getAuthTag(), body.length);
  return out;
}

/**
 * `aeadEncrypt` of the concatenation of `parts`, without joining them first: each part is fed to
 * the cipher where it lies. Returns the ciphertext in pieces (one per non-empty part) followed by
 * the 16-byte tag; joined, they equal `aeadEncrypt(key, n, ad, concat(parts))`.
 */
export function aeadEncryptParts(
  key: Uint8Array,
  n: bigint,
  ad: Uint8Array,
  parts: readonly Uint8Array[],
): Uint8Array[] {
  const cipher = createCipheriv(CIPHER, key, setNonce(n), { authTagLength: TAGLEN });
  if (ad.length > 0) {
    let length = 0;
    for (const part of parts) length += part.length;
    cipher.setAAD(ad, { plaintextLength: length });
  }
  const out: Uint8Array[] = [];
  for (const part of parts) {
    if (part.length > 0) out.push(asBytes(cipher.update(part)));
  }
  cipher.final();
  out.push(asBytes(cipher.getAuthTag()));
  return out;
}

/**
 * ChaCha20-Poly1305 decryption of ciphertext-with-tag. Throws DecryptError when the tag does not
 * verify or the input is shorter than a tag; no plaintext escapes in that case.
 */
export function aeadDecrypt(
  key: Uint8Array,
  n: bigint,
  ad: Uint8Array,
  ciphertext: Uint8Array,
): Uint8Array {
  if (ciphertext.length < TAGLEN) {
    throw new DecryptError(
      `ciphertext too short: ${ciphertext.length} bytes, a tag alone is ${TAGLEN}`,
    );
  }
  const bodyLength = ciphertext.length - TAGLEN;
  const decipher = createDecipheriv(CIPHER, key, setNonce(n), { authTagLength: TAGLEN });
  decipher.setAuthTag(ciphertext.subarray(bodyLength));
  if (ad.length > 0) decipher.setAAD(ad, { plaintextLength: bodyLength });
  const plaintext = decipher.update(ciphertext.subarray(0, bodyLength));
  try {
    decipher.final();
  } catch {
    plaintext.fill(0);
    throw new DecryptError();
  }
  return asBytes(plaintext);
}

/** BLAKE2s-256 of the concatenation of `parts`. */
export function hash(...parts: Uint8Array[]): Uint8Array {
  const h = createHash(HASH);
  for (const part of parts) h.update(part);
  return asBytes(h.digest());
}

/**
 * HMAC-BLAKE2s-256 (RFC 2104, 64-byte blocks) of the concatenation of `parts`: `hmacNative` or
 * `hmacByHand`, whichever is faster on this runtime (see HMAC_BY_HAND).
 */
export function hmac(key: Uint8Array, ...parts: Uint8Array[]): Uint8Array {
  return HMAC_BY_HAND ? hmacByHand(key, parts) : hmacNative(key, parts);
}

/** HMAC-BLAKE2s-256 of the concatenation of `parts` with node:crypto's createHmac. */
export function hmacNative(key: Uint8Array, parts: readonly Uint8Array[]): Uint8Array {
  const h = createHmac(HASH, key);
  for (const part of parts) h.update(part);
  return asBytes(h.digest());
}

/**
 * HMAC-BLAKE2s-256 of the concatenation of `parts` as RFC 2104 defines it, on two BLAKE2s
 * hashes: H((K ^ opad) || H((K ^ ipad) || text)), K zero-padded to the block (or hashed first
 * when longer than a block). The padded keys and the inner digest are wiped.
 */
export function hmacByHand(key: Uint8Array, parts: readonly Uint8Array[]): Uint8Array {
  const pad = new Uint8Array(BLOCKLEN);
  if (key.length > BLOCKLEN) {
    const hashed = hash(key);
    pad.set(hashed);
    hashed.fill(0);
  } else {
    pad.set(key);
  }
  for (let i = 0; i < BLOCKLEN; i++) pad[i]! ^= 0x36;
  const inner = createHash(HASH).update(pad);
  for (const part of parts) inner.update(part);
  const innerDigest = inner.digest();
  for (let i = 0; i < BLOCKLEN; i++) pad[i]! ^= 0x36 ^ 0x5c;
  const out = createHash(HASH).update(pad).update(innerDigest).digest();
  pad.fill(0);
  innerDigest.fill(0);
  return asBytes(out);
}

/**
 * Noise HKDF: two or three 32-byte outputs derived from `chainingKey` and `ikm` (which may be
 * empty). The intermediate key is wiped.
 */
export function hkdf(chainingKey: Uint8Array, ikm: Uint8Array, n: 2): [Uint8Array, Uint8Array];
/** Noise HKDF with three outputs. */
export function hkdf(
  chainingKey: Uint8Array,
  ikm: Uint8Array,
  n: 3,
): [Uint8Array, Uint8Array, Uint8Array];
/** Noise HKDF with two or three outputs. */
export function hkdf(chainingKey: Uint8Array, ikm: Uint8Array, n: 2 | 3): Uint8Array[];
export function hkdf(chainingKey: Uint8Array, ikm: Uint8Array, n: 2 | 3): Uint8Array[] {
  const tempKey = hmac(chainingKey, ikm);
  const out1 = hmac(tempKey, HKDF_ONE);
  const out2 = hmac(tempKey, out1, HKDF_TWO);
  const outputs = [out1, out2];
  if (n === 3) outputs.push(hmac(tempKey, out2, HKDF_THREE));
  tempKey.fill(0);
  return outputs;
}

/** `n` cryptographically random bytes. */
export function randomBytes(n: number): Uint8Array {
  return asBytes(nodeRandomBytes(n));
}

/** Zero-fills `buf` in place (and forgets any key object built from it). */
export function wipe(buf: Uint8Array): void {
  buf.fill(0);
  const cached = privateKeyObjects.get(buf);
  if (cached !== undefined) {
    cached.bytes.fill(0);
    privateKeyObjects.delete(buf);
  }
}

/**
 * A short printable fingerprint of a 32-byte public key, in the style of OpenSSH:
 * `"SHA256:"` followed by the unpadded standard base64 of the first 16 bytes of the key's
 * SHA-256 (22 characters), e.g. `"SHA256:q1hXHf0Z3vWgG6F0bS3x9w"`.
 */
export function publicKeyFingerprint(publicKey: Uint8Array): string {
  requireLength(publicKey, DHLEN, "X25519 public key");
  const digest = createHash("sha256").update(publicKey).digest();
  return "SHA256:" + digest.subarray(0, 16).toString("base64").replace(/=+$/, "");
}
