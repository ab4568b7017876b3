/**
 * Races one piece of code in several child processes at once, for tests of what concurrent
 * writers to the same file do.
 */
import { existsSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { assert } from "./assert.ts";

/** The URL of `file` in `transport/`, for a child's dynamic import. */
export function transportModuleUrl(file: string): string {
  return new URL(`../../transport/${file}`, import.meta.url).href;
}

/**
 * Runs `body` (an async function body returning JSON) in `n` child processes that start it at
 * the same moment, and resolves to what each returned. `Deno.args[0]` ends with the child's
 * index.
 */
export async function race(dir: string, n: number, body: string): Promise<unknown[]> {
  const script = join(dir, "race_child.ts");
  const go = join(dir, "go");
  writeFileSync(
    script,
    `import { existsSync, writeFileSync } from "node:fs";
const [ready, go] = Deno.args;
writeFileSync(ready, "");
while (!existsSync(go)) await new Promise((resolve) => setTimeout(resolve, 1));
const result = await (async () => { ${body} })();
console.log(JSON.stringify(result));
`,
  );
  const exited = new Array<boolean>(n).fill(false);
  const children = Array.from({ length: n }, (_, i) => {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", "--no-lock", script, join(dir, `ready-${i}`), go],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    child.status.then(() => exited[i] = true);
    return child;
  });
  const allReady = () => exited.every((_, i) => existsSync(join(dir, `ready-${i}`)));
  while (!allReady() && !exited.some((e) => e)) {
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  writeFileSync(go, "");
  const outputs = await Promise.all(children.map((c) => c.output()));
  for (let i = 0; i < n; i++) rmSync(join(dir, `ready-${i}`), { force: true });
  rmSync(go);
  rmSync(script);
  return outputs.map((out) => {
    const stderr = new TextDecoder().decode(out.stderr);
    assert(out.success, `child failed: ${stderr}`);
    return JSON.parse(new TextDecoder().decode(out.stdout));
  });
}
