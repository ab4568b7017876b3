/**
 * The Noise state machines (spec revision 34, section 5): CipherState, SymmetricState and a
 * pattern-generic HandshakeState that interprets the token lists of `noise_patterns.ts`.
 *
 * The HandshakeState keeps an explicit status and checks it at every step; message lengths are
 * checked before any crypto; a failed step leaves it unusable (status "failed", secrets wiped);
 * `split()` wipes the handshake secrets and keeps only the handshake hash.
 *
 * @module
 */
import { concatBytes } from "./bytes.ts";
import {
  aeadDecrypt,
  aeadEncrypt,
  aeadEncryptParts,
  dh,
  DHLEN,
  generateKeyPair,
  hash,
  HASHLEN,
  hkdf,
  KEYLEN,
  type KeyPair,
  TAGLEN,
  wipe,
} from "./crypto.ts";
import { DecryptError, HandshakeStateError, NonceExhaustedError } from "./noise_errors.ts";
import {
  type HandshakePattern,
  messageSender,
  parseProtocolName,
  protocolNameFor,
  resolvePattern,
  type Role,
} from "./noise_patterns.ts";

/** The largest nonce, 2^64-1: reserved, never used to encrypt or decrypt a message. */
export const MAX_NONCE = 0xffff_ffff_ffff_ffffn;

/** The largest Noise message, in bytes (handshake or transport). */
export const MAX_MESSAGE_LENGTH = 65535;

const EMPTY = new Uint8Array(0);
const REKEY_ZEROS = new Uint8Array(KEYLEN);

/** A key `k` (or none) and a 64-bit nonce `n` (spec 5.1). */
export class CipherState {
  #k: Uint8Array | undefined;
  #n = 0n;
  #wiped = false;

  /** Sets the key (copied; `undefined` for none) and resets the nonce to 0. */
  initializeKey(key: Uint8Array | undefined): void {
    if (key !== undefined && key.length !== KEYLEN) {
      throw new RangeError(`cipher key must be ${KEYLEN} bytes, got ${key.length}`);
    }
    if (this.#k !== undefined) wipe(this.#k);
    this.#k = key === undefined ? undefined : new Uint8Array(key);
    this.#n = 0n;
    this.#wiped = false;
  }

  /** Whether a key is set. */
  hasKey(): boolean {
    return this.#k !== undefined;
  }

  /** The nonce the next encryption or decryption will use. */
  get nonce(): bigint {
    return this.#n;
  }

  /** Sets the nonce (0 to 2^64-1), for out-of-order transports and tests. */
  setNonce(n: bigint): void {
    if (n < 0n || n > MAX_NONCE) throw new RangeError(`nonce out of range: ${n}`);
    this.#n = n;
  }

  /**
   * Encrypts `plaintext` with associated data `ad` and advances the nonce. Without a key it
   * returns a copy of `plaintext` (spec). Throws NonceExhaustedError at nonce 2^64-1.
   */
  encryptWithAd(ad: Uint8Array, plaintext: Uint8Array): Uint8Array {
    const k = this.#key();
    if (k === undefined) return new Uint8Array(plaintext);
    if (this.#n === MAX_NONCE) throw new NonceExhaustedError();
    const ciphertext = aeadEncrypt(k, this.#n, ad, plaintext);
    this.#n++;
    return ciphertext;
  }

  /**
   * `encryptWithAd` of the concatenation of `parts`, which are not joined first: returns the
   * ciphertext in pieces followed by the tag (joined, exactly what `encryptWithAd` returns).
   * Without a key it returns one copy of the joined plaintext.
   */
  encryptPartsWithAd(ad: Uint8Array, parts: readonly Uint8Array[]): Uint8Array[] {
    const k = this.#key();
    if (k === undefined) return [concatBytes(parts)];
    if (this.#n === MAX_NONCE) throw new NonceExhaustedError();
    const ciphertext = aeadEncryptParts(k, this.#n, ad, parts);
    this.#n++;
    return ciphertext;
  }

  /**
   * Decrypts `ciphertext` (with its tag) and advances the nonce. Without a key it returns a copy
   * of `ciphertext`. Throws DecryptError when authentication fails — the nonce is then NOT
   * advanced — and NonceExhaustedError at nonce 2^64-1.
   */
  decryptWithAd(ad: Uint8Array, ciphertext: Uint8Array): Uint8Array {
    const k = this.#key();
    if (k === undefined) return new Uint8Array(ciphertext);
    if (this.#n === MAX_NONCE) throw new NonceExhaustedError();
    const plaintext = aeadDecrypt(k, this.#n, ad, ciphertext);
    this.#n++;
    return plaintext;
  }

  /**
   * Replaces the key with REKEY(k): the first 32 bytes of ENCRYPT(k, 2^64-1, empty, 32 zeros).
   * The nonce is left as it is. Both sides must rekey at the same point of the stream.
   */
  rekey(): void {
    const k = this.#key();
    if (k === undefined) throw new HandshakeStateError("rekey() needs a cipher state with a key");
    const block = aeadEncrypt(k, MAX_NONCE, EMPTY, REKEY_ZEROS);
    const next = block.slice(0, KEYLEN);
    wipe(block);
    wipe(k);
    this.#k = next;
  }

  /** Zero-fills the key and drops it; any later encrypt or decrypt throws HandshakeStateError. */
  wipe(): void {
    if (this.#k !== undefined) wipe(this.#k);
    this.#k = undefined;
    this.#n = 0n;
    this.#wiped = true;
  }

  #key(): Uint8Array | undefined {
    if (this.#wiped) {
      throw new HandshakeStateError("this cipher state was wiped and cannot be used again");
    }
    return this.#k;
  }
}

/** The chaining key `ck`, handshake hash `h` and a CipherState (spec 5.2). */
export class SymmetricState {
  readonly #cipher = new CipherState();
  #ck: Uint8Array = new Uint8Array(HASHLEN);
  #h: Uint8Array = new Uint8Array(HASHLEN);

  /** Runs InitializeSymmetric(protocolName). */
  constructor(protocolName: string) {
    this.initializeSymmetric(protocolName);
  }

  /** h = protocol name zero-padded to 32 bytes, or its hash if longer; ck = h; no key. */
  initializeSymmetric(protocolName: string): void {
    const name = new TextEncoder().encode(protocolName);
    let h: Uint8Array;
    if (name.length <= HASHLEN) {
      h = new Uint8Array(HASHLEN);
      h.set(name);
    } else {
      h = hash(name);
    }
    wipe(this.#ck);
    this.#h = h;
    this.#ck = new Uint8Array(h);
    this.#cipher.initializeKey(undefined);
  }

  /** ck, k = HKDF(ck, ikm); the cipher gets the new key and nonce 0. */
  mixKey(ikm: Uint8Array): void {
    const [ck, k] = hkdf(this.#ck, ikm, 2);
    wipe(this.#ck);
    this.#ck = ck;
    this.#cipher.initializeKey(k);
    wipe(k);
  }

  /** h = HASH(h || data). */
  mixHash(data: Uint8Array): void {
    this.#h = hash(this.#h, data);
  }

  /** ck, temp_h, k = HKDF(ck, ikm, 3); MixHash(temp_h); the cipher gets k (psk tokens). */
  mixKeyAndHash(ikm: Uint8Array): void {
    const [ck, tempH, k] = hkdf(this.#ck, ikm, 3);
    wipe(this.#ck);
    this.#ck = ck;
    this.mixHash(tempH);
    this.#cipher.initializeKey(k);
    wipe(tempH);
    wipe(k);
  }

  /** A copy of the current handshake hash h. */
  getHandshakeHash(): Uint8Array {
    return new Uint8Array(this.#h);
  }

  /** Whether the cipher has a key (so payloads and static keys are encrypted). */
  hasKey(): boolean {
    return this.#cipher.hasKey();
  }

  /** Encrypts with h as associated data, then mixes the ciphertext into h. */
  encryptAndHash(plaintext: Uint8Array): Uint8Array {
    const ciphertext = this.#cipher.encryptWithAd(this.#h, plaintext);
    this.mixHash(ciphertext);
    return ciphertext;
  }

  /** Decrypts with h as associated data, then mixes the ciphertext into h. */
  decryptAndHash(ciphertext: Uint8Array): Uint8Array {
    const plaintext = this.#cipher.decryptWithAd(this.#h, ciphertext);
    this.mixHash(ciphertext);
    return plaintext;
  }

  /** The two transport cipher states: c1 for initiator → responder, c2 for the other way. */
  split(): [CipherState, CipherState] {
    const [k1, k2] = hkdf(this.#ck, EMPTY, 2);
    const c1 = new CipherState();
    const c2 = new CipherState();
    c1.initializeKey(k1);
    c2.initializeKey(k2);
    wipe(k1);
    wipe(k2);
    return [c1, c2];
  }

  /** Zero-fills ck, h and the cipher key. */
  wipe(): void {
    wipe(this.#ck);
    wipe(this.#h);
    this.#cipher.wipe();
  }
}

/**
 * Where a HandshakeState is: "write" or "read" (whose turn the next message is), "complete"
 * (all messages done, call split()), "split" (done, secrets wiped), "failed" (unusable).
 */
export type HandshakeStatus = "write" | "read" | "complete" | "split" | "failed";

/** What every handshake needs besides the protocol. */
export interface HandshakeKeys {
  /** true for the initiator (writes the first message). */
  readonly initiator: boolean;
  /** Prologue both sides must agree on (default empty). */
  readonly prologue?: Uint8Array;
  /** Our static key pair, when the pattern uses it. Not wiped: the caller owns it. */
  readonly s?: KeyPair;
  /**
   * A fixed ephemeral key pair to use instead of a fresh one (test vectors), or ours in a
   * pre-message. The handshake takes it over: its private key is wiped by split() or failure.
   */
  readonly e?: KeyPair;
  /** The peer's static public key, when the pattern has it in a pre-message ("<- s" in IK). */
  readonly rs?: Uint8Array;
  /** The peer's ephemeral public key, when the pattern has it in a pre-message. */
  readonly re?: Uint8Array;
  /** Pre-shared keys (32 bytes each), one per psk token, in token order. Copied. */
  readonly psks?: readonly Uint8Array[];
}

/**
 * HandshakeState options: the protocol as a full name ("Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s")
 * or as a pattern (name or object; the suite is always 25519_ChaChaPoly_BLAKE2s), plus keys.
 */
export type HandshakeOptions =
  & HandshakeKeys
  & (
    | { readonly protocolName: string; readonly pattern?: never }
    | { readonly pattern: string | HandshakePattern; readonly protocolName?: never }
  );

/**
 * One side of a Noise handshake (spec 5.3), for any pattern of `noise_patterns.ts`. Call
 * writeMessage()/readMessage() in turn (see `status`) until `isComplete`, then split().
 */
export class HandshakeState {
  /** The full protocol name mixed into h. */
  readonly protocolName: string;
  /** The handshake pattern being run (psk modifiers applied). */
  readonly pattern: HandshakePattern;
  /** Whether this side is the initiator. */
  readonly initiator: boolean;

  readonly #role: Role;
  readonly #symmetric: SymmetricState;
  readonly #s: KeyPair | undefined;
  #e: KeyPair | undefined;
  #fixedEphemeral: KeyPair | undefined;
  #rs: Uint8Array | undefined;
  #re: Uint8Array | undefined;
  readonly #psks: Uint8Array[];
  #pskIndex = 0;
  #messageIndex = 0;
  #status: HandshakeStatus;
  #handshakeHash: Uint8Array | undefined;

  /**
   * Runs Initialize(): checks that the keys the pattern needs are given (TypeError if not), and
   * mixes the prologue and pre-message keys into h. Throws RangeError for an unknown pattern or
   * an unsupported suite.
   */
  constructor(options: HandshakeOptions) {
    if (options.protocolName !== undefined) {
      const parsed = parseProtocolName(options.protocolName);
      this.protocolName = parsed.name;
      this.pattern = parsed.pattern;
    } else {
      const p = options.pattern;
      this.pattern = typeof p === "string" ? resolvePattern(p) : p;
      this.protocolName = protocolNameFor(this.pattern);
    }
    this.initiator = options.initiator;
    const role: Role = options.initiator ? "initiator" : "responder";
    const peer: Role = options.initiator ? "responder" : "initiator";
    this.#role = role;
    const pattern = this.pattern;

    // The keys this pattern needs, checked now rather than half-way through the handshake.
    const needS = pattern.preMessages[role].includes("s")
      || pattern.messages.some((m, i) => messageSender(pattern, i) === role && m.includes("s"));
    const preRs = pattern.preMessages[peer].includes("s");
    const preRe = pattern.preMessages[peer].includes("e");
    const preE = pattern.preMessages[role].includes("e");
    if (needS && options.s === undefined) {
      throw new TypeError(`${pattern.name} needs the ${role}'s static key pair (s)`);
    }
    if (preRs !== (options.rs !== undefined)) {
      throw new TypeError(
        preRs
          ? `${pattern.name} needs the peer's static public key (rs) in advance`
          : `${pattern.name} learns the peer's static key in the handshake; do not pass rs`,
      );
    }
    if (preRe !== (options.re !== undefined)) {
      throw new TypeError(
        preRe
          ? `${pattern.name} needs the peer's ephemeral public key (re) in advance`
          : `${pattern.name} has no pre-message ephemeral for the peer; do not pass re`,
      );
    }
    if (preE && options.e === undefined) {
      throw new TypeError(`${pattern.name} needs the ${role}'s pre-message ephemeral (e)`);
    }
    for (const [key, what] of [[options.s, "s"], [options.e, "e"]] as const) {
      if (key !== undefined) {
        checkLength(key.publicKey, `${what}.publicKey`);
        checkLength(key.privateKey, `${what}.privateKey`);
      }
    }
    if (options.rs !== undefined) checkLength(options.rs, "rs");
    if (options.re !== undefined) checkLength(options.re, "re");
    const pskCount = pattern.messages.reduce((n, m) => n + m.filter((t) => t === "psk").length, 0);
    const psks = options.psks ?? [];
    if (psks.length !== pskCount) {
      throw new TypeError(`${pattern.name} needs ${pskCount} psk(s), got ${psks.length}`);
    }
    psks.forEach((psk, i) => checkLength(psk, `psks[${i}]`));

    this.#s = options.s;
    this.#rs = options.rs === undefined ? undefined : new Uint8Array(options.rs);
    this.#re = options.re === undefined ? undefined : new Uint8Array(options.re);
    if (preE) this.#e = options.e;
    else this.#fixedEphemeral = options.e;
    this.#psks = psks.map((psk) => new Uint8Array(psk));

    const symmetric = new SymmetricState(this.protocolName);
    this.#symmetric = symmetric;
    symmetric.mixHash(options.prologue ?? EMPTY);
    for (const owner of ["initiator", "responder"] as const) {
      const mine = owner === role;
      for (const token of pattern.preMessages[owner]) {
        const key = token === "s"
          ? (mine ? this.#s!.publicKey : this.#rs!)
          : (mine ? this.#e!.publicKey : this.#re!);
        symmetric.mixHash(key);
        if (token === "e" && pattern.hasPsk) symmetric.mixKey(key);
      }
    }
    this.#status = this.#turn();
  }

  /** Where the handshake is; see HandshakeStatus. */
  get status(): HandshakeStatus {
    return this.#status;
  }

  /** Whether all handshake messages have been written and read (split() may be, or was, called). */
  get isComplete(): boolean {
    return this.#status === "complete" || this.#status === "split";
  }

  /** Index of the next handshake message (equals the message count once complete). */
  get messageIndex(): number {
    return this.#messageIndex;
  }

  /**
   * A copy of the handshake hash h: the channel binding once the handshake is complete (kept
   * after split()). Throws HandshakeStateError after a failure.
   */
  get handshakeHash(): Uint8Array {
    if (this.#handshakeHash !== undefined) return new Uint8Array(this.#handshakeHash);
    if (this.#status === "failed") {
      throw new HandshakeStateError("this handshake failed; it has no handshake hash");
    }
    return this.#symmetric.getHandshakeHash();
  }

  /** The peer's static public key, once known (copy), or undefined. */
  get remoteStatic(): Uint8Array | undefined {
    return this.#rs === undefined ? undefined : new Uint8Array(this.#rs);
  }

  /** The peer's ephemeral public key, once known (copy), or undefined. */
  get remoteEphemeral(): Uint8Array | undefined {
    return this.#re === undefined ? undefined : new Uint8Array(this.#re);
  }

  /**
   * Writes the next handshake message carrying `payload`. Throws HandshakeStateError when it is
   * not our turn, RangeError (state unchanged) when the message would exceed 65535 bytes; any
   * other failure (InvalidDhError) leaves the handshake failed.
   */
  writeMessage(payload: Uint8Array = EMPTY): Uint8Array {
    this.#expect("write");
    const tokens = this.pattern.messages[this.#messageIndex]!;
    const length = this.#minimumLength() + payload.length;
    if (length > MAX_MESSAGE_LENGTH) {
      throw new RangeError(
        `handshake message would be ${length} bytes, over the Noise limit of ${MAX_MESSAGE_LENGTH}`,
      );
    }
    const symmetric = this.#symmetric;
    try {
      const message = new Uint8Array(length);
      let offset = 0;
      const put = (bytes: Uint8Array) => {
        message.set(bytes, offset);
        offset += bytes.length;
      };
      for (const token of tokens) {
        switch (token) {
          case "e": {
            if (this.#e !== undefined) {
              throw new HandshakeStateError(`${this.pattern.name}: a second "e" token`);
            }
            const e = this.#fixedEphemeral ?? generateKeyPair();
            this.#fixedEphemeral = undefined;
            this.#e = e;
            put(e.publicKey);
            symmetric.mixHash(e.publicKey);
            if (this.pattern.hasPsk) symmetric.mixKey(e.publicKey);
            break;
          }
          case "s":
            put(symmetric.encryptAndHash(this.#need(this.#s, "s").publicKey));
            break;
          case "psk":
            symmetric.mixKeyAndHash(this.#nextPsk());
            break;
          default:
            this.#mixDh(token);
        }
      }
      put(symmetric.encryptAndHash(payload));
      this.#advance();
      return message;
    } catch (err) {
      this.#fail();
      throw err;
    }
  }

  /**
   * Reads the peer's next handshake message and returns its payload. Throws
   * HandshakeStateError when it is not the peer's turn; DecryptError when the message is too
   * short or too long for its tokens (checked before any crypto) or does not authenticate;
   * InvalidDhError for a low-order key. After any failure the handshake is unusable.
   */
  readMessage(message: Uint8Array): Uint8Array {
    this.#expect("read");
    const tokens = this.pattern.messages[this.#messageIndex]!;
    const symmetric = this.#symmetric;
    try {
      const minimum = this.#minimumLength();
      if (message.length < minimum || message.length > MAX_MESSAGE_LENGTH) {
        throw new DecryptError(
          `handshake message ${this.#messageIndex} of ${this.pattern.name} is ${message.length} bytes; `
            + (message.length < minimum
              ? `it needs at least ${minimum}`
              : `the limit is ${MAX_MESSAGE_LENGTH}`),
        );
      }
      let offset = 0;
      const take = (n: number) => message.subarray(offset, offset += n);
      for (const token of tokens) {
        switch (token) {
          case "e": {
            const re = take(DHLEN).slice();
            this.#re = re;
            symmetric.mixHash(re);
            if (this.pattern.hasPsk) symmetric.mixKey(re);
            break;
          }
          case "s":
            this.#rs = symmetric.decryptAndHash(take(symmetric.hasKey() ? DHLEN + TAGLEN : DHLEN));
            break;
          case "psk":
            symmetric.mixKeyAndHash(this.#nextPsk());
            break;
          default:
            this.#mixDh(token);
        }
      }
      const payload = symmetric.decryptAndHash(message.subarray(offset));
      this.#advance();
      return payload;
    } catch (err) {
      this.#fail();
      throw err;
    }
  }

  /**
   * The transport cipher states [c1, c2]: c1 encrypts initiator → responder, c2 responder →
   * initiator (one-way patterns use only c1). Wipes ck, the handshake key, our ephemeral private
   * key and the psk copies; the handshake hash stays readable. Only once, after completion.
   */
  split(): [CipherState, CipherState] {
    if (this.#status !== "complete") {
      throw new HandshakeStateError(
        this.#status === "split"
          ? "split() was already called on this handshake"
          : this.#status === "failed"
          ? "this handshake failed and cannot be split; start a new one"
          : `split() before the handshake is complete (next message: ${this.#messageIndex})`,
      );
    }
    const ciphers = this.#symmetric.split();
    this.#handshakeHash = this.#symmetric.getHandshakeHash();
    this.#wipeSecrets();
    this.#status = "split";
    return ciphers;
  }

  #turn(): HandshakeStatus {
    if (this.#messageIndex >= this.pattern.messages.length) return "complete";
    return messageSender(this.pattern, this.#messageIndex) === this.#role ? "write" : "read";
  }

  #advance(): void {
    this.#messageIndex++;
    this.#status = this.#turn();
  }

  #expect(step: "write" | "read"): void {
    const status = this.#status;
    if (status === step) return;
    const verb = step === "write" ? "writeMessage()" : "readMessage()";
    let why: string;
    switch (status) {
      case "failed":
        why = "this handshake failed earlier; drop it and start a new one";
        break;
      case "complete":
        why = "the handshake is complete; call split()";
        break;
      case "split":
        why = "the handshake is complete and was split";
        break;
      default:
        why = step === "write"
          ? `message ${this.#messageIndex} is the peer's to write; read it first`
          : `message ${this.#messageIndex} is ours to write; there is nothing to read yet`;
    }
    throw new HandshakeStateError(`${verb}: ${why}`);
  }

  /**
   * Bytes the current message has without its payload: keys (encrypted or not) and the payload
   * tag. Whether a key is set at each token follows from the tokens alone, so this is exact.
   */
  #minimumLength(): number {
    let keyed = this.#symmetric.hasKey();
    let length = 0;
    for (const token of this.pattern.messages[this.#messageIndex]!) {
      if (token === "e") {
        length += DHLEN;
        if (this.pattern.hasPsk) keyed = true;
      } else if (token === "s") {
        length += keyed ? DHLEN + TAGLEN : DHLEN;
      } else {
        keyed = true;
      }
    }
    return keyed ? length + TAGLEN : length;
  }

  #mixDh(token: "ee" | "es" | "se" | "ss"): void {
    // "es" is the initiator's ephemeral with the responder's static, "se" the reverse.
    const [mine, theirs] = token === "ee"
      ? ["e", "e"]
      : token === "ss"
      ? ["s", "s"]
      : (token === "es") === this.initiator
      ? ["e", "s"]
      : ["s", "e"];
    const local = mine === "e" ? this.#need(this.#e, "e") : this.#need(this.#s, "s");
    const remote = theirs === "e" ? this.#need(this.#re, "re") : this.#need(this.#rs, "rs");
    const shared = dh(local.privateKey, remote);
    this.#symmetric.mixKey(shared);
    wipe(shared);
  }

  #nextPsk(): Uint8Array {
    const psk = this.#psks[this.#pskIndex++];
    if (psk === undefined) throw new HandshakeStateError(`${this.pattern.name}: no psk left`);
    return psk;
  }

  #need<T>(value: T | undefined, what: string): T {
    if (value === undefined) {
      throw new HandshakeStateError(
        `${this.pattern.name}: message ${this.#messageIndex} needs ${what}, which is not known yet`,
      );
    }
    return value;
  }

  /**
   * Gives the handshake up (the caller refused the peer, or a deadline passed): wipes its
   * secrets and leaves it "failed". Idempotent; a split handshake has nothing left to wipe.
   */
  abandon(): void {
    if (this.#status !== "split" && this.#status !== "failed") this.#fail();
  }

  #fail(): void {
    this.#status = "failed";
    this.#wipeSecrets();
  }

  #wipeSecrets(): void {
    this.#symmetric.wipe();
    if (this.#e !== undefined) wipe(this.#e.privateKey);
    if (this.#fixedEphemeral !== undefined) wipe(this.#fixedEphemeral.privateKey);
    this.#fixedEphemeral = undefined;
    for (const psk of this.#psks) wipe(psk);
  }
}

function checkLength(bytes: Uint8Array, what: string): void {
  if (bytes.length !== DHLEN) {
    throw new RangeError(`${what} must be ${DHLEN} bytes, got ${bytes.length}`);
  }
}
