/**
 * The default host side of a started qube: `bin/qrexec-daemon` as a child
 * process, which reports its agent's connection on fd 3 (as the reference
 * daemon tells its parent). Used by qubesd run alone; the host process
 * (src/host) serves qubes with in-process daemons instead.
 */
import { spawn } from 'node:child_process';
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
