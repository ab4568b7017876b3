/**
 * A bench helper process for session throughput across two processes: listens on 127.0.0.1
 * (Noise or plain sessions), prints `ready <port>`, and on every session answers each message
 * `<count> <size>` (ASCII) with `count` messages of `size` bytes. In `tcp` mode it does the
 * same on a bare node:net socket (the request is one line; the answer is `count * size` bytes
 * written in 64 KiB chunks): the TCP loopback limit. Exits when its stdin closes or on SIGTERM.
 *
 *     deno run --allow-all bench/session_peer.ts <secure|plain|tcp>
 *
 * The PSK comes in hex in NODECTL_BENCH_PSK.
 *
 * @module
 */
import { randomBytes } from "node:crypto";
import { createServer, type Socket } from "node:net";
import process from "node:process";
import { generateKeyPair } from "../transport/crypto.ts";
import { plainNetwork, secureNetwork, tcpDialer } from "../transport/network.ts";
import type { Network, Session } from "../transport/types.ts";
import { fromHex, PSK_ENV } from "./setup.ts";

/** Node name the peer presents. */
export const SESSION_PEER_NAME = "benchpeer@127.0.0.1";

async function serve(session: Session): Promise<void> {
  const blobs = new Map<number, Uint8Array>();
  for await (const request of session) {
    const [count, size] = new TextDecoder().decode(request).split(" ").map(Number);
    if (!Number.isInteger(count) || !Number.isInteger(size) || size! > 64 * 1024 * 1024) break;
    let blob = blobs.get(size!);
    if (!blob) blobs.set(size!, blob = randomBytes(size!));
    for (let i = 0; i < count!; i++) await session.send(blob);
  }
}

/** Answers `<count> <size>\n` with count * size bytes, honouring backpressure. */
function serveRaw(socket: Socket): void {
  socket.setNoDelay(true);
  const chunk = randomBytes(64 * 1024);
  let line = "";
  socket.on("data", async (data: Uint8Array) => {
    line += new TextDecoder().decode(data);
    if (!line.endsWith("\n")) return;
    const [count, size] = line.trim().split(" ").map(Number);
    line = "";
    let left = count! * size!;
    while (left > 0) {
      const n = Math.min(left, chunk.length);
      left -= n;
      if (!socket.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
        await new Promise((resolve) => socket.once("drain", resolve));
      }
    }
  });
  socket.on("error", () => socket.destroy());
}

async function listenRaw(): Promise<number> {
  const server = createServer({ noDelay: true }, serveRaw);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  return typeof address === "object" && address ? address.port : 0;
}

if (import.meta.main) {
  const mode = process.argv[2];
  const pskHex = process.env[PSK_ENV];
  if (mode === "tcp") {
    process.stdout.write(`ready ${await listenRaw()}\n`);
  } else if ((mode !== "secure" && mode !== "plain") || !pskHex) {
    console.error("usage: session_peer.ts <secure|plain|tcp> (PSK in NODECTL_BENCH_PSK)");
    process.exit(2);
  } else {
    await listenSessions(mode, pskHex);
  }
  const stop = () => process.exit(0);
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  process.stdin.on("end", stop);
  process.stdin.resume();
}

async function listenSessions(mode: "secure" | "plain", pskHex: string): Promise<void> {
  const network: Network = mode === "plain"
    ? plainNetwork(tcpDialer, { localName: SESSION_PEER_NAME })
    : secureNetwork(tcpDialer, {
      localName: SESSION_PEER_NAME,
      identity: generateKeyPair(),
      psk: fromHex(pskHex),
      log: (line) => console.error(`[session_peer] ${line}`),
    });
  const listener = await network.listen({ host: "127.0.0.1", port: 0 }, (s) => {
    serve(s).catch(() => {}).finally(() => s.close());
  });
  process.stdout.write(`ready ${listener.port}\n`);
}
