/**
 * A call from inside a qube to another one, for our in-qube commands
 * (qvm-copy, qvm-open-in-vm, qvm-run-vm, qvm-connect-tcp): through our
 * `qrexec-client-vm` launcher, which hands its descriptors to the qube's
 * agent. The agent (root in a sandbox) makes the data vchan; the command
 * itself may run as any user. The agent socket is QUBES_QREXEC_AGENT_SOCKET
 * when set (the `process` runtime sets it), else the launcher's default
 * /var/run/qubes/qrexec-agent. A refused call: the launcher prints
 * `Request refused`, status 126.
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Readable, Writable } from 'node:stream';
import { DEFAULT_AGENT_SOCKET } from '../agent/index.js';

const LAUNCHER = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../bin/qrexec-client-vm');

export const agentSocket = (env: NodeJS.ProcessEnv = process.env): string => env['QUBES_QREXEC_AGENT_SOCKET'] || DEFAULT_AGENT_SOCKET;

export interface SpawnCallOptions {
  readonly stdio: StdioOptions;
  /** Sent before stdin (`--prefix-data`). */
  readonly prefix?: string;
  readonly filterStderr?: boolean;
}

/** `qrexec-client-vm TARGET SERVICE` with these descriptors. */
export function spawnCall(target: string, service: string, o: SpawnCallOptions): ChildProcess {
  const args: string[] = [];
  if (process.env['QUBES_QREXEC_AGENT_SOCKET']) args.push(`--agent-socket=${agentSocket()}`);
  if (o.filterStderr) args.push('--filter-escape-chars-stderr');
  if (o.prefix !== undefined) args.push(`--prefix-data=${o.prefix}`);
  args.push('--', target, service);
  return spawn(LAUNCHER, args, { stdio: o.stdio });
}

/** The exit status of a call's launcher (125 when it could not start). */
export function callStatus(child: ChildProcess): Promise<number> {
  return new Promise((resolve) => {
    child.on('error', (e) => {
      process.stderr.write(`cannot run qrexec-client-vm: ${e.message}\n`);
      resolve(125);
    });
    child.on('exit', (code, sig) => resolve(code ?? (sig ? 128 + 15 : 255)));
  });
}

export interface QubeCall {
  readonly target: string;
  readonly service: string;
  /** The service's stdin (default: none). */
  readonly stdin?: Readable | Buffer | string;
  /** Where its stdout goes (default: discarded). */
  readonly stdout?: Writable;
  readonly filterStderr?: boolean;
}

/** One call with its stdio relayed through pipes; resolves with its exit status. */
export async function callQube(c: QubeCall): Promise<number> {
  const child = spawnCall(c.target, c.service, { stdio: ['pipe', 'pipe', 'inherit'], ...(c.filterStderr ? { filterStderr: true } : {}) });
  const status = callStatus(child);
  const cin = child.stdin as Writable;
  cin.on('error', () => undefined);
  if (c.stdin === undefined) cin.end();
  else if (typeof c.stdin === 'string' || Buffer.isBuffer(c.stdin)) cin.end(c.stdin);
  else c.stdin.pipe(cin);
  const cout = child.stdout as Readable;
  if (c.stdout) cout.pipe(c.stdout);
  else cout.resume();
  return status;
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
