import { existsSync } from "node:fs";
import { assert, assertEquals, assertMatch } from "./support/assert.ts";
import { createNodeHome, runNodectl } from "./support/processes.ts";

Deno.test("nodectl demo walks every seed step, succeeds, and removes its temp directory", async () => {
  const home = createNodeHome();
  try {
    const r = await runNodectl(["demo"], home, { env: { NODECTL_COOKIE: "" }, timeoutMs: 60_000 });
    assertEquals(r.code, 0, r.stderr + r.stdout);
    for (
      const step of [
        /== Step 0/,
        /== Step 1/,
        /== Step 2/,
        /== Step 3/,
        /== Step 5/,
        /no service SecretService on public@/,
        /\["private@[^"]+"\]/,
        /cookie mismatch/,
        /HTTP 503: private@/,
        /demo finished/,
      ]
    ) {
      assertMatch(r.stdout, step);
    }
    const dir = /Files in (\S+?);/.exec(r.stdout)?.[1];
    assert(dir !== undefined, "the demo names its directory");
    assert(!existsSync(dir), `${dir} was removed`);
  } finally {
    home.cleanup();
  }
});
