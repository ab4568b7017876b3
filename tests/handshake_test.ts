import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AuthFailedError, ProtocolError, TimeoutError } from "../errors.ts";
import { derivePsk } from "../transport/cookie.ts";
import {
  dhOperations,
  generateKeyPair,
  type KeyPair,
  publicKeyFingerprint,
} from "../transport/crypto.ts";
import { type HandshakeConfig, initiate, respond } from "../transport/handshake.ts";
import { KnownNodes } from "../transport/known_nodes.ts";
import { memoryTransportPair } from "../transport/memory.ts";
import { memoryDialer } from "../transport/memory_dialer.ts";
import { secureNetwork } from "../transport/network.ts";
import type { Session, Transport } from "../transport/types.ts";
import { assert, assertEquals, assertMatch, assertRejects } from "./support/assert.ts";

const PSK = derivePsk("correct horse battery staple, cookie of the test suite");
const OTHER_PSK = derivePsk("a completely different cookie for the other cluster");

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), "nodectl-hs-"));
}

interface Side {
  cfg: HandshakeConfig;
  logs: string[];
}

function side(
  name: string,
  opts: Partial<HandshakeConfig> = {},
  identity: KeyPair = generateKeyPair(),
): Side {
  const logs: string[] = [];
  return {
    logs,
    cfg: {
      localName: name,
      identity,
      psk: PSK,
      log: (l) => logs.push(l),
      session: { keepaliveIntervalMs: Infinity, deadPeerTimeoutMs: Infinity },
      ...opts,
    },
  };
}

async function handshake(
  a: Side,
  b: Side,
  expected = b.cfg.localName,
): Promise<{ client: Session; server: Session | undefined }> {
  const [ta, tb] = memoryTransportPair({ remoteAddresses: ["server:4370", "client:50000"] });
  const serverP = respond(tb, b.cfg);
  try {
    const client = await initiate(ta, expected, a.cfg);
    return { client, server: await serverP };
  } catch (err) {
    await serverP;
    throw err;
  }
}

async function roundTrip(client: Session, server: Session): Promise<void> {
  const sit = server[Symbol.asyncIterator]();
  const cit = client[Symbol.asyncIterator]();
  await client.send(new TextEncoder().encode("ping"));
  assertEquals(new TextDecoder().decode((await sit.next()).value), "ping");
  await server.send(new TextEncoder().encode("pong"));
  assertEquals(new TextDecoder().decode((await cit.next()).value), "pong");
}

Deno.test("handshake with the same cookie gives both sides a session naming the other", async () => {
  const a = side("public@host");
  const b = side("private@host");
  const { client, server } = await handshake(a, b);
  assert(server);
  assertEquals(client.peer.name, "private@host");
  assertEquals(server.peer.name, "public@host");
  assertEquals(client.peer.fingerprint, publicKeyFingerprint(b.cfg.identity.publicKey));
  assertEquals(server.peer.fingerprint, publicKeyFingerprint(a.cfg.identity.publicKey));
  await roundTrip(client, server);
  await client.close();
  await server.closed;
});

Deno.test("a peer with another cookie never gets a session; the responder logs why and says nothing", async () => {
  const a = side("public@host", { psk: OTHER_PSK });
  const b = side("private@host");
  const [ta, tb] = memoryTransportPair({ remoteAddresses: ["server:4370", "client:50000"] });
  const received: Uint8Array[] = [];
  // Watch what the responder sends back: nothing at all.
  const serverP = respond(tb, b.cfg);
  const err = await assertRejects(() => initiate(ta, "private@host", a.cfg), AuthFailedError);
  for await (const m of ta) received.push(m);
  assertEquals(err.reason, "cookie_mismatch");
  assertEquals(err.refusedBy, "remote");
  assertMatch(err.message, /cookies differ/);
  assertEquals(await serverP, undefined);
  assertEquals(received.length, 0);
  assertEquals(b.logs.length, 1);
  assertMatch(b.logs[0]!, /client:50000 failed: cookie mismatch/);
});

Deno.test("the responder rejects a wrong cookie on the first message, before any DH", async () => {
  const b = side("private@host");
  const [ta, tb] = memoryTransportPair();
  const serverP = respond(tb, b.cfg);
  // A first message made under another cookie, sent by hand.
  const { HandshakeState } = await import("../transport/noise_state.ts");
  const { prologue, NOISE_PROTOCOL } = await import("../transport/handshake.ts");
  const hs = new HandshakeState({
    protocolName: NOISE_PROTOCOL,
    initiator: true,
    prologue: prologue(),
    s: generateKeyPair(),
    psks: [OTHER_PSK],
  });
  const m1 = hs.writeMessage(new Uint8Array(0));
  const before = dhOperations();
  await ta.send(Uint8Array.of(1, 1, ...m1));
  assertEquals(await serverP, undefined);
  assertEquals(dhOperations() - before, 0, "responder did no DH for a wrong cookie");
  assertMatch(b.logs.join("\n"), /cookie mismatch/);
});

Deno.test("sessions have forward secrecy: the same static keys and cookie give fresh session keys", async () => {
  const ka = generateKeyPair();
  const kb = generateKeyPair();
  const capture = async () => {
    const a = side("public@host", {}, ka);
    const b = side("private@host", {}, kb);
    const [ta, tb] = memoryTransportPair();
    const wire: Uint8Array[] = [];
    const origSend = ta.send.bind(ta);
    ta.send = (m: Uint8Array) => {
      wire.push(m.slice());
      return origSend(m);
    };
    const serverP = respond(tb, b.cfg);
    const client = await initiate(ta, "private@host", a.cfg);
    const server = (await serverP)!;
    await client.send(new TextEncoder().encode("same plaintext"));
    await server[Symbol.asyncIterator]().next();
    await client.close();
    return wire;
  };
  const one = await capture();
  const two = await capture();
  // INIT, FINISH, then the data frame: every one differs although keys, cookie and data match.
  assertEquals(one.length, two.length);
  for (let i = 0; i < one.length; i++) {
    assert(!equalBytes(one[i]!, two[i]!), `wire message ${i} repeated across sessions`);
  }
});

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

Deno.test("a peer's key is pinned on first contact and a changed key is refused with both fingerprints", async () => {
  const dir = tempDir();
  try {
    const path = join(dir, "known_nodes");
    const a = side("public@host", { knownNodes: KnownNodes.load(path, { strict: false }) });
    const first = side("private@host");
    const r1 = await handshake(a, first);
    await r1.client.close();
    assertMatch(readFileSync(path, "utf8"), /^private@host /m);

    const impostor = side("private@host"); // same name, new key
    const err = await assertRejects(() => handshake(a, impostor), AuthFailedError);
    assertEquals(err.reason, "key_changed");
    assertEquals(err.refusedBy, "local");
    assertMatch(err.message, /private@host/);
    assert(err.message.includes(publicKeyFingerprint(first.cfg.identity.publicKey)));
    assert(err.message.includes(publicKeyFingerprint(impostor.cfg.identity.publicKey)));
    assertMatch(err.message, /known-nodes forget private@host/);
    assert(!err.message.includes(Array.from(PSK, (x) => x.toString(16).padStart(2, "0")).join("")));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

Deno.test("the responder refuses a changed initiator key and the initiator learns the peer refused it", async () => {
  const dir = tempDir();
  try {
    const known = KnownNodes.load(join(dir, "known_nodes"), { strict: false });
    const b = side("private@host", { knownNodes: known });
    const r1 = await handshake(side("public@host"), b);
    await r1.client.close();
    const err = await assertRejects(() => handshake(side("public@host"), b), AuthFailedError);
    assertEquals(err.reason, "refused_by_peer");
    assertEquals(err.refusedBy, "remote");
    assertMatch(err.message, /accepted our cookie but refused this node's key/);
    assertMatch(b.logs.join("\n"), /refused public@host .*changed/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

Deno.test("strict known_nodes accepts only listed keys", async () => {
  const dir = tempDir();
  try {
    const path = join(dir, "known_nodes");
    const b = side("private@host");
    const listed = KnownNodes.load(path, { strict: false });
    listed.pin("private@host", b.cfg.identity.publicKey);
    const ok = await handshake(
      side("public@host", { knownNodes: KnownNodes.load(path, { strict: true }) }),
      b,
    );
    await ok.client.close();
    const stranger = side("other@host");
    const err = await assertRejects(
      () =>
        handshake(
          side("public@host", { knownNodes: KnownNodes.load(path, { strict: true }) }),
          stranger,
          "other@host",
        ),
      AuthFailedError,
    );
    assertEquals(err.reason, "key_not_listed");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

Deno.test("a node answering under another name is refused with the name it gave", async () => {
  const err = await assertRejects(
    () => handshake(side("public@host"), side("private@host"), "secret@host"),
    AuthFailedError,
  );
  assertEquals(err.reason, "name_mismatch");
  assertMatch(err.message, /is node private@host, not secret@host/);
});

Deno.test("a protocol version mismatch is reported as such on both sides", async () => {
  const a = side("public@host", { protocolVersion: 2 });
  const b = side("private@host");
  const err = await assertRejects(() => handshake(a, b), ProtocolError);
  assertMatch(err.message, /speaks nodectl protocol 1, this node speaks 2/);
  assertMatch(b.logs.join("\n"), /speaks nodectl protocol 2, this node speaks 1/);
});

Deno.test("a tampered byte at any offset of any handshake message fails the handshake", async () => {
  // Record a good handshake's messages in both directions, then replay each with one byte flipped.
  for (const direction of ["toServer", "toClient"] as const) {
    for (let msgIndex = 0; msgIndex < 2; msgIndex++) {
      let offsets = 0;
      for (let offset = 0;; offset++) {
        const a = side("public@host", { timeoutMs: 500 });
        const b = side("private@host", { timeoutMs: 500 });
        const [ta, tb] = memoryTransportPair();
        const target = direction === "toServer" ? ta : tb;
        let seen = 0;
        let length = 0;
        const orig = target.send.bind(target);
        target.send = (m: Uint8Array) => {
          if (seen++ === msgIndex) {
            length = m.length;
            if (offset < m.length) {
              const c = m.slice();
              c[offset]! ^= 0x01;
              return orig(c);
            }
          }
          return orig(m);
        };
        const serverP = respond(tb, b.cfg);
        const clientP = initiate(ta, "private@host", a.cfg);
        const [cr, sr] = await Promise.allSettled([clientP, serverP]);
        if (offset >= length) break;
        offsets++;
        assertEquals(
          cr.status,
          "rejected",
          `${direction} message ${msgIndex} offset ${offset}: client got a session`,
        );
        assert(sr.status === "fulfilled", "respond() never rejects");
        if (direction === "toClient" && msgIndex === 1) {
          // ACCEPT: the responder had accepted; its session ends as the initiator hangs up.
          if (sr.value) await sr.value.closed;
        } else {
          assertEquals(sr.value, undefined, `server got a session at offset ${offset}`);
        }
      }
      assert(offsets > 16, `covered ${offsets} offsets`);
    }
  }
});

Deno.test("a replayed first message gets an answer but never a session", async () => {
  const b = side("private@host", { timeoutMs: 300 });
  const [ta, tb] = memoryTransportPair();
  let init: Uint8Array | undefined;
  const orig = ta.send.bind(ta);
  ta.send = (m) => {
    init ??= m.slice();
    return orig(m);
  };
  const serverP = respond(tb, b.cfg);
  const client = await initiate(ta, "private@host", side("public@host").cfg);
  await client.close();
  await serverP;
  // The attacker replays INIT; the responder answers, but without the ephemeral key the
  // attacker cannot produce FINISH: whatever it sends, no session results.
  const [ra, rb] = memoryTransportPair();
  const replayP = respond(rb, b.cfg);
  await ra.send(init!);
  const it = ra[Symbol.asyncIterator]();
  const answer = await it.next();
  assert(!answer.done);
  await ra.send(Uint8Array.of(3, ...new Uint8Array(96)));
  assertEquals(await replayP, undefined);
});

Deno.test("a stalled peer is dropped at the handshake deadline without delaying other handshakes", async () => {
  const b = side("private@host", { timeoutMs: 300 });
  const dialer = memoryDialer();
  const sessions: Session[] = [];
  const network = secureNetwork(dialer, b.cfg);
  await network.listen({ host: "private", port: 4370 }, (s) => sessions.push(s));
  // A stalled peer: connects and sends nothing.
  const stalled: Transport = await dialer.connect({ host: "private", port: 4370 });
  // Meanwhile a real peer connects at once.
  const client = secureNetwork(dialer, side("public@host").cfg);
  const session = await client.connect({ host: "private", port: 4370 }, {
    expectedName: "private@host",
  });
  assertEquals(session.peer.name, "private@host");
  assertEquals(b.logs.filter((l) => l.includes("no complete handshake")).length, 0);
  await stalled.closed;
  assertMatch(b.logs.join("\n"), /no complete handshake within 300 ms/);
  await session.close();
});

Deno.test("the initiator's deadline turns a silent responder into a TimeoutError", async () => {
  const [ta] = memoryTransportPair();
  const err = await assertRejects(
    () => initiate(ta, "private@host", side("public@host", { timeoutMs: 200 }).cfg),
    TimeoutError,
  );
  assertMatch(err.message, /did not finish within 200 ms/);
});

Deno.test("strict known_nodes admits a hidden caller whose key is listed under any name", async () => {
  const dir = tempDir();
  try {
    const path = join(dir, "known_nodes");
    const callerKey = generateKeyPair();
    KnownNodes.load(path, { strict: false }).pin("call@host", callerKey.publicKey);
    const b = side("private@host", { knownNodes: KnownNodes.load(path, { strict: true }) });
    const ok = await handshake(side("call-1234@host", { hidden: true }, callerKey), b);
    assert(ok.server);
    assertEquals(ok.server.peer.name, "call-1234@host");
    await ok.client.close();
    const stranger = await assertRejects(
      () => handshake(side("call-999@host", { hidden: true }), b),
      AuthFailedError,
    );
    assertEquals(stranger.reason, "refused_by_peer");
    assertMatch(b.logs.join("\n"), /refused call-999@host/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

Deno.test("a peer must present a name@host node name; 'local' or a bare word is refused", async () => {
  for (const bad of ["local", "no host", "a@b@c"]) {
    const b = side("private@host");
    const err = await assertRejects(() => handshake(side(bad), b), AuthFailedError);
    assertEquals(err.reason, "refused_by_peer");
    assertMatch(b.logs.join("\n"), /without a valid node name/);
  }
});

Deno.test("memoryDialer: a listener on 0.0.0.0 accepts connections for any host, like a socket", async () => {
  const dialer = memoryDialer();
  const accepted: Transport[] = [];
  const listener = await dialer.listen({ host: "0.0.0.0", port: 4370 }, (t) => accepted.push(t));
  const t = await dialer.connect({ host: "private.example", port: 4370 });
  assertEquals(accepted.length, 1);
  t.close();
  await listener.close();
  await assertRejects(() => dialer.connect({ host: "private.example", port: 4370 }));
});
