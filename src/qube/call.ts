/**
 * A call from inside a qube to another one through this qube's agent, for
 * our in-qube commands (qvm-copy, qvm-open-in-vm, qvm-run-vm,
 * qvm-connect-tcp): the agent library, no qrexec-client-vm process. The
 * agent socket is QUBES_QREXEC_AGENT_SOCKET when set (the `process` runtime
 * sets it), else the reference's /var/run/qubes/qrexec-agent.
 */
import * as fs from 'node:fs';
import type { Readable, Writable } from 'node:stream';
import { callService, DEFAULT_AGENT_SOCKET } from '../agent/index.js';

export const agentSocket = (env: NodeJS.ProcessEnv = process.env): string => env['QUBES_QREXEC_AGENT_SOCKET'] || DEFAULT_AGENT_SOCKET;

export interface QubeCall {
  readonly target: string;
  readonly service: string;
  readonly stdin?: Readable | Buffer | string;
  readonly stdout?: Writable;
  readonly stderr?: Writable;
  readonly filterStderr?: boolean;
}

/** The call's exit status: 126 when refused (after "Request refused" on stderr, as qrexec-client-vm). */
export async function callQube(c: QubeCall): Promise<number> {
  let r;
  try {
    r = await callService(c.target, c.service, {
      agentSocket: agentSocket(),
      ...(c.stdin !== undefined ? { stdin: c.stdin } : {}),
      ...(c.stdout ? { stdout: c.stdout } : {}),
      stderr: c.stderr ?? process.stderr,
      filterStderr: c.filterStderr ?? false,
    });
  } catch (e) {
    process.stderr.write(`cannot reach the qrexec agent (${agentSocket()}): ${(e as Error).message}\n`);
    return 125;
  }
  if (r.refused) process.stderr.write('Request refused\n');
  return r.exitCode;
}

/**
 * Whether this program runs inside a qube (our commands named like both a
 * dom0 and a qube command, qvm-copy-to-vm, choose by this): QUBESD_SOCKET
 * means dom0; QUBES_QREXEC_AGENT_SOCKET, or an agent socket at the
 * reference's path, means a qube.
 */
export function inQube(env: NodeJS.ProcessEnv = process.env, exists: (p: string) => boolean = fs.existsSync): boolean {
  if (env['QUBESD_SOCKET']) return false;
  if (env['QUBES_QREXEC_AGENT_SOCKET']) return true;
  return exists(DEFAULT_AGENT_SOCKET);
}
