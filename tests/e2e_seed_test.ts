/**
 * The seed's two-node demo (shared/reference/seed-2-node-demo.md), steps 0 to 3, acted out with
 * the compiled binary on loopback. Every node listens on an ephemeral port and every process
 * gets its own config, data and run directories, so runs never collide.
 */
import { assert, assertEquals, assertMatch } from "./support/assert.ts";
import {
  type CommandResult,
  createNodeHome,
  describeResult,
  type ManagedProcess,
  type NodeHome,
  randomCookie,
  runNodectl,
  sleep,
  type StartedNode,
  startNode,
  stopAll,
  WAIT_MS,
} from "./support/processes.ts";

/** This host's short name, as `--sname` uses it (`private@<shorthost>`). */
const SHORT_HOST = Deno.hostname().split(".")[0] || "localhost";
const PUBLIC_HTTP = /PublicService listening on http:\/\/([^\s/]+):([0-9]+)/;

/** A small HTTP/1.1 GET over loopback with `Connection: close`, bounded by a deadline. */
async function httpGet(
  port: number,
  path: string,
): Promise<{ status: number; body: string }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const timer = setTimeout(() => conn.close(), WAIT_MS);
  const chunks: Uint8Array[] = [];
  try {
    await conn.write(
      new TextEncoder().encode(
        `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`,
      ),
    );
    const buf = new Uint8Array(16 * 1024);
    for (let i = 0; i < 10_000; i++) {
      const n = await conn.read(buf);
      if (n === null) break;
      chunks.push(buf.slice(0, n));
    }
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed by the deadline */ }
  }
  const text = new TextDecoder().decode(
    chunks.reduce((a, b) => {
      const joined = new Uint8Array(a.length + b.length);
      joined.set(a);
      joined.set(b, a.length);
      return joined;
    }, new Uint8Array()),
  );
  const split = text.indexOf("\r\n\r\n");
  assert(split >= 0, `incomplete HTTP response to GET ${path}: ${JSON.stringify(text)}`);
  const head = text.slice(0, split);
  let body = text.slice(split + 4);
  const status = /^HTTP\/1\.[01] ([0-9]{3})/.exec(head);
  assert(status, `no HTTP status line in ${JSON.stringify(head)}`);
  if (/^transfer-encoding:\s*chunked/im.test(head)) {
    let decoded = "";
    for (let i = 0; i < 10_000; i++) {
      const eol = body.indexOf("\r\n");
      const size = parseInt(body.slice(0, eol), 16);
      if (!(size > 0)) break;
      decoded += body.slice(eol + 2, eol + 2 + size);
      body = body.slice(eol + 2 + size + 2);
    }
    body = decoded;
  }
  return { status: Number(status[1]), body };
}

function assertCallReturns(r: CommandResult, expected: string, what: string): void {
  assertEquals(r.code, 0, describeResult(what, r));
  assertEquals(r.stdout, `${expected}\n`, describeResult(what, r));
}

function assertOneLineFailure(r: CommandResult, code: number, what: string): void {
  assertEquals(r.code, code, describeResult(what, r));
  assertEquals(r.stdout, "", describeResult(what, r));
  assertEquals(r.stderr.trimEnd().split("\n").length, 1, describeResult(what, r));
  assert(!r.stderr.includes("    at "), `no stack trace: ${describeResult(what, r)}`);
}

async function assertStopsCleanly(p: ManagedProcess): Promise<void> {
  const status = await p.stop();
  assertEquals(status.code, 0, `SIGTERM should stop cleanly with exit 0\n${p.transcript()}`);
}

async function publicHttpPort(p: ManagedProcess): Promise<number> {
  const m = await p.waitForLine(PUBLIC_HTTP);
  assertEquals(m[1], "127.0.0.1", `PublicService bound where asked\n${p.transcript()}`);
  return Number(m[2]);
}

/** A test body run with a fresh node home; every process is stopped and the home removed after. */
function withNodeHome(fn: (home: NodeHome) => Promise<void>): () => Promise<void> {
  return async () => {
    const home = createNodeHome();
    try {
      await fn(home);
    } finally {
      await stopAll();
      home.cleanup();
    }
  };
}

/** Starts a private node named by `naming` (`--sname`/`--name` and its value) on loopback. */
function startPrivateNode(home: NodeHome, naming: string[]): Promise<StartedNode> {
  return startNode(["--role", "private", ...naming, "--listen", "127.0.0.1:0"], home, {
    label: "private node",
  });
}

/** Starts a public node named by `naming`, with HTTP on loopback, that reads from `privateNode`. */
function startPublicNode(
  home: NodeHome,
  naming: string[],
  privateNode: string,
): Promise<StartedNode> {
  return startNode(
    [
      "--role",
      "public",
      ...naming,
      "--listen",
      "127.0.0.1:0",
      "--http",
      "127.0.0.1:0",
      "--private-node",
      privateNode,
    ],
    home,
    { label: "public node" },
  );
}

Deno.test(
  "step 0: a private node alone serves get_data to a caller on the same host",
  withNodeHome(async (home) => {
    const node = await startPrivateNode(home, ["--sname", "private"]);
    assertEquals(node.name, `private@${SHORT_HOST}`);
    await node.process.waitForLine(/\[info\]\s+SecretService started/);
    const r = await runNodectl(["call", "get_data", "--to", `private@${SHORT_HOST}`], home);
    assertCallReturns(r, "secret data", "call get_data --to private@<shorthost>");
    await assertStopsCleanly(node.process);
  }),
);

Deno.test(
  "step 1: private and public roles in one process serve the secret over HTTP",
  withNodeHome(async (home) => {
    const node = await startNode(
      [
        "--role",
        "private,public",
        "--sname",
        "private",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
      ],
      home,
      { label: "private,public node" },
    );
    await node.process.waitForLine(/SecretService started/);
    const port = await publicHttpPort(node.process);
    const data = await httpGet(port, "/data");
    assertEquals(data, { status: 200, body: "secret data" }, node.process.transcript());
    await assertStopsCleanly(node.process);
  }),
);

Deno.test(
  "step 2: SecretService is not on the public node (noproc, exit 3) but the private node serves it",
  withNodeHome(async (home) => {
    const priv = await startPrivateNode(home, ["--sname", "private"]);
    const pub = await startPublicNode(home, ["--sname", "public"], `private@${SHORT_HOST}`);
    assertEquals(pub.name, `public@${SHORT_HOST}`);

    const wrongNode = await runNodectl(
      ["call", "get_data", "--to", `public@${SHORT_HOST}`],
      home,
    );
    assertOneLineFailure(wrongNode, 3, "call get_data --to public@<shorthost>");
    assert(
      wrongNode.stderr.includes(`public@${SHORT_HOST}`),
      `the message names the node: ${wrongNode.stderr}`,
    );
    assert(
      wrongNode.stderr.includes("SecretService"),
      `the message names the missing service: ${wrongNode.stderr}`,
    );

    const qualified = await runNodectl(
      ["call", "SecretService.get_data", "--to", `private@${SHORT_HOST}`],
      home,
    );
    assertCallReturns(qualified, "secret data", "call SecretService.get_data --to private@…");
    const bare = await runNodectl(["call", "get_data", "--to", `private@${SHORT_HOST}`], home);
    assertCallReturns(bare, "secret data", "call get_data --to private@<shorthost>");

    await assertStopsCleanly(pub.process);
    await assertStopsCleanly(priv.process);
  }),
);

Deno.test(
  "step 3: long names with a shared cookie connect; a wrong cookie is refused with exit 7 and logged as a cookie mismatch",
  withNodeHome(async (home) => {
    const priv = await startPrivateNode(home, ["--name", "private@127.0.0.1"]);
    assertEquals(priv.name, "private@127.0.0.1");
    const to = `private@127.0.0.1:${priv.port}`;

    const ok = await runNodectl(["call", "get_data", "--to", to], home);
    assertCallReturns(ok, "secret data", `call get_data --to ${to}`);

    const wrongCookie = randomCookie();
    const before = priv.process.lineCount;
    const refused = await runNodectl(["call", "get_data", "--to", to], home, {
      env: { NODECTL_COOKIE: wrongCookie },
    });
    assertOneLineFailure(refused, 7, "call with a wrong cookie");
    for (const cookie of [home.cookie, wrongCookie]) {
      assert(!refused.stderr.includes(cookie), "the message never contains a cookie");
    }
    await priv.process.waitForLine(/cookie mismatch/i, { from: before });
    const log = priv.process.stdout + priv.process.stderr;
    for (const cookie of [home.cookie, wrongCookie]) {
      assert(!log.includes(cookie), "the node's log never contains a cookie");
    }
    await assertStopsCleanly(priv.process);
  }),
);

Deno.test(
  "step 3: the public node's /data returns the secret and /healthz turns from 200 to 503 when the private node dies",
  withNodeHome(async (home) => {
    const priv = await startPrivateNode(home, ["--name", "private@127.0.0.1"]);
    const pub = await startPublicNode(
      home,
      ["--name", "public@127.0.0.1"],
      `private@127.0.0.1:${priv.port}`,
    );
    const port = await publicHttpPort(pub.process);

    assertEquals(await httpGet(port, "/data"), { status: 200, body: "secret data" });
    const healthy = await httpGet(port, "/healthz");
    assertEquals(healthy.status, 200, `${healthy.body}\n${pub.process.transcript()}`);

    await priv.process.stop({ signal: "SIGKILL" });
    let health = healthy;
    const deadline = Date.now() + WAIT_MS;
    for (let i = 0; i < 200 && health.status === 200 && Date.now() < deadline; i++) {
      await sleep(100);
      health = await httpGet(port, "/healthz");
    }
    assertEquals(health.status, 503, `/healthz after the private node died: ${health.body}`);
    assertMatch(health.body, /private@127\.0\.0\.1/, "the reason names the private node");
    assert(health.body.trim().length > "private@127.0.0.1".length, "503 carries a reason");

    const data = await httpGet(port, "/data");
    assert(data.status >= 500, `/data without the private node: ${data.status} ${data.body}`);
    assert(!data.body.includes("secret data"));

    await assertStopsCleanly(pub.process);
  }),
);
