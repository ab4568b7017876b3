/**
 * Child processes for the bench: start one, wait for its ready line, read its RSS, stop it.
 *
 * @module
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { cpus } from "node:os";
import process from "node:process";

/** Whether this runs under Deno (else Node). */
export const IS_DENO = "Deno" in globalThis;

const live = new Set<ChildProcess>();
process.on("exit", () => {
  for (const child of live) child.kill("SIGKILL");
});

/**
 * The command that runs TypeScript `script` with `args` in this same runtime: `deno run
 * --allow-all` under Deno, `node` with this process's flags (type stripping) under Node.
 */
export function scriptCommand(script: string, args: string[]): [string, string[]] {
  if (IS_DENO) return [process.execPath, ["run", "--allow-all", "--quiet", script, ...args]];
  return [process.execPath, [...process.execArgv, script, ...args]];
}

const TASKSET = ["/usr/bin/taskset", "/bin/taskset"].find((p) => existsSync(p));

/**
 * Whether processes can be pinned to CPUs (taskset and at least 2 CPUs). Two processes on
 * different CPUs of a VM pay an inter-processor wake-up on every round trip that two on the
 * same CPU do not, and where the scheduler puts them changes from run to run; pinning makes
 * the two-process figures repeatable.
 */
export const CAN_PIN = TASKSET !== undefined && cpus().length >= 2;

/** `cmd args`, run pinned to CPU `cpu` when pinning is possible. */
export function pinned(cpu: number, [cmd, args]: [string, string[]]): [string, string[]] {
  return CAN_PIN ? [TASKSET!, ["-c", String(cpu), cmd, ...args]] : [cmd, args];
}

/** Pins every thread of this process to `cpuList` ("0", "0-1"); no-op when pinning is off. */
export function pinSelf(cpuList: string): void {
  if (!CAN_PIN) return;
  spawnSync(TASKSET!, ["-a", "-p", "-c", cpuList, String(process.pid)], { stdio: "ignore" });
}

/** Every CPU, as a taskset list. */
export function allCpus(): string {
  return `0-${cpus().length - 1}`;
}

/** A started child and the first line that matched its ready pattern. */
export interface Started {
  readonly child: ChildProcess;
  readonly match: RegExpMatchArray;
}

/**
 * Spawns `cmd args` and resolves once a line of `stream` matches `ready`; rejects if the child
 * exits first or nothing matches within `timeoutMs`. Output not matched is kept and included in
 * the error.
 */
export function startChild(
  cmd: string,
  args: string[],
  options: {
    env?: Record<string, string>;
    stream: "stdout" | "stderr";
    ready: RegExp;
    timeoutMs: number;
  },
): Promise<Started> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      env: options.env ?? (process.env as Record<string, string>),
      stdio: ["pipe", "pipe", "pipe"],
    });
    live.add(child);
    child.once("exit", () => live.delete(child));
    let seen = "";
    let done = false;
    const finish = (err: Error | null, match?: RegExpMatchArray) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (err) {
        child.kill("SIGKILL");
        reject(new Error(`${err.message}; output: ${seen.trim().slice(-600) || "(none)"}`));
      } else {
        resolve({ child, match: match! });
      }
    };
    const timer = setTimeout(
      () => finish(new Error(`${cmd} printed no ready line within ${options.timeoutMs} ms`)),
      options.timeoutMs,
    );
    const watched = options.stream === "stdout" ? child.stdout! : child.stderr!;
    const other = options.stream === "stdout" ? child.stderr! : child.stdout!;
    let pending = "";
    watched.setEncoding("utf8");
    watched.on("data", (chunk: string) => {
      if (done) return;
      seen += chunk;
      pending += chunk;
      const lines = pending.split("\n");
      pending = lines.pop() ?? "";
      for (const line of lines) {
        const m = line.match(options.ready);
        if (m) return finish(null, m);
      }
    });
    other.setEncoding("utf8");
    other.on("data", (chunk: string) => {
      if (!done) seen += chunk;
    });
    child.on("error", (err) => finish(err));
    child.on(
      "exit",
      (code, signal) => finish(new Error(`${cmd} exited (${signal ?? code}) before it was ready`)),
    );
  });
}

/** Resident set of a process in MiB: total (VmRSS), anonymous memory and file-backed pages. */
export interface Rss {
  total: number;
  anon: number;
  file: number;
}

/** The resident set of process `pid`, from /proc/<pid>/status. */
export function rssOf(pid: number): Rss {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (name: string) => {
    const m = status.match(new RegExp(`^${name}:\\s+(\\d+)\\s+kB`, "m"));
    if (!m) throw new Error(`no ${name} in /proc/${pid}/status`);
    return Number(m[1]) / 1024;
  };
  return { total: field("VmRSS"), anon: field("RssAnon"), file: field("RssFile") };
}

/** utime + stime of process `pid` so far, in ms (/proc/<pid>/stat, 10 ms clock ticks). */
export function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/** Sends SIGTERM (SIGKILL after `graceMs`) and resolves once the child exited. */
export function stopChild(child: ChildProcess, graceMs = 3000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    child.stdin?.end();
    child.kill("SIGTERM");
  });
}

/** Waits `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
