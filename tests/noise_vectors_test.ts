/**
 * The 125 published Noise test vectors for 25519_ChaChaPoly_BLAKE2s (cacophony, snow, noise-c),
 * run through HandshakeState and the transport CipherStates. See
 * /work/shared/noise-vectors/MANIFEST.json for the schema and conventions.
 */
import { keyPairFromPrivate } from "../transport/crypto.ts";
import { messageSender, parseProtocolName } from "../transport/noise_patterns.ts";
import { type CipherState, HandshakeState } from "../transport/noise_state.ts";
import { assert, assertEquals } from "./support/assert.ts";

interface Vector {
  protocol_name: string;
  init_prologue: string;
  init_psks?: string[];
  init_static?: string;
  init_ephemeral?: string;
  init_remote_static?: string;
  resp_prologue: string;
  resp_psks?: string[];
  resp_static?: string;
  resp_ephemeral?: string;
  resp_remote_static?: string;
  handshake_hash?: string;
  messages: { payload: string; ciphertext: string }[];
}

const VECTORS_URL = new URL(
  "../../shared/noise-vectors/selected-25519-chachapoly-blake2s.json",
  import.meta.url,
);
const vectors: Vector[] = JSON.parse(Deno.readTextFileSync(VECTORS_URL)).vectors;

// MANIFEST.json "selected_ranges": where each vector came from, for the test names.
function source(index: number): string {
  return index < 59 ? "cacophony" : index < 110 ? "snow" : "noise-c";
}

function bytes(hex: string): Uint8Array {
  return Uint8Array.from(hex.match(/../g) ?? [], (byte) => parseInt(byte, 16));
}

function hex(data: Uint8Array): string {
  return Array.from(data, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

function side(v: Vector, initiator: boolean): HandshakeState {
  const prefix = initiator ? "init" : "resp";
  const field = (name: string) => v[`${prefix}_${name}` as keyof Vector] as string | undefined;
  const s = field("static");
  const e = field("ephemeral");
  const rs = field("remote_static");
  const psks = (initiator ? v.init_psks : v.resp_psks) ?? [];
  return new HandshakeState({
    protocolName: v.protocol_name,
    initiator,
    prologue: bytes(initiator ? v.init_prologue : v.resp_prologue),
    ...(s === undefined ? {} : { s: keyPairFromPrivate(bytes(s)) }),
    ...(e === undefined ? {} : { e: keyPairFromPrivate(bytes(e)) }),
    ...(rs === undefined ? {} : { rs: bytes(rs) }),
    psks: psks.map(bytes),
  });
}

assertEquals(vectors.length, 125);

vectors.forEach((v, index) => {
  Deno.test(
    `${v.protocol_name} vector ${index} (${source(index)}): handshake and transport match`,
    () => {
      const pattern = parseProtocolName(v.protocol_name).pattern;
      const initiator = side(v, true);
      const responder = side(v, false);
      const handshakeLength = pattern.messages.length;
      let initiatorCiphers: [CipherState, CipherState] | undefined;
      let responderCiphers: [CipherState, CipherState] | undefined;

      v.messages.forEach((m, i) => {
        const fromInitiator = messageSender(pattern, i) === "initiator";
        const payload = bytes(m.payload);
        let ciphertext: Uint8Array;
        let received: Uint8Array;
        if (i < handshakeLength) {
          const [writer, reader] = fromInitiator ? [initiator, responder] : [responder, initiator];
          ciphertext = writer.writeMessage(payload);
          assertEquals(hex(ciphertext), m.ciphertext, `handshake message ${i} ciphertext`);
          received = reader.readMessage(ciphertext);
          const complete = i === handshakeLength - 1;
          assertEquals(initiator.isComplete, complete, `initiator complete after message ${i}`);
          assertEquals(responder.isComplete, complete, `responder complete after message ${i}`);
        } else {
          initiatorCiphers ??= initiator.split();
          responderCiphers ??= responder.split();
          // c1 carries initiator → responder, c2 responder → initiator.
          const [writer, reader] = fromInitiator
            ? [initiatorCiphers[0], responderCiphers[0]]
            : [responderCiphers[1], initiatorCiphers[1]];
          ciphertext = writer.encryptWithAd(new Uint8Array(0), payload);
          assertEquals(hex(ciphertext), m.ciphertext, `transport message ${i} ciphertext`);
          received = reader.decryptWithAd(new Uint8Array(0), ciphertext);
        }
        assertEquals(hex(received), m.payload, `message ${i} payload`);
      });

      assert(initiatorCiphers !== undefined, "the vector has transport messages");
      assertEquals(hex(initiator.handshakeHash), hex(responder.handshakeHash));
      if (v.handshake_hash !== undefined) {
        assertEquals(hex(initiator.handshakeHash), v.handshake_hash, "handshake hash");
      }
    },
  );
});
