/**
 * The compiled single executable, for end-to-end tests: builds compiled/nodectl unless a build
 * newer than every source file already exists, then runs it as a child process.
 */
import { mkdirSync, readdirSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";

const root = new URL("../..", import.meta.url).pathname;
/** Absolute path of the compiled binary. */
export const BINARY = join(root, "compiled", "nodectl");

const SOURCE_DIRS = ["transport", "node", "services", "scripts", "cli"];
const SOURCE_FILES = ["cli.ts", "mod.ts", "version.ts", "deno.json", "package-lock.json"];

function newestSource(): number {
  let newest = 0;
  const visit = (path: string) => {
    let st;
    try {
      st = statSync(path);
    } catch {
      return;
    }
    if (st.isDirectory()) {
      for (const entry of readdirSync(path)) visit(join(path, entry));
    } else if (/\.(ts|json)$/.test(path)) {
      newest = Math.max(newest, st.mtimeMs);
    }
  };
  for (const d of SOURCE_DIRS) visit(join(root, d));
  for (const f of SOURCE_FILES) visit(join(root, f));
  return newest;
}

let built: Promise<string> | undefined;

/** Builds the binary if it is missing or older than a source file; resolves to its path. */
export function ensureBinary(): Promise<string> {
  built ??= (async () => {
    // Test files run in separate processes: a lock directory keeps them from building at once.
    await lock();
    try {
      let binTime = 0;
      try {
        binTime = statSync(BINARY).mtimeMs;
      } catch { /* not built yet */ }
      if (binTime > newestSource()) return BINARY;
      await build();
      return BINARY;
    } finally {
      rmSync(LOCK, { recursive: true, force: true });
    }
  })();
  return built;
}

const LOCK = join(root, "compiled", ".build.lock");

async function lock(): Promise<void> {
  mkdirSync(join(root, "compiled"), { recursive: true });
  for (let i = 0; i < 1200; i++) {
    try {
      mkdirSync(LOCK);
      return;
    } catch {
      // A lock older than two minutes belongs to a build that died: take it over.
      try {
        if (Date.now() - statSync(LOCK).mtimeMs > 120_000) {
          rmSync(LOCK, { recursive: true, force: true });
        }
      } catch { /* gone meanwhile */ }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`could not take ${LOCK} within 120 s`);
}

async function build(): Promise<void> {
  {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", join(root, "scripts", "build.ts")],
      cwd: root,
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      throw new Error(`build failed:\n${new TextDecoder().decode(out.stderr)}`);
    }
  }
}

/** What a finished child process printed and how it exited. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the compiled binary with `args` and waits for it to exit. */
export async function runBinary(
  args: string[],
  opts: { env?: Record<string, string>; clearEnv?: boolean; cwd?: string; binary?: string } = {},
): Promise<RunResult> {
  const bin = opts.binary ?? await ensureBinary();
  const out = await new Deno.Command(bin, {
    args,
    env: opts.env ?? {},
    clearEnv: opts.clearEnv ?? false,
    cwd: opts.cwd ?? root,
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}
