/**
 * A throwaway sshd on 127.0.0.1 and an `ssh -N -L` tunnel through it, for the end-to-end test
 * that a call works unchanged through an SSH port forward. Everything (host key, client key,
 * authorized_keys, pid file) lives in a fresh temp directory; no system ssh configuration is
 * read (`-f /dev/null`, `-F /dev/null`) and nothing outside loopback is touched.
 */
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { toolPath } from "./netns.ts";
import {
  freeLoopbackPort,
  type ManagedProcess,
  runCommand,
  startProcess,
  WAIT_MS,
  waitForTcp,
} from "./processes.ts";

/** Where OpenSSH's sshd insists on its privilege separation directory (Debian's build). */
const PRIVSEP_DIR = "/run/sshd";

/** A running sshd that accepts the generated client key for the current user. */
export interface Sshd {
  readonly port: number;
  readonly user: string;
  /** The private key the server accepts. */
  readonly clientKey: string;
  readonly process: ManagedProcess;
  /** Opens `ssh -N -L 127.0.0.1:<local>:<targetHost>:<targetPort>` and waits until it accepts. */
  forward(targetPort: number, targetHost?: string): Promise<Tunnel>;
  /** Closes every tunnel, stops sshd and removes the temp directory. */
  cleanup(): Promise<void>;
}

/** A local port forward. */
export interface Tunnel {
  /** The local port on 127.0.0.1 that leads to the target. */
  readonly localPort: number;
  readonly process: ManagedProcess;
  /** Stops the ssh client. */
  close(): Promise<void>;
}

async function mustRun(cmd: string[]): Promise<void> {
  const r = await runCommand(cmd, { label: cmd[0] ?? "command" });
  if (r.code !== 0) {
    throw new Error(`${cmd.join(" ")} failed (${r.code}): ${r.stderr.trim()}`);
  }
}

async function currentUser(): Promise<string> {
  const r = await runCommand(["id", "-un"]);
  if (r.code !== 0 || r.stdout.trim() === "") throw new Error(`id -un failed: ${r.stderr}`);
  return r.stdout.trim();
}

/** Starts sshd on 127.0.0.1:<free port>. Needs root (it authenticates the current user). */
export async function startSshd(): Promise<Sshd> {
  const sshd = toolPath("sshd");
  const sshKeygen = toolPath("ssh-keygen");
  const ssh = toolPath("ssh");
  if (!sshd || !sshKeygen || !ssh) throw new Error("sshd, ssh-keygen and ssh are needed");
  const dir = mkdtempSync(join(tmpdir(), `nodectl-sshd-${Deno.pid}-`));
  chmodSync(dir, 0o700);
  const tunnels = new Set<Tunnel>();
  let server: ManagedProcess | undefined;
  const cleanup = async () => {
    await Promise.all([...tunnels].map((t) => t.close()));
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    mkdirSync(PRIVSEP_DIR, { recursive: true, mode: 0o755 });
    const hostKey = join(dir, "host_ed25519");
    const clientKey = join(dir, "client_ed25519");
    for (
      const [comment, file] of [["nodectl-test-host", hostKey], ["nodectl-test-client", clientKey]]
    ) {
      await mustRun([sshKeygen, "-q", "-t", "ed25519", "-N", "", "-C", comment!, "-f", file!]);
    }
    const authorized = join(dir, "authorized_keys");
    writeFileSync(authorized, readFileSync(`${clientKey}.pub`), { mode: 0o600 });
    const user = await currentUser();

    // A free port can be taken between probing and binding: try a few.
    let port = 0;
    for (let attempt = 0; attempt < 3 && server === undefined; attempt++) {
      port = freeLoopbackPort();
      const p = startProcess([
        sshd,
        "-D", // stay in the foreground
        "-e", // log to stderr
        "-f",
        "/dev/null",
        "-h",
        hostKey,
        "-p",
        String(port),
        ...[
          "ListenAddress=127.0.0.1",
          `PidFile=${join(dir, "sshd.pid")}`,
          "UsePAM=no",
          "StrictModes=no",
          `AuthorizedKeysFile=${authorized}`,
          "AuthenticationMethods=publickey",
          "PubkeyAuthentication=yes",
          "PasswordAuthentication=no",
          "KbdInteractiveAuthentication=no",
          "PermitRootLogin=prohibit-password",
          `AllowUsers=${user}`,
          "AllowTcpForwarding=local",
          "PermitOpen=127.0.0.1:*",
          "GatewayPorts=no",
          "X11Forwarding=no",
          "AllowAgentForwarding=no",
          "PermitTTY=no",
          "PermitUserRC=no",
          "LogLevel=VERBOSE",
        ].flatMap((o) => ["-o", o]),
      ], { label: "sshd" });
      try {
        await p.waitForLine(/Server listening on 127\.0\.0\.1 port/, { timeoutMs: WAIT_MS });
        server = p;
      } catch (err) {
        await p.stop();
        if (!/Address already in use|Cannot bind/.test(p.stderr) || attempt === 2) throw err;
      }
    }
    const running = server!;

    const forward = async (targetPort: number, targetHost = "127.0.0.1"): Promise<Tunnel> => {
      let lastErr: unknown;
      for (let attempt = 0; attempt < 3; attempt++) {
        const localPort = freeLoopbackPort();
        const client = startProcess([
          ssh,
          "-N",
          "-F",
          "/dev/null",
          "-i",
          clientKey,
          "-p",
          String(port),
          "-L",
          `127.0.0.1:${localPort}:${targetHost}:${targetPort}`,
          ...[
            "BatchMode=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "GlobalKnownHostsFile=/dev/null",
            "ExitOnForwardFailure=yes",
            "IdentitiesOnly=yes",
            "IdentityAgent=none",
            "ServerAliveInterval=5",
            "ConnectTimeout=10",
            "LogLevel=ERROR",
          ].flatMap((o) => ["-o", o]),
          `${user}@127.0.0.1`,
        ], { label: `ssh -L ${localPort}:${targetHost}:${targetPort}` });
        const tunnel: Tunnel = {
          localPort,
          process: client,
          async close() {
            tunnels.delete(tunnel);
            await client.stop();
          },
        };
        tunnels.add(tunnel);
        try {
          await waitForTcp("127.0.0.1", localPort, {
            alive: () => !client.exited,
            what: `the ssh tunnel on 127.0.0.1:${localPort}`,
          });
          return tunnel;
        } catch (err) {
          await tunnel.close();
          lastErr = new Error(
            `${err instanceof Error ? err.message : String(err)}\n${client.transcript()}\n`
              + running.transcript(),
          );
          // Only a lost race for the local port is worth another try.
          if (!/forwarding|bind|in use/i.test(client.stderr)) break;
        }
      }
      throw lastErr;
    };

    return { port, user, clientKey, process: running, forward, cleanup };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
