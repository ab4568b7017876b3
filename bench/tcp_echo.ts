/**
 * Bare TCP echo (node:net, TCP_NODELAY, no framing, no nodectl): the floor under every call
 * round trip on this machine. `echoServer()` for in-process use; run as a script it listens on
 * 127.0.0.1, prints `ready <port>` and serves until its stdin closes or SIGTERM.
 *
 *     deno run --allow-all bench/tcp_echo.ts
 *
 * @module
 */
import { connect, createServer, type Server, type Socket } from "node:net";
import process from "node:process";

/** Starts an echo server on 127.0.0.1; resolves with it and its port. */
export function echoServer(): Promise<{ server: Server; port: number }> {
  return new Promise((resolve, reject) => {
    const server = createServer({ noDelay: true }, (socket) => {
      socket.on("data", (chunk) => socket.write(chunk));
      socket.on("error", () => socket.destroy());
    });
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      resolve({ server, port: typeof address === "object" && address ? address.port : 0 });
    });
  });
}

/** A connection that sends `size` bytes and waits for them to come back, one at a time. */
export async function pingPong(port: number, size = 16): Promise<{
  roundTrip(): Promise<number>;
  close(): void;
}> {
  const socket: Socket = await new Promise((resolve, reject) => {
    const s = connect({ host: "127.0.0.1", port, noDelay: true }, () => resolve(s));
    s.once("error", reject);
  });
  const payload = new Uint8Array(size).fill(7);
  let waiting = 0;
  let done: (() => void) | null = null;
  socket.on("data", (chunk: Uint8Array) => {
    waiting -= chunk.length;
    if (waiting <= 0 && done) {
      const d = done;
      done = null;
      d();
    }
  });
  return {
    roundTrip() {
      const t0 = performance.now();
      waiting = size;
      const back = new Promise<void>((resolve) => done = resolve);
      socket.write(payload);
      return back.then(() => (performance.now() - t0) * 1000);
    },
    close() {
      socket.destroy();
    },
  };
}

if (import.meta.main) {
  const { server, port } = await echoServer();
  process.stdout.write(`ready ${port}\n`);
  const stop = () => {
    server.close();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  process.stdin.on("end", stop);
  process.stdin.resume();
}
