/**
 * A qube as a bubblewrap sandbox: its filesystems (volumes.ts), its network
 * namespace (netvm.ts), its cgroup (cgroup.ts) and one command, by default
 * the qube's qrexec-agent, with the project's dist/ and the Node binary bound
 * read-only at /run/qrexec-ts. See docs/RUNTIME.md for what it protects.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { SandboxError } from './errors.js';
import { launchCommand, type LaunchTools, type MountOp, type SandboxBind, type SandboxPlan } from './plan.js';
import { QUBE_USER_UID, commitPendingLayer, markRunning, volumeMounts, type QubeVolumes } from './volumes.js';
import { SandboxCgroup, type Limits } from './cgroup.js';
import { openDirBeneath } from './beneath.js';
import type { QubeNetwork } from './netvm.js';

/** The project's root (dist/src/runtime/sandbox -> ../../../..). */
const PROJECT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..');
/** Where the project and Node appear inside a sandbox. */
export const INSIDE_PROJECT = '/run/qrexec-ts';
/** The qube's vchan directory inside (the reference's default VCHAN_SOCKET_DIR, /var/run -> /run). */
export const INSIDE_VCHAN_DIR = '/run/vchan';
/** The agent socket inside (the reference's default). */
export const INSIDE_AGENT_SOCKET = '/run/qubes/qrexec-agent';

/** The programs a sandbox start uses, found once. */
export type SandboxTools = LaunchTools;

/** Where `npm run build:native` puts the one-exec mount step (optional). */
export const MOUNTSTEP_PATH = path.join(PROJECT, 'native', 'build', 'qrexec-mountstep');

function which(name: string): string | undefined {
  for (const d of (process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':')) {
    const p = path.join(d || '.', name);
    if (isExecutable(p)) return p;
  }
  return undefined;
}

let toolsCache: SandboxTools | { error: string } | undefined;

/**
 * Whether bwrap sandboxes can run here, and with what: bwrap, unshare and
 * nsenter on PATH, root (the mount step mounts overlayfs on the host side),
 * and a trial bwrap with new namespaces. The reason when not.
 */
export function sandboxSupport(): { ok: true; tools: SandboxTools } | { ok: false; reason: string } {
  if (toolsCache === undefined) toolsCache = probe();
  return 'error' in toolsCache ? { ok: false, reason: toolsCache.error } : { ok: true, tools: toolsCache };
}

function probe(): SandboxTools | { error: string } {
  const bwrap = which('bwrap');
  if (!bwrap) return { error: 'bwrap (bubblewrap) is not installed' };
  const unshare = which('unshare');
  const nsenter = which('nsenter');
  if (!unshare || !nsenter) return { error: 'unshare/nsenter (util-linux) not found' };
  if (process.geteuid?.() !== 0) return { error: 'the bwrap backend needs root on the host (overlayfs and veths are mounted/made by the host; see docs/RUNTIME.md)' };
  const r = spawnSync(bwrap, ['--unshare-all', '--die-with-parent', '--ro-bind', '/', '/', '--proc', '/proc', '--dev', '/dev', 'true'], { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) return { error: `bwrap cannot make namespaces here: ${(r.stderr || r.error?.message || `exit ${r.status}`).trim()}` };
  return { bwrap, unshare, nsenter, sh: '/bin/sh', ...(isExecutable(MOUNTSTEP_PATH) ? { mountstep: MOUNTSTEP_PATH } : {}) };
}

function isExecutable(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** One qube to sandbox. */
export interface SandboxSpec {
  readonly name: string;
  readonly domid: number;
  readonly volumes: QubeVolumes;
  readonly dataDir: string;
  /** A directory of this sandbox's own on the host (scratch mount point, small files); made and removed here. */
  readonly runDir: string;
  /** The host directory holding only this qube's vchan sockets (bound at /run/vchan). */
  readonly vchanDir: string;
  /** Command inside; default the qrexec-agent. */
  readonly command?: readonly string[];
  /** Environment added inside. */
  readonly env?: Readonly<Record<string, string>>;
  readonly limits?: Limits;
  /** A prepared network namespace; none: loopback only. */
  readonly network?: QubeNetwork;
  /** Size of the tmpfs holding throw-away layers (default 50% of RAM, the tmpfs default). */
  readonly scratchSize?: string;
  /** Its cgroup's name (default: the run directory's base name); unique among the host's sandboxes. */
  readonly cgroupName?: string;
  /** Extra binds (tests). */
  readonly binds?: readonly SandboxBind[];
  /** Where the sandbox's stdout and stderr go (default: discarded, stderr to `log`). */
  readonly log?: (line: string) => void;
}

/** The agent in one file, and its V8 startup snapshot, made by `npm run build` (scripts/build-agent.mjs). */
const AGENT_BUNDLE = path.join('dist', 'src', 'cli', 'qrexec-agent.bundle.js');
const AGENT_SNAPSHOT = path.join('dist', 'src', 'cli', 'qrexec-agent.snapshot.blob');
const AGENT_SNAPSHOT_STAMP = path.join('dist', 'src', 'cli', 'qrexec-agent.snapshot.json');

let snapshotFits: boolean | undefined;

/** Whether the snapshot was made by this very Node binary (a blob works with no other). */
function snapshotUsable(): boolean {
  if (snapshotFits === undefined) {
    try {
      const stamp = JSON.parse(fs.readFileSync(path.join(PROJECT, AGENT_SNAPSHOT_STAMP), 'utf8')) as { node?: string; execPath?: string; size?: number; mtimeMs?: number };
      const exe = fs.realpathSync(process.execPath);
      const st = fs.statSync(exe);
      snapshotFits = stamp.node === process.version && stamp.execPath === exe && stamp.size === st.size && stamp.mtimeMs === st.mtimeMs && fs.existsSync(path.join(PROJECT, AGENT_SNAPSHOT));
    } catch {
      snapshotFits = false;
    }
  }
  return snapshotFits;
}

/**
 * How Node inside starts the agent, fastest first: from the startup
 * snapshot (its modules already evaluated), from the one-file bundle (one
 * module to read and compile), or bin/qrexec-agent and its modules.
 * QREXEC_TS_AGENT_START=snapshot|bundle|modules caps the choice (measurements).
 */
export function agentEntry(): readonly string[] {
  const want = process.env['QREXEC_TS_AGENT_START'];
  const bundle = want !== 'modules' && fs.existsSync(path.join(PROJECT, AGENT_BUNDLE));
  // argv[1] is the bundle's path with the snapshot too: its paths (native/build) are found from it
  if (bundle && want !== 'bundle' && snapshotUsable()) return ['--snapshot-blob', `${INSIDE_PROJECT}/${AGENT_SNAPSHOT}`, `${INSIDE_PROJECT}/${AGENT_BUNDLE}`];
  return bundle ? [`${INSIDE_PROJECT}/${AGENT_BUNDLE}`] : [`${INSIDE_PROJECT}/bin/qrexec-agent`];
}

/** The plan of a qube's sandbox: pure but for reading the template's volume info. */
export function sandboxPlan(spec: SandboxSpec, cgroupProcs: readonly string[] = []): SandboxPlan {
  const scratch = path.join(spec.runDir, 'mnt');
  const vm = volumeMounts(spec.dataDir, spec.volumes, scratch, spec.scratchSize);
  const mounts: MountOp[] = [...cgroupProcs.map((procs) => ({ op: 'cgroup' as const, procs })), ...vm.mounts];
  const project: SandboxBind[] = [
    { source: path.join(PROJECT, 'package.json'), dest: `${INSIDE_PROJECT}/package.json`, readOnly: true },
    { source: path.join(PROJECT, 'dist'), dest: `${INSIDE_PROJECT}/dist`, readOnly: true },
    { source: path.join(PROJECT, 'bin'), dest: `${INSIDE_PROJECT}/bin`, readOnly: true },
    ...(fs.existsSync(path.join(PROJECT, 'native', 'build')) ? [{ source: path.join(PROJECT, 'native', 'build'), dest: `${INSIDE_PROJECT}/native/build`, readOnly: true }] : []),
    { source: process.execPath, dest: `${INSIDE_PROJECT}/node`, readOnly: true },
    // the services qrexec-ts installs in every qube (src/runtime/shipped.ts)
    { source: path.join(PROJECT, 'qubes-rpc'), dest: `${INSIDE_PROJECT}/qubes-rpc`, readOnly: true },
  ];
  return {
    name: spec.name,
    mounts,
    root: vm.root,
    binds: [...vm.binds, { source: spec.vchanDir, dest: INSIDE_VCHAN_DIR, readOnly: false }, ...project, ...(spec.binds ?? [])],
    files: [{ source: path.join(spec.runDir, 'hostname'), dest: '/etc/hostname', readOnly: true }],
    dirs: ['/run/qubes', '/run/qubes-rpc', INSIDE_PROJECT, `${INSIDE_PROJECT}/native`],
    ...(spec.network ? { netns: spec.network.path } : {}),
    env: {
      // then our commands (qvm-copy...) and the node that runs them
      PATH: `/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${INSIDE_PROJECT}/bin:${INSIDE_PROJECT}`,
      HOME: '/root',
      LANG: 'C.UTF-8',
      VCHAN_SOCKET_DIR: INSIDE_VCHAN_DIR,
      VCHAN_DOMAIN: String(spec.domid),
      // the reference's search paths, then the services every qube gets
      QREXEC_SERVICE_PATH: `/run/qubes-rpc:/usr/local/etc/qubes-rpc:/etc/qubes-rpc:${INSIDE_PROJECT}/qubes-rpc/qube`,
      QUBES_RPC_CONFIG_PATH: `/run/qubes/rpc-config:/usr/local/etc/qubes/rpc-config:/etc/qubes/rpc-config:${INSIDE_PROJECT}/qubes-rpc/qube-config`,
      ...(spec.env ?? {}),
    },
    command: ['/bin/sh', '-c', LIFELINE_SCRIPT, 'qrexec-sandbox', ...(spec.command ?? [`${INSIDE_PROJECT}/node`, ...agentEntry(), `--agent-socket=${INSIDE_AGENT_SOCKET}`])],
    infoFd: 3,
  };
}

/**
 * The sandbox's main process (pid 2, under bwrap's init, as root): runs the
 * command without the lifeline (fd 4, whose other end only the host holds),
 * and when the command ends, or when the lifeline reads EOF because the host
 * died (even by SIGKILL), kills every other process of the pid namespace
 * (`kill -1`). bwrap's init exits once it has no child left, and the
 * namespaces go with it. (bwrap's init waits for all its children, not only
 * the command; and --die-with-parent misses a host killed during the start.)
 */
export const LIFELINE_SCRIPT = '"$@" 4<&- & p=$!; { read _ <&4; kill -9 -1; } 2>/dev/null 4<&4 & wait $p; s=$?; kill -9 -1 2>/dev/null; exit $s';

type State = 'starting' | 'running' | 'paused' | 'stopped';

/** A started sandbox. */
export class Sandbox {
  private state: State = 'starting';
  private stderrTail = '';
  /** Resolves when the sandbox's bwrap has exited (its exit code or signal). */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  private constructor(
    readonly spec: SandboxSpec,
    private readonly proc: ChildProcess,
    /** Host pid of the sandbox's pid 1 (bwrap's child in the new pid namespace). */
    readonly initPid: number,
    readonly cgroup: SandboxCgroup | undefined,
  ) {
    this.exited = new Promise((resolve) => {
      if (proc.exitCode !== null || proc.signalCode !== null) resolve({ code: proc.exitCode, signal: proc.signalCode });
      else proc.once('exit', (code, signal) => resolve({ code, signal }));
    });
    void this.exited.then(() => {
      if (this.state !== 'stopped') this.state = 'stopped';
    });
  }

  /** The host pid of bwrap (the sandbox's outermost process). */
  get pid(): number {
    return this.proc.pid ?? -1;
  }

  get running(): boolean {
    return this.state === 'running' || this.state === 'paused';
  }

  get paused(): boolean {
    return this.state === 'paused';
  }

  /**
   * Starts the sandbox; resolves once its pid namespace exists (bwrap's info
   * with the child pid). Readiness of the command is the caller's business
   * (for the agent: its control vchan socket, see {@link waitAgentListening}).
   */
  static async start(spec: SandboxSpec): Promise<Sandbox> {
    const support = sandboxSupport();
    if (!support.ok) throw new SandboxError('UNAVAILABLE', support.reason);
    fs.mkdirSync(spec.runDir, { recursive: true, mode: 0o700 });
    fs.writeFileSync(path.join(spec.runDir, 'hostname'), `${spec.name}\n`);
    fs.mkdirSync(spec.vchanDir, { recursive: true, mode: 0o700 });
    // the qube's user may make its own vchan ends too (a program calling through the
    // agent library, as qvm-copy does): the directory is this qube's alone, and its
    // root could already write there (CAP_DAC_OVERRIDE)
    fs.chownSync(spec.vchanDir, QUBE_USER_UID, QUBE_USER_UID);
    const cgroup = spec.limits ? SandboxCgroup.create(spec.cgroupName ?? path.basename(spec.runDir), spec.limits) : undefined;
    const plan = sandboxPlan(spec, cgroup?.procsFiles ?? []);
    // QREXEC_TS_SHELL_MOUNTSTEP=1: the shell script's mount step even with the native one built (tests of that path)
    const { mountstep, ...shellTools } = support.tools;
    const cmd = launchCommand(plan, process.env['QREXEC_TS_SHELL_MOUNTSTEP'] === '1' || mountstep === undefined ? shellTools : { ...shellTools, mountstep });
    const fds: number[] = [];
    let proc: ChildProcess;
    try {
      for (const f of cmd.fds) fds.push(openDirBeneath(f.base, f.rel));
      proc = spawn(cmd.file, cmd.args, { stdio: ['ignore', 'pipe', 'pipe', 'pipe', 'pipe', ...fds], env: { PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin' } });
    } catch (e) {
      await cgroup?.destroy().catch(() => undefined);
      fs.rmSync(spec.runDir, { recursive: true, force: true });
      throw e instanceof SandboxError ? new SandboxError('STORAGE', `${spec.name}: ${e.message}`) : e;
    } finally {
      for (const fd of fds) fs.closeSync(fd);
    }
    // the lifeline: never written; it closes when this process dies (it keeps no event loop alive)
    const lifeline = proc.stdio[4] as (Readable & { unref?: () => void }) | null;
    lifeline?.on('error', () => undefined);
    lifeline?.unref?.();
    const log = spec.log;
    let tail = '';
    const onOut = (d: Buffer): void => {
      const s = d.toString();
      tail = (tail + s).slice(-2000);
      if (log) for (const l of s.split('\n')) if (l) log(l);
    };
    proc.stdout?.on('data', onOut);
    proc.stderr?.on('data', onOut);
    try {
      const initPid = await readInfo(proc, () => tail);
      const sb = new Sandbox(spec, proc, initPid, cgroup);
      sb.state = 'running';
      if (ownsRoot(spec) && proc.pid !== undefined) markRunning(spec.dataDir, spec.name, proc.pid);
      proc.stderr?.on('data', () => {
        sb.stderrTail = tail;
      });
      return sb;
    } catch (e) {
      proc.kill('SIGKILL');
      await new Promise((r) => (proc.exitCode !== null || proc.signalCode !== null ? r(null) : proc.once('exit', r)));
      await cgroup?.destroy().catch(() => undefined);
      fs.rmSync(spec.runDir, { recursive: true, force: true });
      throw e;
    }
  }

  /** What the sandbox printed last (for error messages). */
  get output(): string {
    return this.stderrTail;
  }

  /**
   * The processes a SIGSTOP pause stops: all but the sandbox's own
   * supervision (its init, pid 1; the main shell, pid 2; and the lifeline
   * reader, a fork of that shell), which must stay able to kill everything
   * when the host dies.
   */
  private pausable(): number[] {
    const nsPid = (p: number): string | undefined => /^NSpid:.*\s(\d+)$/m.exec(readProc(p, 'status'))?.[1];
    const all = this.pids().filter((p) => p !== this.pid);
    const main = all.find((p) => nsPid(p) === '2');
    const mainCmd = main === undefined ? undefined : readProc(main, 'cmdline');
    return all.filter((p) => {
      const n = nsPid(p);
      return n !== undefined && n !== '1' && n !== '2' && readProc(p, 'cmdline') !== mainCmd;
    });
  }

  /** Host pids of every process of the sandbox (from its cgroup, else by its pid namespace). */
  pids(): number[] {
    if (this.cgroup) return this.cgroup.pids();
    return pidsInNamespaceOf(this.initPid, this.pid);
  }

  /**
   * Pause: the cgroup freezer, else SIGSTOP of every process of the pid
   * namespace. The state changes at once and the freezer operations run one
   * after the other: an unpause asked while a pause is still freezing thaws
   * after it (it is not lost, leaving the qube frozen).
   */
  async pause(): Promise<void> {
    if (this.state !== 'running') throw new SandboxError('STATE', `${this.spec.name} is ${this.state}, not running`);
    this.state = 'paused';
    await this.freezer(true);
  }

  async unpause(): Promise<void> {
    if (this.state !== 'paused') throw new SandboxError('STATE', `${this.spec.name} is ${this.state}, not paused`);
    this.state = 'running';
    await this.freezer(false);
  }

  private freezeOps: Promise<void> = Promise.resolve();

  private freezer(on: boolean): Promise<void> {
    const op = this.freezeOps.then(async () => {
      if (this.cgroup?.canFreeze) await this.cgroup.freeze(on);
      else {
        // twice: a process forked while the first round ran is stopped by the second
        for (let i = 0; i < (on ? 2 : 1); i++) for (const p of this.pausable()) signal(p, on ? 'SIGSTOP' : 'SIGCONT');
      }
    });
    this.freezeOps = op.catch(() => undefined);
    return op;
  }

  /**
   * Ends the sandbox: SIGKILL of its pid 1 (the kernel then kills everything
   * in the pid namespace) and of bwrap; waits for bwrap, removes the cgroup
   * and the run directory. Throw-away layers go with the mount namespace.
   * Resolves with how long it took (ms).
   */
  async stop(): Promise<number> {
    const t0 = performance.now();
    if (this.cgroup && this.state === 'paused') await this.cgroup.freeze(false).catch(() => undefined);
    this.state = 'stopped';
    signal(this.initPid, 'SIGKILL');
    signal(this.pid, 'SIGKILL');
    await this.exited;
    // processes of the namespace may take a moment to be reaped
    for (let i = 0; i < 400 && pidAlive(this.initPid); i++) await sleep(1);
    if (this.cgroup) await this.cgroup.destroy();
    fs.rmSync(this.spec.runDir, { recursive: true, force: true });
    if (ownsRoot(this.spec)) {
      commitPendingLayer(this.spec.dataDir, this.spec.name);
      markRunning(this.spec.dataDir, this.spec.name, undefined);
    }
    return performance.now() - t0;
  }
}

/** A TemplateVM or StandaloneVM: it writes its own root. */
function ownsRoot(spec: SandboxSpec): boolean {
  const k = spec.volumes.klass;
  return k === 'TemplateVM' || k === 'StandaloneVM';
}

function signal(pid: number, sig: NodeJS.Signals): void {
  if (pid <= 0) return;
  try {
    process.kill(pid, sig);
  } catch {
    /* gone */
  }
}

function readProc(pid: number, file: string): string {
  try {
    return fs.readFileSync(`/proc/${pid}/${file}`, 'latin1');
  } catch {
    return '';
  }
}

function pidAlive(pid: number): boolean {
  try {
    const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/\) Z /.test(st);
  } catch {
    return false;
  }
}

/** Pids whose pid namespace is that of `initPid` (plus `outer`, bwrap itself). */
function pidsInNamespaceOf(initPid: number, outer: number): number[] {
  let ns: string;
  try {
    ns = fs.readlinkSync(`/proc/${initPid}/ns/pid`);
  } catch {
    return [];
  }
  const out = outer > 0 ? [outer] : [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if (fs.readlinkSync(`/proc/${e}/ns/pid`) === ns) out.push(Number(e));
    } catch {
      /* exited */
    }
  }
  return out;
}

/** bwrap's --info-fd JSON: the child pid; rejects when bwrap exits first. */
function readInfo(proc: ChildProcess, tail: () => string): Promise<number> {
  const info = proc.stdio[3] as Readable | null | undefined;
  return new Promise((resolve, reject) => {
    let buf = '';
    const fail = (why: string): void => reject(new SandboxError('START', `${why}${tail() ? `: ${tail().trim()}` : ''}`));
    const onExit = (code: number | null, sig: string | null): void => {
      setTimeout(() => fail(`sandbox exited during start (${sig ?? `exit ${code}`})`), 20);
    };
    proc.once('exit', onExit);
    proc.once('error', (e) => fail(`cannot start ${e.message}`));
    if (!info) {
      fail('no info descriptor');
      return;
    }
    info.on('data', (d: Buffer) => {
      buf += d.toString();
      const m = /"child-pid"\s*:\s*(\d+)/.exec(buf);
      if (m) {
        proc.off('exit', onExit);
        // keep reading (and dropping) the rest: closing our end would SIGPIPE bwrap on its next write
        info.removeAllListeners('data');
        info.resume();
        resolve(Number(m[1]));
      }
    });
  });
}

/**
 * Resolves once the sandbox's agent has done its handshake with the host
 * (it then opens its agent socket, which we see through /proc/PID/root), or
 * with `listening` once it listens for its host; rejects when the sandbox
 * exits or after `timeoutMs`.
 */
export async function waitAgentReady(sb: Sandbox, timeoutMs: number, opts: { listening?: boolean } = {}): Promise<void> {
  const f = `/proc/${sb.initPid}/root${INSIDE_AGENT_SOCKET}`;
  // with `listening`, also its control vchan listening for the host (the host's connect then removes it)
  const ctrl = path.join(sb.spec.vchanDir, `vchan.${sb.spec.domid}.0.512.sock`);
  // lstat: names the qube made are never followed by the host
  const exists = (p: string): boolean => fs.lstatSync(p, { throwIfNoEntry: false }) !== undefined;
  const seen = (): boolean => exists(f) || (opts.listening === true && exists(ctrl));
  const end = Date.now() + timeoutMs;
  let exited = false;
  void sb.exited.then(() => (exited = true));
  for (let delay = 1; !seen(); delay = Math.min(delay * 2, 20)) {
    const why = exited ? 'exited before its agent was ready' : Date.now() > end ? `agent not ready after ${timeoutMs} ms` : undefined;
    if (why) throw new SandboxError('START', `${sb.spec.name}: ${why}${sb.output ? `: ${sb.output.trim()}` : ''}`);
    await sleep(delay);
  }
}
