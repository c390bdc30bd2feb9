/**
 * The `process` backend: a qube is its qrexec-agent running as a child
 * process of the host (no isolation: development and tests), with its own
 * service directory (QREXEC_SERVICE_PATH), config directory
 * (QUBES_RPC_CONFIG_PATH) and data directory, and a host-side qrexec daemon
 * for it. The qube is ready once its agent has connected to that daemon.
 *
 * The host side is pluggable: by default a `bin/qrexec-daemon` child
 * process (it reports the agent's connection on a pipe, as the reference
 * daemon tells its parent); the host process instead registers an
 * in-process daemon ({@link HostSide}), so qubesd, the policy daemon and
 * every qrexec daemon share one event loop.
 *
 * Layout under `stateDir/NAME/`: `rpc/` (services), `config/` (service
 * config), `home/` (the qube's data, its HOME), `agent.sock`. After the
 * qube's own `rpc/` and `config/`, the services qrexec-ts installs in every
 * qube (qubes-rpc/qube, src/runtime/shipped.ts); the daemons look up dom0's
 * services in qubes-rpc/dom0 after their own service path.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { QUBE_CONFIG_DIR, QUBE_SERVICE_DIR } from './shipped.js';
import { BIN, daemonProcessHostSide, reapLeftoverDaemons, type DaemonHostSideOptions } from './host-side.js';
import { RuntimeError, type HostSide, type HostSideHandle, type QubeExit, type QubeLaunch, type RunningQube, type Runtime } from './types.js';

export interface ProcessRuntimeOptions extends DaemonHostSideOptions {
  /** Per-qube directories live under here. */
  readonly stateDir: string;
  /** VCHAN_SOCKET_DIR of the host and every agent. */
  readonly vchanDir: string;
  /** Replace the default host side (the host process does). */
  readonly hostSide?: HostSide;
}

class ProcessQube implements RunningQube {
  readonly ready: Promise<void>;
  readonly exited: Promise<QubeExit>;
  private readonly agent: ChildProcess;
  private readonly host: HostSideHandle;

  constructor(q: QubeLaunch, opts: ProcessRuntimeOptions, hostSide: HostSide) {
    const dir = path.join(opts.stateDir, q.name);
    for (const d of ['rpc', 'config', 'home']) fs.mkdirSync(path.join(dir, d), { recursive: true, mode: 0o700 });
    const agentSock = path.join(dir, 'agent.sock');
    fs.rmSync(agentSock, { force: true });
    // the agent runs as this host user (no isolation), and a non-root agent runs
    // services only as itself: DEFAULT: calls (qvm-run) must name this user
    this.host = hostSide({ ...q, defaultUser: os.userInfo().username }, { dir: opts.vchanDir });
    // its own process group, so pause/kill reach the services it runs too
    this.agent = spawn(process.execPath, [path.join(BIN, 'qrexec-agent'), `--agent-socket=${agentSock}`, '--no-fork-server'], {
      detached: true,
      stdio: ['ignore', 'ignore', opts.logFd ?? 'inherit'],
      cwd: path.join(dir, 'home'),
      env: {
        ...process.env,
        HOME: path.join(dir, 'home'),
        VCHAN_SOCKET_DIR: opts.vchanDir,
        VCHAN_DOMAIN: String(q.domid),
        QREXEC_SERVICE_PATH: `${path.join(dir, 'rpc')}:${QUBE_SERVICE_DIR}`,
        QUBES_RPC_CONFIG_PATH: `${path.join(dir, 'config')}:${QUBE_CONFIG_DIR}`,
        QUBES_QUBE_NAME: q.name,
        // where this qube's own programs (qvm-copy...) find its agent
        QUBES_QREXEC_AGENT_SOCKET: agentSock,
      },
    });
    const agent = this.agent;
    // recorded so a qubesd killed with -9 cleans its qubes up at the next start
    if (agent.pid !== undefined) fs.writeFileSync(path.join(dir, 'agent.pid'), `${agent.pid}\n${agentSock}\n`);
    const agentExit = new Promise<QubeExit>((resolve) => {
      agent.once('exit', (code, signal) => resolve({ code, signal }));
      agent.once('error', () => resolve({ code: null, signal: null }));
    });
    this.exited = agentExit.then(async (x) => {
      fs.rmSync(path.join(dir, 'agent.pid'), { force: true });
      await this.host.stop();
      return x;
    });
    let timer: NodeJS.Timeout | undefined;
    this.ready = Promise.race([
      // connected, and its agent socket (for qrexec-client-vm in the qube) open, which follows the handshake
      this.host.connected.then(() => untilExists(agentSock, () => agent.exitCode !== null || agent.signalCode !== null)),
      agentExit.then((x) => {
        throw new RuntimeError(`the qube's agent exited (${x.signal ?? `status ${x.code}`}) before it connected`);
      }),
      new Promise<never>((_r, reject) => {
        timer = setTimeout(() => reject(new RuntimeError(`Cannot connect to qrexec agent for ${q.timeoutMs / 1000} seconds, see the qube's log`)), q.timeoutMs);
      }),
    ]).finally(() => clearTimeout(timer));
    this.ready.catch(() => undefined);
  }

  private signal(sig: NodeJS.Signals): void {
    const pid = this.agent.pid;
    if (pid === undefined || this.agent.exitCode !== null || this.agent.signalCode !== null) return;
    try {
      process.kill(-pid, sig);
    } catch {
      try {
        this.agent.kill(sig);
      } catch {
        // gone
      }
    }
  }

  // the host side stops first: its daemon then sees no agent "disconnect" of a qube being stopped
  shutdown(): void {
    void this.host.stop().finally(() => {
      this.signal('SIGCONT');
      this.signal('SIGTERM');
    });
  }
  kill(): void {
    void this.host.stop();
    this.signal('SIGKILL');
  }
  pause(): void {
    this.signal('SIGSTOP');
  }
  unpause(): void {
    this.signal('SIGCONT');
  }
}

async function untilExists(file: string, gone: () => boolean): Promise<void> {
  for (let delay = 1; !fs.existsSync(file) && !gone(); delay = Math.min(delay * 2, 20)) await new Promise((r) => setTimeout(r, delay));
}

export class ProcessRuntime implements Runtime {
  readonly name = 'process';
  private readonly running = new Set<ProcessQube>();
  private readonly hostSide: HostSide;

  constructor(private readonly opts: ProcessRuntimeOptions) {
    this.hostSide = opts.hostSide ?? daemonProcessHostSide(opts);
    fs.mkdirSync(opts.vchanDir, { recursive: true });
    fs.mkdirSync(opts.socketDir, { recursive: true });
    this.reapLeftovers();
  }

  /**
   * Agents a previous qubesd started and could not stop (it was killed):
   * each qube's agent.pid names the process and its agent socket; a process
   * that still runs with that socket on its command line (its process
   * group: the services too) is killed, and so are the qrexec daemons that
   * served this run directory (they would wait for their agent forever).
   */
  private reapLeftovers(): void {
    reapLeftoverDaemons(this.opts.socketDir);
    let names: string[];
    try {
      names = fs.readdirSync(this.opts.stateDir);
    } catch {
      return;
    }
    for (const n of names) {
      const f = path.join(this.opts.stateDir, n, 'agent.pid');
      let text: string;
      try {
        text = fs.readFileSync(f, 'utf8');
      } catch {
        continue;
      }
      const [pidText, sock] = text.split('\n');
      const pid = Number(pidText);
      if (Number.isSafeInteger(pid) && pid > 1 && sock) {
        let cmdline = '';
        try {
          cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1');
        } catch {
          // gone
        }
        if (cmdline.includes(`--agent-socket=${sock}`)) {
          try {
            process.kill(-pid, 'SIGKILL');
          } catch {
            try {
              process.kill(pid, 'SIGKILL');
            } catch {
              // gone meanwhile
            }
          }
        }
      }
      fs.rmSync(f, { force: true });
    }
  }

  start(q: QubeLaunch): RunningQube {
    const r = new ProcessQube(q, this.opts, this.hostSide);
    this.running.add(r);
    void r.exited.then(() => this.running.delete(r));
    return r;
  }

  /** private: the qube's directory (its home, services and configuration). */
  volumeDirs(name: string): Readonly<Partial<Record<string, readonly string[]>>> {
    return { private: [path.join(this.opts.stateDir, name)] };
  }

  async close(): Promise<void> {
    const all = [...this.running];
    for (const r of all) r.kill();
    await Promise.all(all.map((r) => r.exited));
  }
}
