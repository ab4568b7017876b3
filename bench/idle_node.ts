/**
 * A bench helper process: starts one node serving the `Bench` service, prints
 * `ready <port>` on stdout, then idles until its stdin closes (the bench died or is done) or it
 * gets SIGTERM/SIGINT. Used for the idle-RSS figure and as the server of the two-process
 * layout; with `--echo` it also runs a bare TCP echo server (the round-trip floor, measured
 * against the same process) and prints `ready <port> <echo port>`.
 *
 *     deno run --allow-all bench/idle_node.ts <secure|plain> <name> <runDir> <configDir> [--echo]
 *
 * The PSK comes in hex in NODECTL_BENCH_PSK (the bench derives it once).
 *
 * @module
 */
import process from "node:process";
import { Node } from "../node/node.ts";
import { BENCH_SERVICE, benchNetwork, benchService, fromHex, type Mode, PSK_ENV } from "./setup.ts";
import { echoServer } from "./tcp_echo.ts";

const [mode, name, runDir, configDir] = process.argv.slice(2);
const pskHex = process.env[PSK_ENV];
if ((mode !== "secure" && mode !== "plain") || !name || !runDir || !configDir || !pskHex) {
  console.error("usage: idle_node.ts <secure|plain> <name> <runDir> <configDir> (PSK in env)");
  process.exit(2);
}

const node = await Node.start({
  name,
  network: benchNetwork(mode as Mode, name, fromHex(pskHex), configDir),
  listen: { host: "127.0.0.1", port: 0 },
  runDir,
});
node.register(BENCH_SERVICE, benchService());
const echo = process.argv.includes("--echo") ? await echoServer() : undefined;
process.stdout.write(`ready ${node.listenAddress!.port}${echo ? ` ${echo.port}` : ""}\n`);

let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  echo?.server.close();
  await node.stop();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
process.stdin.on("end", stop);
process.stdin.on("close", stop);
process.stdin.resume();
