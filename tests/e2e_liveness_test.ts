/**
 * Dead-peer detection between two real processes of the compiled binary: a private node frozen
 * with SIGSTOP sends nothing and closes nothing — a partition, as far as the public node can
 * tell. The public node must declare it down within the configured window.
 */
import { assert, assertMatch } from "./support/assert.ts";
import { createNodeHome, startNode, stopAll } from "./support/processes.ts";

Deno.test("a frozen peer is declared nodedown within the dead-peer timeout, and comes back after", async () => {
  const home = createNodeHome();
  const timeoutMs = 1500;
  try {
    const priv = await startNode(
      [
        "--role",
        "private",
        "--sname",
        "frozen",
        "--listen",
        "127.0.0.1:0",
        "--dead-peer-timeout",
        `${timeoutMs}`,
      ],
      home,
    );
    const pub = await startNode(
      [
        "--role",
        "public",
        "--sname",
        "watcher",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--private-node",
        priv.name,
        "--dead-peer-timeout",
        `${timeoutMs}`,
      ],
      home,
    );
    const http = (await pub.process.waitForLine(/PublicService listening on (http:\/\/\S+)/))[1]!;
    const first = await fetch(`${http}/data`);
    assertMatch(await first.text(), /^secret data$/);
    await pub.process.waitForLine(new RegExp(`nodeup ${priv.name}`));

    const mark = pub.process.lines.length;
    Deno.kill(priv.process.pid, "SIGSTOP");
    const stoppedAt = performance.now();
    try {
      const down = await pub.process.waitForLine(new RegExp(`nodedown ${priv.name}`), {
        from: mark,
        timeoutMs: 10_000,
      });
      const noticedMs = performance.now() - stoppedAt;
      // Window: the timeout itself plus one keepalive interval of slack for timer granularity.
      assert(
        noticedMs <= timeoutMs + timeoutMs / 4 + 1000,
        `noticed after ${noticedMs.toFixed(0)} ms:\n${
          pub.process.lines.map((l) => l.text).join("\n")
        }`,
      );
      assert(noticedMs >= timeoutMs * 0.5, `declared down too early (${noticedMs.toFixed(0)} ms)`);
      assertMatch(down[0]!, /nodedown/);
      const health = await fetch(`${http}/healthz`);
      await health.text();
      assert(health.status === 503, `healthz while frozen: ${health.status}`);
    } finally {
      Deno.kill(priv.process.pid, "SIGCONT");
    }
    // Thawed, the private node answers again: the public node reconnects on the next call.
    const again = await fetch(`${http}/data`);
    assertMatch(await again.text(), /^secret data$/);
  } finally {
    await stopAll();
    home.cleanup();
  }
});
