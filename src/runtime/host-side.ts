/**
 * The default host side of a started qube: `bin/qrexec-daemon` as a child
 * process, which reports its agent's connection on fd 3 (as the reference
 * daemon tells its parent). Used by qubesd run alone; the host process
 * (src/host) serves qubes with in-process daemons instead.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DOM0_SERVICE_DIR } from './shipped.js';
import { RuntimeError, type HostSide } from './types.js';

export const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../bin');

export interface DaemonHostSideOptions {
  /** Where the daemons put their qrexec.NAME sockets. */
  readonly socketDir: string;
  readonly daemon?: {
    readonly policySocket?: string;
    readonly qubesdSocket?: string;
    readonly servicePath?: string;
  };
  /** Where the agents' and daemons' stderr goes (default: inherited). */
  readonly logFd?: number | 'ignore' | 'inherit';
}

export function daemonProcessHostSide(opts: DaemonHostSideOptions): HostSide {
  return (q, vchan) => {
    const args = [`--uuid=${q.uuid}`, `--socket-dir=${opts.socketDir}`];
    if (opts.daemon?.policySocket) args.push(`--policy-socket=${opts.daemon.policySocket}`);
    args.push(`--qubesd-socket=${opts.daemon?.qubesdSocket ?? 'none'}`);
    args.push(String(q.domid), q.name, q.defaultUser);
    const p = spawn(process.execPath, [path.join(BIN, 'qrexec-daemon'), ...args], {
      stdio: ['ignore', 'ignore', opts.logFd ?? 'inherit', 'pipe'],
      env: {
        ...process.env,
        VCHAN_SOCKET_DIR: vchan.dir,
        VCHAN_DOMAIN: '0',
        VCHAN_SOCKET_LAYOUT: vchan.layout ?? 'flat',
        QREXEC_DAEMON_NOTIFY_FD: '3',
        QREXEC_STARTUP_TIMEOUT: String(Math.max(1, Math.ceil(q.timeoutMs / 1000))),
        ...(opts.daemon?.servicePath ? { QREXEC_SERVICE_PATH: `${opts.daemon.servicePath}:${DOM0_SERVICE_DIR}` } : {}),
      },
    });
    const exited = new Promise<void>((r) => p.once('exit', () => r()));
    const connected = new Promise<void>((resolve, reject) => {
      const pipe = p.stdio[3] as NodeJS.ReadableStream;
      pipe.once('data', (d: Buffer) => (d[0] === 0 ? resolve() : reject(new RuntimeError(`Cannot connect to '${q.name}' qrexec agent`))));
      pipe.once('end', () => reject(new RuntimeError('qrexec daemon ended before the agent connected')));
      p.once('error', (e) => reject(new RuntimeError(`qrexec daemon: ${e.message}`)));
    });
    connected.catch(() => undefined);
    return {
      connected,
      stop: async () => {
        if (p.exitCode === null && p.signalCode === null) p.kill('SIGTERM');
        const t = setTimeout(() => p.kill('SIGKILL'), 2000);
        await exited;
        clearTimeout(t);
      },
    };
  };
}

/**
 * Kills the qrexec daemons a previous qubesd (killed with -9) left serving
 * `socketDir`: its qubes are Halted after the restart, so their daemons would
 * otherwise wait for an agent that never comes back. A daemon is recognised
 * by its command line (bin/qrexec-daemon with `--socket-dir=socketDir`), so
 * another host's daemons are never touched. Returns how many were killed.
 */
export function reapLeftoverDaemons(socketDir: string): number {
  const daemon = path.join(BIN, 'qrexec-daemon');
  const mark = `--socket-dir=${socketDir}`;
  let killed = 0;
  let pids: string[];
  try {
    pids = fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n));
  } catch {
    return 0;
  }
  for (const n of pids) {
    const pid = Number(n);
    if (pid === process.pid) continue;
    let argv: string[];
    try {
      argv = fs.readFileSync(`/proc/${n}/cmdline`, 'latin1').split('\0');
    } catch {
      continue; // gone, or not ours to read
    }
    if (argv[1] !== daemon || !argv.includes(mark)) continue;
    try {
      process.kill(pid, 'SIGKILL');
      killed++;
    } catch {
      // gone meanwhile
    }
  }
  return killed;
}
