/**
 * The seed's steps 3 and 4 across a real network path, with the compiled binary: two hosts made
 * of network namespaces joined by a veth pair, a packet capture of a call between them, and a
 * call through an `ssh -L` tunnel to a throwaway sshd on loopback. Traffic goes only to
 * loopback or to the 10.201.x.y addresses inside namespaces these tests create.
 *
 * Without root or the tools these tests are skipped with a one-line reason; with
 * NODECTL_E2E_REQUIRED=1 (CI) they run and fail instead.
 */
import { join } from "node:path";
import { assert, assertEquals } from "./support/assert.ts";
import {
  createTwoHosts,
  findInPcap,
  type Needle,
  readPcap,
  requirePrerequisites,
  skipReason,
  startCapture,
  tcpSegments,
  type TwoHosts,
} from "./support/netns.ts";
import {
  type CommandResult,
  createNodeHome,
  describeResult,
  type NodeHome,
  runNodectl,
  sleep,
  type StartedNode,
  startNode,
  stopAll,
} from "./support/processes.ts";
import { type Sshd, startSshd } from "./support/sshd.ts";

/** The port a node listens on, and callers dial, when a long name carries none. */
const DEFAULT_PORT = 4370;

const TWO_HOSTS = { root: true, tools: ["ip"], netns: true };
const CAPTURE = { root: true, tools: ["ip", "tcpdump", "bash"], netns: true };
const SSH = { root: true, tools: ["sshd", "ssh", "ssh-keygen"] };

function assertCallReturns(r: CommandResult, expected: string, what: string): void {
  assertEquals(r.code, 0, describeResult(what, r));
  assertEquals(r.stdout, `${expected}\n`, describeResult(what, r));
}

/**
 * Two hosts with a private node on host A (`private@<addrA>`, listening on <addrA>:4370), a
 * caller's home for host B sharing the cookie, then `body`; everything is torn down after.
 */
async function withPrivateNodeOnHostA(
  body: (hosts: TwoHosts, node: StartedNode, callerHome: NodeHome) => Promise<void>,
): Promise<void> {
  const nodeHome = createNodeHome();
  const callerHome = createNodeHome(nodeHome.cookie);
  let hosts: TwoHosts | undefined;
  try {
    hosts = await createTwoHosts();
    const node = await startNode(
      [
        "--role",
        "private",
        "--name",
        `private@${hosts.addrA}`,
        "--listen",
        `${hosts.addrA}:${DEFAULT_PORT}`,
      ],
      nodeHome,
      { netns: hosts.nsA, label: `private node in ${hosts.nsA}` },
    );
    assertEquals(node.name, `private@${hosts.addrA}`);
    assertEquals(node.port, DEFAULT_PORT);
    await body(hosts, node, callerHome);
  } finally {
    await stopAll();
    await hosts?.cleanup();
    nodeHome.cleanup();
    callerHome.cleanup();
  }
}

Deno.test({
  name: "a call from another host over the network returns the secret",
  ignore: skipReason("two-host test", TWO_HOSTS) !== undefined,
  fn: async () => {
    requirePrerequisites(TWO_HOSTS);
    await withPrivateNodeOnHostA(async (hosts, node, callerHome) => {
      const r = await runNodectl(
        ["call", "get_data", "--to", `private@${hosts.addrA}`],
        callerHome,
        { netns: hosts.nsB },
      );
      assertCallReturns(r, "secret data", `call from ${hosts.nsB}\n${node.process.transcript()}`);
    });
  },
});

Deno.test({
  name: "a captured call between two hosts shows TCP to port 4370 but no secret, name or cookie",
  ignore: skipReason("packet capture test", CAPTURE) !== undefined,
  fn: async () => {
    requirePrerequisites(CAPTURE);
    await withPrivateNodeOnHostA(async (hosts, node, callerHome) => {
      const file = join(callerHome.dir, "call.pcap");
      const capture = await startCapture(hosts.nsB, hosts.ifaceB, file);
      let captured: number;
      const canary = `plaintext-canary-${crypto.randomUUID()}`;
      try {
        const r = await runNodectl(
          ["call", "get_data", "--to", `private@${hosts.addrA}`],
          callerHome,
          { netns: hosts.nsB },
        );
        assertCallReturns(r, "secret data", `call from ${hosts.nsB}\n${node.process.transcript()}`);
        // Positive control: plaintext written to the same port must show up in the capture.
        const control = await hosts.exec(hosts.nsB, [
          "bash",
          "-c",
          `exec 3<>"/dev/tcp/${hosts.addrA}/${DEFAULT_PORT}" && printf %s "$1" >&3`,
          "canary",
          canary,
        ]);
        assertEquals(control.code, 0, describeResult("sending the plaintext canary", control));
        // The canary went last: once it is in the file, so is the call (tcpdump -U writes each
        // packet as it comes), and stopping tcpdump cannot lose what the test is about.
        for (let i = 0; i < 100 && findInPcap(readPcap(file), [canary]).length === 0; i++) {
          await sleep(100);
        }
      } finally {
        captured = await capture.stop();
      }

      const pcap = readPcap(file);
      assert(captured > 0 && pcap.packets.length > 0, `the capture is empty (${captured})`);
      const segments = tcpSegments(pcap);
      const toNode = segments.filter((s) => s.dst === hosts.addrA && s.dstPort === DEFAULT_PORT);
      const fromNode = segments.filter((s) => s.src === hosts.addrA && s.srcPort === DEFAULT_PORT);
      assert(
        toNode.some((s) => s.payload.length > 0) && fromNode.some((s) => s.payload.length > 0),
        `no TCP payload both ways on port ${DEFAULT_PORT} among ${segments.length} segments`,
      );
      assertEquals(findInPcap(pcap, [canary]), [canary], "the capture search sees plaintext");

      const cookieBytes = new Uint8Array(
        (callerHome.cookie.match(/../g) ?? []).map((h) => parseInt(h, 16)),
      );
      const secrets: Needle[] = [
        "secret data",
        "get_data",
        "SecretService",
        { name: "the cookie", bytes: new TextEncoder().encode(callerHome.cookie) },
        { name: "the cookie's bytes", bytes: cookieBytes },
      ];
      assertEquals(findInPcap(pcap, secrets), [], "plaintext found on the wire");
    });
  },
});

Deno.test({
  name: "a call through an ssh -L tunnel to a loopback sshd works unchanged",
  ignore: skipReason("ssh tunnel test", SSH) !== undefined,
  fn: async () => {
    requirePrerequisites(SSH);
    const nodeHome = createNodeHome();
    // The caller has its own run directory, so it cannot find the node except through the port.
    const callerHome = createNodeHome(nodeHome.cookie);
    let sshd: Sshd | undefined;
    try {
      sshd = await startSshd();
      const node = await startNode(
        ["--role", "private", "--name", "private@127.0.0.1", "--listen", "127.0.0.1:0"],
        nodeHome,
        { label: "private node" },
      );
      const tunnel = await sshd.forward(node.port);
      assert(tunnel.localPort !== node.port);
      const to = `private@127.0.0.1:${tunnel.localPort}`;

      const r = await runNodectl(["call", "get_data", "--to", to], callerHome);
      assertCallReturns(
        r,
        "secret data",
        `call --to ${to}\n${node.process.transcript()}\n${tunnel.process.transcript()}`,
      );

      // Without the tunnel the same call has no way to the node.
      await tunnel.close();
      const down = await runNodectl(["call", "get_data", "--to", to], callerHome);
      assertEquals(down.code, 5, describeResult("call after the tunnel closed", down));
    } finally {
      await stopAll();
      await sshd?.cleanup();
      nodeHome.cleanup();
      callerHome.cleanup();
    }
  },
});
