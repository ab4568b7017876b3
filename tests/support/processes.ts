/**
 * Long-running child processes for end-to-end tests: the compiled binary as a node, tcpdump,
 * sshd, ssh. Each process's stdout and stderr are collected line by line so a test can wait for
 * a line (with a deadline) and print everything the process said when something goes wrong.
 * Every process started here is remembered until it has been reaped; {@link stopAll} ends the
 * ones a test left behind.
 */
import { ensureBinary } from "./binary.ts";

/** Default deadline for a wait, in milliseconds. */
export const WAIT_MS = 20_000;
/** How long {@link ManagedProcess.stop} waits after the first signal before SIGKILL. */
export const GRACE_MS = 5_000;

const IP = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].find((p) => {
  try {
    return Deno.statSync(p).isFile;
  } catch {
    return false;
  }
}) ?? "ip";
const root = new URL("../..", import.meta.url).pathname;

/** How to start a process. */
export interface StartOptions {
  /** Extra environment (merged over this process's environment unless `clearEnv`). */
  env?: Record<string, string>;
  /** Start with only `env` (PATH is kept so `ip`, `tcpdump` and friends are found). */
  clearEnv?: boolean;
  /** Run inside this network namespace, through `ip netns exec` (which execs, keeping the pid). */
  netns?: string;
  /** Working directory (the repository root by default). */
  cwd?: string;
  /** A short name for messages ("private node", "tcpdump"). */
  label?: string;
}

/** What a finished command printed and how it exited. */
export interface CommandResult {
  code: number;
  signal: Deno.Signal | null;
  stdout: string;
  stderr: string;
}

interface Waiter {
  re: RegExp;
  from: number;
  resolve: (m: RegExpMatchArray) => void;
}

/** A started child process whose output is being collected. */
export class ManagedProcess {
  readonly pid: number;
  readonly label: string;
  /** Every complete line of stdout and stderr so far, in arrival order, prefixed by stream. */
  readonly lines: { stream: "stdout" | "stderr"; text: string }[] = [];
  /** Resolves when the process has exited and both streams are drained. */
  readonly finished: Promise<Deno.CommandStatus>;
  #child: Deno.ChildProcess;
  #raw = { stdout: "", stderr: "" };
  #partial = { stdout: "", stderr: "" };
  #waiters = new Set<Waiter>();
  #status: Deno.CommandStatus | undefined;
  #onExit = new Set<() => void>();

  constructor(cmd: string[], options: StartOptions = {}) {
    const [program, ...args] = options.netns === undefined
      ? cmd
      : [IP, "netns", "exec", options.netns, ...cmd];
    if (program === undefined) throw new Error("startProcess: empty command");
    const env = options.clearEnv
      ? { PATH: Deno.env.get("PATH") ?? "/usr/sbin:/usr/bin:/sbin:/bin", ...options.env }
      : options.env;
    this.label = options.label ?? cmd.join(" ");
    const child = new Deno.Command(program, {
      args,
      ...(env === undefined ? {} : { env }),
      clearEnv: options.clearEnv ?? false,
      cwd: options.cwd ?? root,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#child = child;
    this.pid = child.pid;
    live.add(this);
    const pumps = [
      this.#pump("stdout", child.stdout),
      this.#pump("stderr", child.stderr),
    ];
    this.finished = (async () => {
      const status = await child.status;
      await Promise.all(pumps);
      this.#status = status;
      live.delete(this);
      for (const f of this.#onExit) f();
      return status;
    })();
  }

  async #pump(stream: "stdout" | "stderr", body: ReadableStream<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    const take = (text: string) => {
      this.#raw[stream] += text;
      const parts = (this.#partial[stream] + text).split("\n");
      this.#partial[stream] = parts.pop() ?? "";
      for (const line of parts) this.#addLine(stream, line);
    };
    try {
      for await (const chunk of body) take(decoder.decode(chunk, { stream: true }));
    } catch { /* the stream ends with the process */ }
    take(decoder.decode());
    if (this.#partial[stream] !== "") this.#addLine(stream, this.#partial[stream]);
    this.#partial[stream] = "";
  }

  #addLine(stream: "stdout" | "stderr", text: string): void {
    const index = this.lines.length;
    this.lines.push({ stream, text });
    for (const w of this.#waiters) {
      if (index < w.from) continue;
      const m = text.match(w.re);
      if (m) {
        this.#waiters.delete(w);
        w.resolve(m);
      }
    }
  }

  /** Whether the process has exited (and its output has been read to the end). */
  get exited(): boolean {
    return this.#status !== undefined;
  }

  /** The exit status, once {@link exited}. */
  get status(): Deno.CommandStatus | undefined {
    return this.#status;
  }

  /** Everything written to stdout so far. */
  get stdout(): string {
    return this.#raw.stdout;
  }

  /** Everything written to stderr so far. */
  get stderr(): string {
    return this.#raw.stderr;
  }

  /** Number of lines so far; pass it as `from` to wait only for lines that come later. */
  get lineCount(): number {
    return this.lines.length;
  }

  /** All output so far, for failure messages. */
  transcript(): string {
    const body = this.lines.map((l) => `  ${l.stream === "stderr" ? "!" : "|"} ${l.text}`);
    const tail = [this.#partial.stdout, this.#partial.stderr].filter((p) => p !== "");
    const state = this.#status === undefined
      ? "still running"
      : `exited with code ${this.#status.code}${
        this.#status.signal ? ` (signal ${this.#status.signal})` : ""
      }`;
    return [`--- ${this.label} (pid ${this.pid}, ${state}) ---`, ...body, ...tail].join("\n");
  }

  /**
   * Waits until a line (stdout or stderr) at index `from` or later matches `re`; resolves to the
   * match. Rejects, with the whole transcript, when the deadline passes or the process exits first.
   */
  waitForLine(
    re: RegExp,
    options: { timeoutMs?: number; from?: number } = {},
  ): Promise<RegExpMatchArray> {
    const from = options.from ?? 0;
    const timeoutMs = options.timeoutMs ?? WAIT_MS;
    for (let i = from; i < this.lines.length; i++) {
      const m = this.lines[i]!.text.match(re);
      if (m) return Promise.resolve(m);
    }
    if (this.exited) {
      return Promise.reject(
        new Error(
          `${this.label} exited before printing a line matching ${re}\n${this.transcript()}`,
        ),
      );
    }
    return new Promise((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined = undefined;
      const done = () => {
        clearTimeout(timer);
        this.#waiters.delete(waiter);
        this.#onExit.delete(onExit);
      };
      const waiter: Waiter = {
        re,
        from,
        resolve: (m) => {
          done();
          resolve(m);
        },
      };
      const onExit = () => {
        done();
        reject(
          new Error(
            `${this.label} exited before printing a line matching ${re}\n${this.transcript()}`,
          ),
        );
      };
      timer = setTimeout(() => {
        done();
        reject(
          new Error(
            `${this.label}: no line matching ${re} within ${timeoutMs} ms\n${this.transcript()}`,
          ),
        );
      }, timeoutMs);
      this.#waiters.add(waiter);
      this.#onExit.add(onExit);
    });
  }

  /** Sends `signal` if the process is still running. */
  kill(signal: Deno.Signal = "SIGTERM"): void {
    if (this.exited) return;
    try {
      this.#child.kill(signal);
    } catch { /* it exited in the meantime */ }
  }

  /**
   * Stops the process: `signal` (SIGTERM by default), then SIGKILL if it is still running after
   * `graceMs`. Resolves once it is reaped; safe to call more than once.
   */
  async stop(
    options: { signal?: Deno.Signal; graceMs?: number } = {},
  ): Promise<Deno.CommandStatus> {
    if (this.#status !== undefined) return this.#status;
    this.kill(options.signal ?? "SIGTERM");
    let timer: ReturnType<typeof setTimeout> | undefined = undefined;
    const killed = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        this.kill("SIGKILL");
        resolve();
      }, options.graceMs ?? GRACE_MS);
    });
    try {
      await Promise.race([this.finished, killed]);
      return await this.finished;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Same as {@link stop}, for `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

const live = new Set<ManagedProcess>();

/** Starts `cmd` (optionally inside a network namespace) and collects its output. */
export function startProcess(cmd: string[], options: StartOptions = {}): ManagedProcess {
  return new ManagedProcess(cmd, options);
}

/** Starts the compiled binary with `args` as a long-running process. */
export async function startBinary(
  args: string[],
  options: StartOptions = {},
): Promise<ManagedProcess> {
  const bin = await ensureBinary();
  return startProcess([bin, ...args], { label: `nodectl ${args.join(" ")}`, ...options });
}

/** Stops every process started here that is still running (SIGTERM, then SIGKILL). */
export async function stopAll(): Promise<void> {
  await Promise.all([...live].map((p) => p.stop()));
}

/**
 * Runs `cmd` to completion (optionally inside a network namespace); SIGKILLs it if it is still
 * running after `timeoutMs`, so a hung command cannot hang the test run.
 */
export async function runCommand(
  cmd: string[],
  options: StartOptions & { timeoutMs?: number } = {},
): Promise<CommandResult> {
  const p = startProcess(cmd, options);
  let timer: ReturnType<typeof setTimeout> | undefined = undefined;
  let timedOut = false;
  const deadline = new Promise<void>((resolve) => {
    timer = setTimeout(() => {
      timedOut = true;
      p.kill("SIGKILL");
      resolve();
    }, options.timeoutMs ?? WAIT_MS);
  });
  try {
    await Promise.race([p.finished, deadline]);
    const status = await p.finished;
    if (timedOut) {
      throw new Error(
        `${p.label} did not finish within ${options.timeoutMs ?? WAIT_MS} ms\n${p.transcript()}`,
      );
    }
    return { code: status.code, signal: status.signal, stdout: p.stdout, stderr: p.stderr };
  } finally {
    clearTimeout(timer);
  }
}

/** Runs the compiled binary with `args` to completion, with a deadline (see {@link runCommand}). */
export async function runBinaryBounded(
  args: string[],
  options: StartOptions & { timeoutMs?: number } = {},
): Promise<CommandResult> {
  const bin = await ensureBinary();
  return runCommand([bin, ...args], { label: `nodectl ${args.join(" ")}`, ...options });
}

/** Formats a finished command for a failure message. */
export function describeResult(what: string, r: CommandResult): string {
  return `${what}: exit ${r.code}${r.signal ? ` (signal ${r.signal})` : ""}\n`
    + `stdout: ${JSON.stringify(r.stdout)}\nstderr: ${JSON.stringify(r.stderr)}`;
}

/** A port on 127.0.0.1 that was free a moment ago (bound to 0, read, released). */
export function freeLoopbackPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    return (listener.addr as Deno.NetAddr).port;
  } finally {
    listener.close();
  }
}

/** Waits until a TCP connection to host:port succeeds (closing it at once), within the deadline. */
export async function waitForTcp(
  host: string,
  port: number,
  options: { timeoutMs?: number; alive?: () => boolean; what?: string } = {},
): Promise<void> {
  const deadline = Date.now() + (options.timeoutMs ?? WAIT_MS);
  let last: unknown;
  for (let attempt = 0; attempt < 10_000 && Date.now() < deadline; attempt++) {
    if (options.alive && !options.alive()) {
      throw new Error(`${options.what ?? `${host}:${port}`} went away while waiting for it`);
    }
    try {
      const conn = await Deno.connect({ hostname: host, port });
      conn.close();
      return;
    } catch (err) {
      last = err;
    }
    await sleep(100);
  }
  throw new Error(
    `${options.what ?? `${host}:${port}`} did not accept a TCP connection within `
      + `${options.timeoutMs ?? WAIT_MS} ms: ${String(last)}`,
  );
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A fresh 256-bit cookie, hex: strong enough that no weak-cookie check refuses it. */
export function randomCookie(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * A private home for nodes and callers: config, data and run directories under one temp
 * directory, so a test never touches the real home and parallel runs never share a run dir.
 */
export interface NodeHome {
  readonly dir: string;
  readonly cookie: string;
  /** The environment for the binary (use with `clearEnv: true`); `overrides` win. */
  env(overrides?: Record<string, string>): Record<string, string>;
  /** Removes the directory. */
  cleanup(): void;
}

/** Creates a {@link NodeHome} with `cookie` (a fresh random one by default). */
export function createNodeHome(cookie: string = randomCookie()): NodeHome {
  const dir = Deno.makeTempDirSync({ prefix: `nodectl-e2e-${Deno.pid}-` });
  for (const sub of ["home", "config", "data", "run"]) {
    Deno.mkdirSync(`${dir}/${sub}`, { mode: 0o700 });
  }
  return {
    dir,
    cookie,
    env: (overrides = {}) => ({
      HOME: `${dir}/home`,
      XDG_CONFIG_HOME: `${dir}/config`,
      XDG_DATA_HOME: `${dir}/data`,
      XDG_RUNTIME_DIR: `${dir}/run`,
      NODECTL_COOKIE: cookie,
      NO_COLOR: "1",
      ...overrides,
    }),
    cleanup: () => Deno.removeSync(dir, { recursive: true }),
  };
}

/** A started node and where it said it listens. */
export interface StartedNode {
  readonly process: ManagedProcess;
  /** The node name from the ready line ("private@host"). */
  readonly name: string;
  readonly host: string;
  readonly port: number;
}

/** The line `serve` prints once it accepts connections. */
export const READY_LINE = /node (\S+) ready on (\S+):([0-9]+)/;

/**
 * Starts `nodectl serve ARGS` (inside `netns` when given) with `home`'s environment only, and
 * waits until it prints its ready line. On failure the process is stopped and the error carries
 * everything it printed.
 */
export async function startNode(
  args: string[],
  home: NodeHome,
  options: { netns?: string; env?: Record<string, string>; label?: string } = {},
): Promise<StartedNode> {
  const proc = await startBinary(["serve", ...args], {
    env: home.env(options.env),
    clearEnv: true,
    ...(options.netns === undefined ? {} : { netns: options.netns }),
    ...(options.label === undefined ? {} : { label: options.label }),
  });
  try {
    const m = await proc.waitForLine(READY_LINE);
    return { process: proc, name: m[1]!, host: m[2]!.replace(/^\[|\]$/g, ""), port: Number(m[3]) };
  } catch (err) {
    await proc.stop();
    throw err;
  }
}

/** Runs `nodectl ARGS` to completion with `home`'s environment only (see {@link runCommand}). */
export function runNodectl(
  args: string[],
  home: NodeHome,
  options: { netns?: string; env?: Record<string, string>; timeoutMs?: number } = {},
): Promise<CommandResult> {
  return runBinaryBounded(args, {
    env: home.env(options.env),
    clearEnv: true,
    ...(options.netns === undefined ? {} : { netns: options.netns }),
    ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
  });
}
