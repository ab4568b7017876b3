/**
 * Behaviour of the Noise core beyond the published vectors: failures, state checks, nonces,
 * rekeying, low-order keys, wiping and replay.
 */
import {
  aeadDecrypt,
  aeadEncrypt,
  aeadEncryptParts,
  dh,
  dhOperations,
  generateKeyPair,
  hkdf,
  hmac,
  hmacByHand,
  hmacNative,
  keyPairFromPrivate,
  publicKeyFingerprint,
  randomBytes,
  wipe,
} from "../transport/crypto.ts";
import {
  DecryptError,
  HandshakeStateError,
  InvalidDhError,
  NonceExhaustedError,
} from "../transport/noise_errors.ts";
import { parseProtocolName, resolvePattern } from "../transport/noise_patterns.ts";
import { CipherState, HandshakeState, MAX_NONCE } from "../transport/noise_state.ts";
import {
  assert,
  assertEquals,
  assertMatch,
  assertNotEquals,
  assertThrows,
} from "./support/assert.ts";
import { concat } from "./support/bytes.ts";

const XXPSK0 = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s";
const EMPTY = new Uint8Array(0);
const text = (s: string) => new TextEncoder().encode(s);

/** Fixed keys, so that every run of the same handshake produces the same bytes. */
const KEYS = {
  initiatorStatic: randomBytes(32),
  initiatorEphemeral: randomBytes(32),
  responderStatic: randomBytes(32),
  responderEphemeral: randomBytes(32),
  psk: randomBytes(32),
};

function pair(
  options: { psk?: Uint8Array; responderPsk?: Uint8Array; fixedEphemerals?: boolean } = {},
): [HandshakeState, HandshakeState] {
  const fixed = options.fixedEphemerals ?? true;
  const psk = options.psk ?? KEYS.psk;
  const initiator = new HandshakeState({
    protocolName: XXPSK0,
    initiator: true,
    prologue: text("nodectl test"),
    s: keyPairFromPrivate(KEYS.initiatorStatic),
    ...(fixed ? { e: keyPairFromPrivate(KEYS.initiatorEphemeral) } : {}),
    psks: [psk],
  });
  const responder = new HandshakeState({
    protocolName: XXPSK0,
    initiator: false,
    prologue: text("nodectl test"),
    s: keyPairFromPrivate(KEYS.responderStatic),
    ...(fixed ? { e: keyPairFromPrivate(KEYS.responderEphemeral) } : {}),
    psks: [options.responderPsk ?? psk],
  });
  return [initiator, responder];
}

const PAYLOADS = [text("hello"), text("from responder"), text("from initiator")] as const;

/** Runs the three XX messages, initiator first, checking each payload; returns the messages. */
function handshake(initiator: HandshakeState, responder: HandshakeState): Uint8Array[] {
  const sides = [initiator, responder];
  return PAYLOADS.map((payload, i) => {
    const message = sides[i % 2]!.writeMessage(payload);
    assertEquals(sides[(i + 1) % 2]!.readMessage(message), payload);
    return message;
  });
}

function cipherPair(): [CipherState, CipherState] {
  const key = randomBytes(32);
  const a = new CipherState();
  const b = new CipherState();
  a.initializeKey(key);
  b.initializeKey(key);
  return [a, b];
}

Deno.test("an XXpsk0 handshake completes with matching keys, hashes and peer keys", () => {
  const [initiator, responder] = pair({ fixedEphemerals: false });
  assertEquals(initiator.status, "write");
  assertEquals(responder.status, "read");
  handshake(initiator, responder);
  assert(initiator.isComplete && responder.isComplete);
  assertEquals(initiator.handshakeHash, responder.handshakeHash);
  assertEquals(initiator.remoteStatic, keyPairFromPrivate(KEYS.responderStatic).publicKey);
  assertEquals(responder.remoteStatic, keyPairFromPrivate(KEYS.initiatorStatic).publicKey);
  const [i1, i2] = initiator.split();
  const [r1, r2] = responder.split();
  assertEquals(r1.decryptWithAd(EMPTY, i1.encryptWithAd(EMPTY, text("ping"))), text("ping"));
  assertEquals(i2.decryptWithAd(EMPTY, r2.encryptWithAd(EMPTY, text("pong"))), text("pong"));
});

Deno.test("readMessage() rejects a wrong psk", () => {
  const [initiator, responder] = pair({ responderPsk: randomBytes(32) });
  const m1 = initiator.writeMessage(text("hello"));
  assertThrows(() => responder.readMessage(m1), DecryptError);
  assertEquals(responder.status, "failed");
});

Deno.test("a failed readMessage() leaves the handshake unusable", () => {
  const [initiator, responder] = pair({ responderPsk: randomBytes(32) });
  const m1 = initiator.writeMessage(text("hello"));
  assertThrows(() => responder.readMessage(m1), DecryptError);
  assertThrows(() => responder.readMessage(m1), HandshakeStateError, "failed");
  assertThrows(() => responder.writeMessage(), HandshakeStateError, "failed");
  assertThrows(() => responder.split(), HandshakeStateError, "failed");
  assertThrows(() => responder.handshakeHash, HandshakeStateError);
});

Deno.test("a tampered byte at any offset of any XXpsk0 handshake message is rejected", () => {
  const genuine = handshake(...pair());
  genuine.forEach((message, index) => {
    for (let offset = 0; offset < message.length; offset++) {
      const sides = pair();
      for (let i = 0; i < index; i++) {
        sides[(i + 1) % 2]!.readMessage(sides[i % 2]!.writeMessage(PAYLOADS[i]!));
      }
      const sent = sides[index % 2]!.writeMessage(PAYLOADS[index]!);
      assertEquals(sent, message, "with fixed keys the handshake is deterministic");
      const tampered = sent.slice();
      tampered[offset]! ^= 0x01;
      const reader = sides[(index + 1) % 2]!;
      assertThrows(() => reader.readMessage(tampered), DecryptError);
      assertEquals(reader.status, "failed", `message ${index} offset ${offset}`);
    }
  });
});

Deno.test("readMessage() refuses a truncated handshake message before any crypto", () => {
  const [initiator, responder] = pair();
  const m1 = initiator.writeMessage(EMPTY);
  assertEquals(m1.length, 32 + 16, "psk0 keys the first message: e, then the payload tag");
  assertThrows(() => responder.readMessage(m1.subarray(0, 47)), DecryptError, "at least 48");
  assertEquals(responder.status, "failed");
});

Deno.test("readMessage() refuses a handshake message over 65535 bytes", () => {
  const [initiator, responder] = pair();
  const m1 = initiator.writeMessage(EMPTY);
  const huge = new Uint8Array(65536);
  huge.set(m1);
  assertThrows(() => responder.readMessage(huge), DecryptError, "65535");
});

Deno.test("writeMessage() refuses a payload that would exceed 65535 bytes and stays usable", () => {
  const [initiator, responder] = pair();
  assertThrows(() => initiator.writeMessage(new Uint8Array(65535 - 48 + 1)), RangeError);
  assertEquals(initiator.status, "write");
  const m1 = initiator.writeMessage(new Uint8Array(65535 - 48));
  assertEquals(m1.length, 65535);
  assertEquals(responder.readMessage(m1).length, 65535 - 48);
});

Deno.test("decryptWithAd() failure does not advance the nonce", () => {
  const [a, b] = cipherPair();
  const ciphertext = a.encryptWithAd(text("ad"), text("payload"));
  const tampered = ciphertext.slice();
  tampered[0]! ^= 0x80;
  assertThrows(() => b.decryptWithAd(text("ad"), tampered), DecryptError);
  assertThrows(() => b.decryptWithAd(text("other ad"), ciphertext), DecryptError);
  assertThrows(() => b.decryptWithAd(text("ad"), ciphertext.subarray(0, 15)), DecryptError);
  assertEquals(b.nonce, 0n);
  assertEquals(b.decryptWithAd(text("ad"), ciphertext), text("payload"));
  assertEquals(b.nonce, 1n);
});

Deno.test("encryptWithAd() works at nonce 2^64-2 and throws NonceExhaustedError at 2^64-1", () => {
  const [a, b] = cipherPair();
  a.setNonce(MAX_NONCE - 1n);
  b.setNonce(MAX_NONCE - 1n);
  const last = a.encryptWithAd(EMPTY, text("last"));
  assertEquals(a.nonce, MAX_NONCE);
  assertThrows(() => a.encryptWithAd(EMPTY, text("one too many")), NonceExhaustedError);
  assertEquals(b.decryptWithAd(EMPTY, last), text("last"));
  assertThrows(() => b.decryptWithAd(EMPTY, last), NonceExhaustedError);
  assertThrows(() => a.setNonce(MAX_NONCE + 1n), RangeError);
});

Deno.test("rekey() changes the key, keeps the nonce, and both sides stay in sync", () => {
  const key = randomBytes(32);
  const [a, b] = [new CipherState(), new CipherState()];
  a.initializeKey(key);
  b.initializeKey(key);
  assertEquals(b.decryptWithAd(EMPTY, a.encryptWithAd(EMPTY, text("before"))), text("before"));
  a.rekey();
  b.rekey();
  assertEquals(a.nonce, 1n);
  const after = a.encryptWithAd(EMPTY, text("after"));
  assertNotEquals(after, aeadEncrypt(key, 1n, EMPTY, text("after")), "the key changed");
  const expectedKey = aeadEncrypt(key, MAX_NONCE, EMPTY, new Uint8Array(32)).slice(0, 32);
  assertEquals(after, aeadEncrypt(expectedKey, 1n, EMPTY, text("after")), "REKEY per spec");
  assertEquals(b.decryptWithAd(EMPTY, after), text("after"));
  a.rekey();
  assertThrows(() => b.decryptWithAd(EMPTY, a.encryptWithAd(EMPTY, text("x"))), DecryptError);
});

Deno.test("a wiped cipher state refuses to encrypt rather than pass plaintext through", () => {
  const [a] = cipherPair();
  a.wipe();
  assertEquals(a.hasKey(), false);
  assertThrows(() => a.encryptWithAd(EMPTY, text("secret")), HandshakeStateError, "wiped");
});

Deno.test("dh() throws InvalidDhError for low-order public keys", () => {
  const me = generateKeyPair();
  const lowOrder = [
    "0000000000000000000000000000000000000000000000000000000000000000", // 0
    "0100000000000000000000000000000000000000000000000000000000000000", // 1
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800", // order 8
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157", // order 8
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // p - 1
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // p (= 0)
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // p + 1 (= 1)
  ];
  for (const point of lowOrder) {
    const pub = Uint8Array.from(point.match(/../g)!, (b) => parseInt(b, 16));
    assertThrows(() => dh(me.privateKey, pub), InvalidDhError, "low-order");
  }
});

Deno.test("dh() agrees on both sides and rejects keys of the wrong length", () => {
  const a = generateKeyPair();
  const b = generateKeyPair();
  assertEquals(dh(a.privateKey, b.publicKey), dh(b.privateKey, a.publicKey));
  assertThrows(() => dh(a.privateKey, b.publicKey.subarray(1)), RangeError, "32 bytes");
});

Deno.test("a handshake whose peer sends a low-order ephemeral fails with InvalidDhError", () => {
  const responder = new HandshakeState({ pattern: "NN", initiator: false });
  responder.readMessage(new Uint8Array(32)); // e = the all-zero point, empty payload
  assertThrows(() => responder.writeMessage(), InvalidDhError);
  assertEquals(responder.status, "failed");
});

Deno.test("handshake steps out of order throw HandshakeStateError", () => {
  const [initiator, responder] = pair();
  assertThrows(() => initiator.readMessage(new Uint8Array(48)), HandshakeStateError, "ours");
  assertThrows(() => responder.writeMessage(), HandshakeStateError, "peer's");
  assertThrows(() => initiator.split(), HandshakeStateError, "before the handshake is complete");
  const m1 = initiator.writeMessage();
  assertThrows(() => initiator.writeMessage(), HandshakeStateError, "peer's");
  responder.readMessage(m1);
  initiator.readMessage(responder.writeMessage());
  responder.readMessage(initiator.writeMessage());
  assertEquals(initiator.status, "complete");
  assertThrows(() => initiator.writeMessage(), HandshakeStateError, "split()");
  assertThrows(() => responder.readMessage(m1), HandshakeStateError, "complete");
  initiator.split();
  assertThrows(() => initiator.split(), HandshakeStateError, "already");
  assertThrows(() => initiator.writeMessage(), HandshakeStateError, "split");
});

Deno.test("a state misuse does not fail the handshake", () => {
  const [initiator, responder] = pair();
  assertThrows(() => responder.writeMessage(), HandshakeStateError);
  assertEquals(responder.status, "read");
  handshake(initiator, responder);
});

Deno.test("split() wipes the ephemeral private key and keeps the handshake hash", () => {
  const initiatorE = generateKeyPair();
  const responderE = generateKeyPair();
  const make = (initiator: boolean, e: typeof initiatorE) =>
    new HandshakeState({
      pattern: "XXpsk0",
      initiator,
      s: generateKeyPair(),
      e,
      psks: [KEYS.psk],
    });
  const initiator = make(true, initiatorE);
  const responder = make(false, responderE);
  handshake(initiator, responder);
  const hashBefore = initiator.handshakeHash;
  assertNotEquals(initiatorE.privateKey, new Uint8Array(32));
  initiator.split();
  responder.split();
  assertEquals(initiatorE.privateKey, new Uint8Array(32));
  assertEquals(responderE.privateKey, new Uint8Array(32));
  assertEquals(initiator.handshakeHash, hashBefore);
  assertEquals(initiator.handshakeHash, responder.handshakeHash);
});

Deno.test("a replayed first message gets a fresh responder nowhere", () => {
  const [initiator, responder] = pair({ fixedEphemerals: false });
  const [m1, , m3] = handshake(initiator, responder);
  initiator.split();
  const [, fresh] = pair({ fixedEphemerals: false });
  // An attacker replays the initiator's first message: the fresh responder accepts it (it
  // cannot tell) and answers with a new ephemeral...
  assertEquals(fresh.readMessage(m1!), text("hello"));
  const answer = fresh.writeMessage(text("from responder"));
  // ...which the original initiator, already done, will not take...
  assertThrows(() => initiator.readMessage(answer), HandshakeStateError);
  // ...and the initiator's recorded third message does not authenticate to it.
  assertThrows(() => fresh.readMessage(m3!), DecryptError);
  assertEquals(fresh.status, "failed");
});

Deno.test("psk variants are derived from the base pattern", () => {
  assertEquals(resolvePattern("XX").messages, [["e"], ["e", "ee", "s", "es"], ["s", "se"]]);
  assertEquals(resolvePattern("XXpsk0+psk3").messages, [
    ["psk", "e"],
    ["e", "ee", "s", "es"],
    ["s", "se", "psk"],
  ]);
  assertEquals(resolvePattern("IKpsk2").messages, [["e", "es", "s", "ss"], [
    "e",
    "ee",
    "se",
    "psk",
  ]]);
  assertEquals(resolvePattern("NNpsk0").preMessages, { initiator: [], responder: [] });
  assertEquals(resolvePattern("Kpsk0").preMessages, { initiator: ["s"], responder: ["s"] });
  assertThrows(() => resolvePattern("XXpsk4"), RangeError, "psk");
  assertThrows(() => resolvePattern("XXpsk2+psk0"), RangeError, "ascending");
  assertThrows(() => resolvePattern("XXfallback"), RangeError, "unknown");
  assertThrows(() => resolvePattern("XXpsk0+hfs"), RangeError, "unsupported modifier");
});

Deno.test("parseProtocolName() rejects other suites and malformed names", () => {
  const parsed = parseProtocolName("Noise_XXpsk0+psk3_25519_ChaChaPoly_BLAKE2s");
  assertEquals(parsed.pattern.name, "XXpsk0+psk3");
  assertThrows(
    () => parseProtocolName("Noise_XX_25519_AESGCM_SHA256"),
    RangeError,
    "unsupported Noise suite",
  );
  assertThrows(
    () => parseProtocolName("Noise_XX_448_ChaChaPoly_BLAKE2s"),
    RangeError,
    "unsupported Noise suite",
  );
  assertThrows(() => parseProtocolName("NoisePSK_XX_25519_ChaChaPoly_BLAKE2s"), RangeError);
  assertThrows(() => parseProtocolName("Noise_XX"), RangeError, "malformed");
});

Deno.test("HandshakeState refuses to start without the keys its pattern needs", () => {
  assertThrows(
    () => new HandshakeState({ pattern: "XX", initiator: true }),
    TypeError,
    "static key pair",
  );
  assertThrows(
    () => new HandshakeState({ pattern: "IK", initiator: true, s: generateKeyPair() }),
    TypeError,
    "rs",
  );
  assertThrows(
    () => new HandshakeState({ pattern: "XXpsk0", initiator: true, s: generateKeyPair() }),
    TypeError,
    "psk",
  );
  assertThrows(
    () =>
      new HandshakeState({
        pattern: "XX",
        initiator: true,
        s: generateKeyPair(),
        rs: generateKeyPair().publicKey,
      }),
    TypeError,
    "do not pass rs",
  );
});

Deno.test("publicKeyFingerprint() is SHA256: and 22 base64 characters, stable per key", () => {
  const key = generateKeyPair().publicKey;
  const fingerprint = publicKeyFingerprint(key);
  assertMatch(fingerprint, /^SHA256:[A-Za-z0-9+/]{22}$/);
  assertEquals(publicKeyFingerprint(new Uint8Array(key)), fingerprint);
  assertNotEquals(publicKeyFingerprint(generateKeyPair().publicKey), fingerprint);
});

Deno.test("keyPairFromPrivate() copies the private key and derives the matching public key", () => {
  const generated = generateKeyPair();
  const derived = keyPairFromPrivate(generated.privateKey);
  assertEquals(derived.publicKey, generated.publicKey);
  assert(derived.privateKey !== generated.privateKey);
  assertEquals(derived.privateKey, generated.privateKey);
});

Deno.test("dhOperations() counts X25519 computations, failed ones included", () => {
  const a = generateKeyPair();
  const before = dhOperations();
  dh(a.privateKey, generateKeyPair().publicKey);
  assertThrows(() => dh(a.privateKey, new Uint8Array(32)), InvalidDhError);
  assertEquals(dhOperations() - before, 2);
});

Deno.test("aeadEncryptParts() equals aeadEncrypt() of the joined parts, with and without ad", () => {
  const key = randomBytes(32);
  const plain = randomBytes(70_000).subarray(0, 65_519);
  const splits = [[], [0], [12], [12, 12, 4000], [65_519]];
  for (const ad of [EMPTY, text("associated")]) {
    for (const cuts of splits) {
      const parts: Uint8Array[] = [];
      let at = 0;
      for (const cut of [...cuts, plain.length]) {
        parts.push(plain.subarray(at, cut));
        at = cut;
      }
      const pieces = aeadEncryptParts(key, 42n, ad, parts);
      const whole = aeadEncrypt(key, 42n, ad, plain);
      assertEquals(concat(...pieces), whole, `cuts ${cuts}`);
      assertEquals(pieces.at(-1)!.length, 16, "the tag comes last, on its own");
      assertEquals(aeadDecrypt(key, 42n, ad, whole), plain);
    }
  }
  assertEquals(concat(...aeadEncryptParts(key, 1n, EMPTY, [])), aeadEncrypt(key, 1n, EMPTY, EMPTY));
});

Deno.test("encryptPartsWithAd() is encryptWithAd() of the joined parts and advances the nonce", () => {
  const key = randomBytes(32);
  const [a, b] = [new CipherState(), new CipherState()];
  a.initializeKey(key);
  b.initializeKey(key);
  const parts = [text("frame one|"), randomBytes(5000), text("|three")];
  const sealed = concat(...a.encryptPartsWithAd(text("ad"), parts));
  assertEquals(a.nonce, 1n);
  assertEquals(b.decryptWithAd(text("ad"), sealed), concat(...parts));
  a.setNonce(MAX_NONCE);
  assertThrows(() => a.encryptPartsWithAd(EMPTY, parts), NonceExhaustedError);
  a.wipe();
  assertThrows(() => a.encryptPartsWithAd(EMPTY, parts), HandshakeStateError, "wiped");
  const keyless = new CipherState();
  keyless.initializeKey(undefined);
  assertEquals(keyless.encryptPartsWithAd(EMPTY, parts), [concat(...parts)]);
});

Deno.test("HMAC by hand (RFC 2104 over BLAKE2s) equals node:crypto's createHmac", () => {
  for (const keyLength of [0, 1, 31, 32, 63, 64, 65, 200]) {
    const key = randomBytes(keyLength);
    const keyCopy = key.slice();
    const message = randomBytes(150);
    const native = hmacNative(key, [message]);
    assertEquals(native.length, 32);
    assertEquals(hmacByHand(key, [message]), native, `key of ${keyLength} bytes`);
    assertEquals(hmacByHand(key, [message.subarray(0, 7), EMPTY, message.subarray(7)]), native);
    assertEquals(hmac(key, message.subarray(0, 100), message.subarray(100)), native);
    assertEquals(key, keyCopy, "the key is left as it was");
  }
  const [ck, ikm] = [randomBytes(32), randomBytes(32)];
  const temp = hmacNative(ck, [ikm]);
  const out1 = hmacNative(temp, [Uint8Array.of(1)]);
  const out2 = hmacNative(temp, [out1, Uint8Array.of(2)]);
  assertEquals(hkdf(ck, ikm, 2), [out1, out2]);
});

Deno.test("generateKeyPair() gives raw halves that match, and dh() agrees with imported keys", () => {
  const a = generateKeyPair();
  const b = generateKeyPair();
  assertEquals([a.publicKey.length, a.privateKey.length], [32, 32]);
  assertEquals(keyPairFromPrivate(a.privateKey).publicKey, a.publicKey);
  assertNotEquals(a.privateKey, b.privateKey);
  const shared = dh(a.privateKey, b.publicKey);
  assertEquals(dh(b.privateKey, a.publicKey), shared);
  // The same bytes in fresh arrays (no cached key objects) give the same secret.
  assertEquals(dh(new Uint8Array(a.privateKey), new Uint8Array(b.publicKey)), shared);
  assertEquals(dh(keyPairFromPrivate(a.privateKey).privateKey, b.publicKey), shared);
});

Deno.test("dh() notices a key array changed in place and does not reuse its cached key object", () => {
  const a = generateKeyPair();
  const b = generateKeyPair();
  const c = generateKeyPair();
  const peer = new Uint8Array(b.publicKey);
  const withB = dh(a.privateKey, peer);
  peer.set(c.publicKey); // same array, other key
  assertEquals(dh(a.privateKey, peer), dh(c.privateKey, a.publicKey));
  assertNotEquals(dh(a.privateKey, peer), withB);
  const mine = new Uint8Array(a.privateKey);
  assertEquals(dh(mine, b.publicKey), withB);
  mine.set(c.privateKey); // same array, other private key
  assertEquals(dh(mine, b.publicKey), dh(b.privateKey, c.publicKey));
  wipe(mine);
  assertEquals(mine, new Uint8Array(32));
});

Deno.test("abandon() wipes a handshake given up midway and leaves it unusable", () => {
  const ephemeral = keyPairFromPrivate(KEYS.initiatorEphemeral);
  const initiator = new HandshakeState({
    protocolName: XXPSK0,
    initiator: true,
    prologue: text("nodectl test"),
    s: keyPairFromPrivate(KEYS.initiatorStatic),
    e: ephemeral,
    psks: [KEYS.psk],
  });
  const [, responder] = pair();
  responder.readMessage(initiator.writeMessage(EMPTY));
  initiator.readMessage(responder.writeMessage(EMPTY));
  initiator.abandon();
  assertEquals(initiator.status, "failed");
  assert(ephemeral.privateKey.every((b) => b === 0), "the ephemeral private key is wiped");
  assertThrows(() => initiator.writeMessage(EMPTY), HandshakeStateError);
  initiator.abandon(); // idempotent
  assertEquals(initiator.status, "failed");
});
