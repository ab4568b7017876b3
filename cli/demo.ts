/**
 * `nodectl demo`: the seed story, acted out by real processes of this same executable on
 * loopback, with a fresh cookie and every file in a temp directory that is removed afterwards.
 *
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { generateCookie, shortHostname } from "../mod.ts";
import type { Values } from "./common.ts";

/** How this executable is started again: the single binary itself, or deno + cli.ts. */
function self(): string[] {
  const script = process.argv[1];
  if (script === undefined || script === process.execPath || !/\.(ts|js|cjs|mjs)$/.test(script)) {
    return [process.execPath];
  }
  return [process.execPath, "run", "--allow-all", script];
}

const WAIT_MS = 20_000;

interface Running {
  name: string;
  child: ChildProcess;
  output: string[];
}

class Demo {
  readonly dir = mkdtempSync(join(tmpdir(), "nodectl-demo-"));
  readonly host = shortHostname();
  readonly cookie = generateCookie();
  readonly running: Running[] = [];

  env(cookie = this.cookie): Record<string, string> {
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) if (v !== undefined) env[k] = v;
    return {
      ...env,
      NODECTL_COOKIE: cookie,
      XDG_CONFIG_HOME: join(this.dir, "config"),
      XDG_DATA_HOME: join(this.dir, "data"),
      XDG_RUNTIME_DIR: join(this.dir, "run"),
    };
  }

  say(text: string): void {
    process.stdout.write(text + "\n");
  }

  step(title: string): void {
    this.say(`\n== ${title}`);
  }

  /** Starts `nodectl serve ...` and waits until its log matches `ready`. */
  async start(args: string[], ready: RegExp): Promise<{ proc: Running; match: RegExpExecArray }> {
    this.say(`$ nodectl ${args.join(" ")} &`);
    const [cmd, ...pre] = self();
    const child = spawn(cmd!, [...pre, ...args], {
      env: this.env(),
      stdio: ["ignore", "pipe", "pipe"],
    });
    const proc: Running = { name: args.join(" "), child, output: [] };
    this.running.push(proc);
    const match = await new Promise<RegExpExecArray>((resolve, reject) => {
      const timer = setTimeout(
        () =>
          reject(new Error(`'nodectl ${proc.name}' did not get ready within ${WAIT_MS / 1000} s`)),
        WAIT_MS,
      );
      let buffered = "";
      const onData = (chunk: Buffer) => {
        buffered += chunk.toString("utf8");
        let nl;
        while ((nl = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, nl);
          buffered = buffered.slice(nl + 1);
          proc.output.push(line);
          // The short-lived `nodectl call` nodes come and go: not part of the story.
          if (!/\(hidden\)|nodedown call-|SIGTERM received|stopped$/.test(line)) {
            this.say(`  | ${line}`);
          }
          const m = ready.exec(line);
          if (m) {
            clearTimeout(timer);
            resolve(m);
          }
        }
      };
      child.stderr!.on("data", onData);
      child.stdout!.on("data", onData);
      child.on("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`'nodectl ${proc.name}' exited with ${code}:\n${proc.output.join("\n")}`));
      });
    });
    // Keep reading so the child never blocks on a full pipe; show nothing more from it.
    child.removeAllListeners("exit");
    return { proc, match };
  }

  /** Runs a short `nodectl ...` command and shows what it printed. */
  async run(args: string[], cookie?: string): Promise<{ code: number; out: string }> {
    this.say(`$ ${cookie ? "NODECTL_COOKIE=<another cookie> " : ""}nodectl ${args.join(" ")}`);
    const [cmd, ...pre] = self();
    const child = spawn(cmd!, [...pre, ...args], {
      env: this.env(cookie),
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout!.on("data", (c: Buffer) => out += c.toString("utf8"));
    child.stderr!.on("data", (c: Buffer) => out += c.toString("utf8"));
    const code = await new Promise<number>((resolve) => child.on("close", (c) => resolve(c ?? 1)));
    for (const line of out.trimEnd().split("\n")) this.say(`  ${line}`);
    if (code !== 0) this.say(`  (exit ${code})`);
    return { code, out };
  }

  async get(url: string): Promise<{ status: number; body: string }> {
    this.say(`$ curl ${url}`);
    const r = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = request(url, (res) => {
        let body = "";
        res.on("data", (c: Buffer) => body += c.toString("utf8"));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      });
      req.on("error", reject);
      req.setTimeout(WAIT_MS, () => req.destroy(new Error(`no answer from ${url}`)));
      req.end();
    });
    this.say(`  HTTP ${r.status}: ${r.body.trimEnd()}`);
    return r;
  }

  expect(cond: boolean, what: string): void {
    if (!cond) throw new Error(`demo step failed: ${what}`);
  }

  async stop(proc: Running): Promise<void> {
    if (proc.child.exitCode !== null || proc.child.signalCode !== null) return;
    const done = new Promise<void>((resolve) => proc.child.once("close", () => resolve()));
    proc.child.kill("SIGTERM");
    const timer = setTimeout(() => proc.child.kill("SIGKILL"), 5000);
    await done;
    clearTimeout(timer);
  }

  async cleanup(keep: boolean): Promise<void> {
    await Promise.all(this.running.map((p) => this.stop(p)));
    if (keep) this.say(`\nleft ${this.dir} in place (--keep)`);
    else rmSync(this.dir, { recursive: true, force: true });
  }
}

const READY = /node (\S+) ready on ([\d.]+):(\d+)/;
const HTTP = /PublicService listening on (http:\/\/[\d.]+:\d+)/;

/** Runs the demo; resolves to 0 when every step behaved as the seed says. */
export async function demo(values: Values): Promise<number> {
  const d = new Demo();
  const h = d.host;
  try {
    d.say("nodectl demo: the seed story (private node with a Secret database, public node calling");
    d.say(`it), on loopback, as processes of this executable. Files in ${d.dir}; a fresh 256-bit`);
    d.say("cookie is passed in NODECTL_COOKIE (never on a command line).");

    d.step("Step 0 — only the private node");
    const priv = await d.start(
      ["serve", "--role", "private", "--sname", "private", "--listen", "127.0.0.1:0"],
      READY,
    );
    const r0 = await d.run(["call", "get_data", "--to", "private"]);
    d.expect(r0.code === 0 && r0.out.trim() === "secret data", "step 0 call returns the secret");

    d.step("Step 1 — one process runs both roles; PrivateAPI calls SecretService in-process");
    const both = await d.start(
      [
        "serve",
        "--role",
        "private,public",
        "--sname",
        "both",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
      ],
      HTTP,
    );
    const r1 = await d.get(`${both.match[1]}/data`);
    d.expect(r1.status === 200 && r1.body === "secret data", "step 1 GET /data");
    await d.stop(both.proc);

    d.step("Step 2 — two processes, short names");
    const pub = await d.start(
      [
        "serve",
        "--role",
        "public",
        "--sname",
        "public",
        "--http",
        "127.0.0.1:0",
        "--private-node",
        `private@${h}`,
      ],
      HTTP,
    );
    d.say(
      "# SecretService is registered on private only: asking public for it fails, as in Erlang.",
    );
    const miss = await d.run(["call", "get_data", "--to", "public"]);
    d.expect(miss.code === 3, "step 2 local-name miss is noproc (exit 3)");
    d.say("# Node.list on public before any call: empty.");
    const before = await d.run(["call", "Node.nodes", "--to", "public"]);
    d.expect(before.out.trim() === "[]", "step 2 public has no connections yet");
    d.say("# A call naming the private node connects automatically.");
    const r2 = await d.get(`${pub.match[1]}/data`);
    d.expect(r2.status === 200 && r2.body === "secret data", "step 2 GET /data through public");
    const after = await d.run(["call", "Node.nodes", "--to", "public"]);
    d.expect(after.out.includes(`private@${h}`), "step 2 public is now connected to private");

    d.step("Step 3 — long names and the cookie (encrypted, mutually authenticated)");
    const longPriv = await d.start(
      // Its own run directory: as far as names go, this node is on a second server.
      [
        "serve",
        "--role",
        "private",
        "--name",
        "private@127.0.0.1",
        "--listen",
        "127.0.0.1:0",
        "--run-dir",
        join(d.dir, "server2-run"),
      ],
      READY,
    );
    const port = longPriv.match[3];
    const r3 = await d.run(["call", "SecretService.get_data", "--to", `private@127.0.0.1:${port}`]);
    d.expect(r3.code === 0 && r3.out.trim() === "secret data", "step 3 call with a long name");
    d.say(
      "# A node with another cookie gets nothing: the private node drops it at the first message.",
    );
    const bad = await d.run(
      ["call", "get_data", "--to", `private@127.0.0.1:${port}`],
      generateCookie(),
    );
    d.expect(bad.code === 7, "step 3 wrong cookie is auth_failed (exit 7)");
    await new Promise((r) => setTimeout(r, 200));
    const why = longPriv.proc.output.find((l) => /cookie mismatch/.test(l));
    d.say(`  private node's log: ${why ?? "(no line yet)"}`);
    d.expect(why !== undefined, "step 3 the private node logs the cookie mismatch");

    d.step("Step 4 — IPsec: not needed; every byte between nodes is already Noise-encrypted");
    d.say(
      "# (the end-to-end tests capture the wire with tcpdump and find no secret, name or cookie)",
    );

    d.step("Step 5 — releases: configuration you can find");
    d.say(
      "# One executable; the cookie comes from NODECTL_COOKIE or ~/.config/nodectl/cookie (0600),",
    );
    d.say("# keys and known_nodes live beside it, and `nodectl cookie` says which one is in use:");
    await d.run(["cookie"]);
    d.say("# The public HTTP front reports the private node's health:");
    const health = await d.get(`${pub.match[1]}/healthz`);
    d.expect(health.status === 200, "healthz is 200 while private is up");
    await d.stop(priv.proc);
    d.say("# private stopped: the public node notices and says why.");
    await new Promise((r) => setTimeout(r, 300));
    const down = await d.get(`${pub.match[1]}/healthz`);
    d.expect(down.status === 503, "healthz is 503 once private is down");

    d.say(
      "\ndemo finished: every step behaved as the seed describes, over Noise instead of cleartext.",
    );
    return 0;
  } catch (err) {
    process.stderr.write(
      `nodectl: demo failed: ${(err as Error).message.replace(/\s*\n\s*/g, " | ")}\n`,
    );
    return 1;
  } finally {
    await d.cleanup(values.keep === true);
  }
}
