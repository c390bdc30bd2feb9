/**
 * Per-call SIGUSR1 targets (native/qrexec-sigrelay.c). A service asks for the
 * single-socket switch with `kill -USR1 $QREXEC_AGENT_PID`. One agent serves
 * every call, and standard signals do not queue: two services signalling the
 * agent itself at the same moment are one signal, and one switch is lost. So
 * each call's QREXEC_AGENT_PID is a relay process of its own, forked by one
 * small C server that the agent starts once; the server reports each relay's
 * signals as records. A relay never takes its SIGUSR1: it stays pending, so
 * `signalled` sees at once, in /proc, a signal whose record is not read yet
 * (before a call's output EOF is handled).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as os from 'node:os';
import { EventEmitter } from 'node:events';
import { loadNative } from '../native/addon.js';
import type { ServiceSpawner, SpawnedService, SpawnRequest } from '../services/exec.js';

const Op = { NEW: 1, RELEASE: 3, SPAWN: 4 } as const;
const Rec = { READY: 1, SIGNAL: 2, FAILED: 4, SPAWNED: 5, SPAWN_ERROR: 6, EXITED: 7 } as const;
const NO_ID = 0xffffffff;
const SIGUSR1_BIT = 1n << 9n;
/** Relays kept ready, so that a call does not wait for a fork. */
const POOL = 4;

/** Where `npm run build:native` puts the relay server. */
export function sigrelayPath(): string {
  const here = path.dirname(fileURLToPath(import.meta.url)); // dist/src/agent
  return path.resolve(here, '..', '..', '..', 'native', 'build', 'qrexec-sigrelay');
}

/** One call's signal target. */
export interface Relay {
  readonly pid: number;
  /** Whether SIGUSR1 was sent to the relay before now (its record may not be read yet). */
  signalled(): boolean;
  /** The call is over: the relay is killed. */
  release(): void;
}

/**
 * A service spawned by the server: 'exit' (code, signal) as a ChildProcess's.
 * Its exit may be read in the same chunk as its start, before anyone
 * listens: it is kept and given to later 'exit' listeners too.
 */
class RemoteChild extends EventEmitter implements SpawnedService {
  private status: [number | null, NodeJS.Signals | null] | undefined;
  constructor(readonly pid: number) {
    super();
    this.on('newListener', (event: string, cb: (...a: unknown[]) => void) => {
      const st = this.status;
      if (event === 'exit' && st) process.nextTick(() => cb(...st));
    });
  }

  exited(code: number | null, signal: NodeJS.Signals | null): void {
    if (this.status) return;
    this.status = [code, signal];
    this.emit('exit', code, signal);
  }
}

export class SignalRelays implements ServiceSpawner {
  private readonly child: ChildProcess;
  private readonly ready: number[] = [];
  private readonly waiters: Array<(pid: number | undefined) => void> = [];
  private requested = 0;
  private pending: Buffer = Buffer.alloc(0);
  private dead = false;
  private readonly spawning = new Map<number, (r: RemoteChild | NodeJS.ErrnoException) => void>();
  private readonly running = new Map<number, RemoteChild>();
  private nextTag = 1;
  /** The server's stdin (a socket): written only with sendmsg, so records and descriptors never interleave. */
  private readonly fd: number | undefined;
  private readonly queue: Array<{ data: Buffer; fds: number[]; onSent?: () => void }> = [];

  /**
   * Starts the relay server; `onSignal(relay)` is called when a relay was
   * first sent SIGUSR1. Returns undefined when it is not built.
   */
  static start(onSignal: (relay: number) => void, log: (msg: string) => void): SignalRelays | undefined {
    const file = sigrelayPath();
    if (process.env['QREXEC_TS_NO_NATIVE'] === '1' || !fs.existsSync(file)) return undefined;
    return new SignalRelays(file, onSignal, log);
  }

  private constructor(file: string, private readonly onSignal: (relay: number) => void, private readonly log: (msg: string) => void) {
    this.child = spawn(file, [], { stdio: ['pipe', 'pipe', 'inherit'] });
    this.child.on('error', (e) => this.fail(`signal relay server: ${e.message}`));
    this.child.on('exit', (code, sig) => this.fail(`signal relay server exited (${sig ?? code})`));
    this.child.stdin?.on('error', () => undefined);
    this.child.stdout?.on('data', (d: Buffer) => this.onData(d));
    const fd = (this.child.stdin as unknown as { _handle?: { fd?: number } } | null)?._handle?.fd;
    this.fd = typeof fd === 'number' && fd >= 0 && typeof loadNative()?.sendFds === 'function' ? fd : undefined;
    this.fill();
  }

  /** A relay for a new call, or undefined when the server failed (the agent itself is the target then). */
  take(): Promise<number | undefined> | number | undefined {
    if (this.dead) return undefined;
    const pid = this.ready.pop();
    this.fill();
    if (pid !== undefined) return pid;
    return new Promise((resolve) => {
      this.waiters.push(resolve);
      this.fill();
    });
  }

  /** The relay's handle (sync, release). */
  relay(pid: number): Relay {
    return {
      pid,
      signalled: () => pendingSigusr1(pid),
      release: () => this.send(Op.RELEASE, pid),
    };
  }

  /** Stops the server (its relays die with it). */
  close(): void {
    this.dead = true;
    this.child.stdin?.end();
    this.child.kill('SIGKILL');
  }

  private fill(): void {
    while (!this.dead && this.ready.length + this.requested < POOL + this.waiters.length) {
      this.requested++;
      this.send(Op.NEW, 0);
    }
  }

  /** Whether services can be spawned here (the addon can pass descriptors). */
  get canSpawn(): boolean {
    return this.fd !== undefined && !this.dead;
  }

  /**
   * Spawns a service (the server forks and execs it with `stdio` as its
   * descriptors 0-2, which are ours to close once sent). Resolves once it
   * ran execve, or rejects with the errno error (as Node's spawn 'error').
   */
  spawn(req: SpawnRequest): Promise<SpawnedService> {
    const tag = this.nextTag;
    this.nextTag = (this.nextTag % 0xfffffff0) + 1;
    const strs = [req.file, req.cwd ?? '', req.argv0, ...req.args, ...Object.entries(req.env).filter((e): e is [string, string] => e[1] !== undefined).map(([k, v]) => `${k}=${v}`)];
    if (strs.some((x) => x.includes('\0'))) return Promise.reject(Object.assign(new Error(`spawn ${req.file} EINVAL`), { code: 'EINVAL' }));
    const body = Buffer.from(`${strs.join('\0')}\0`);
    const head = Buffer.alloc(28);
    head.writeUInt32LE(Op.SPAWN, 0);
    head.writeUInt32LE(20 + body.length, 4);
    head.writeUInt32LE(tag, 8);
    head.writeUInt32LE(req.uid ?? NO_ID, 12);
    head.writeUInt32LE(req.gid ?? NO_ID, 16);
    head.writeUInt32LE(1 + req.args.length, 20);
    head.writeUInt32LE(strs.length - 3 - req.args.length, 24);
    return new Promise((resolve, reject) => {
      if (!this.canSpawn) return reject(Object.assign(new Error(`spawn ${req.file} ENOSYS`), { code: 'ENOSYS' }));
      this.spawning.set(tag, (r) => (r instanceof RemoteChild ? resolve(r) : reject(r)));
      this.queue.push({ data: Buffer.concat([head, body]), fds: [...req.stdio] });
      this.flush();
    });
  }

  private send(op: number, pid: number): void {
    if (this.dead) return;
    const b = Buffer.alloc(8);
    b.writeUInt32LE(op, 0);
    b.writeUInt32LE(pid, 4);
    if (this.fd === undefined) {
      this.child.stdin?.write(b);
      return;
    }
    this.queue.push({ data: b, fds: [] });
    this.flush();
  }

  /** Sends what is queued (sendmsg); a full socket is retried on the next turn. */
  private flush(): void {
    const n = loadNative();
    while (this.queue.length > 0 && this.fd !== undefined && n?.sendFds && !this.dead) {
      const m = this.queue[0] as { data: Buffer; fds: number[] };
      let sent: number;
      try {
        sent = n.sendFds(this.fd, m.data, m.fds);
      } catch (e) {
        if (/EAGAIN|EWOULDBLOCK/.test((e as Error).message)) {
          setImmediate(() => this.flush());
          return;
        }
        this.fail(`signal relay server: ${(e as Error).message}`);
        return;
      }
      // the descriptors went with the first byte
      m.fds = [];
      if (sent < m.data.length) {
        m.data = m.data.subarray(sent);
        continue;
      }
      this.queue.shift();
    }
  }

  private onData(d: Buffer): void {
    this.pending = this.pending.length ? Buffer.concat([this.pending, d]) : d;
    let off = 0;
    for (; this.pending.length - off >= 12; off += 12) {
      const type = this.pending.readUInt32LE(off);
      const pid = this.pending.readUInt32LE(off + 4);
      const value = this.pending.readUInt32LE(off + 8);
      if (type === Rec.READY || type === Rec.FAILED) {
        this.requested = Math.max(0, this.requested - 1);
        const got = type === Rec.READY ? pid : undefined;
        const w = this.waiters.shift();
        if (w) w(got);
        else if (got !== undefined) this.ready.push(got);
      } else if (type === Rec.SIGNAL) {
        this.onSignal(pid);
      } else if (type === Rec.SPAWNED || type === Rec.SPAWN_ERROR) {
        const done = this.spawning.get(pid);
        this.spawning.delete(pid);
        if (type === Rec.SPAWNED) {
          const c = new RemoteChild(value);
          this.running.set(value, c);
          done?.(c);
        } else {
          const code = errnoName(value);
          done?.(Object.assign(new Error(`spawn ${code}`), { code, errno: -value }));
        }
      } else if (type === Rec.EXITED) {
        const c = this.running.get(pid);
        this.running.delete(pid);
        if (c) {
          const sig = value & 0x7f;
          if (sig === 0) c.exited((value >> 8) & 0xff, null);
          else c.exited(null, signalName(sig));
        }
      }
    }
    this.pending = this.pending.subarray(off);
  }

  private fail(why: string): void {
    if (this.dead) return;
    this.dead = true;
    this.log(why);
    for (const w of this.waiters.splice(0)) w(undefined);
    for (const done of this.spawning.values()) done(Object.assign(new Error('spawn EPIPE: the relay server is gone'), { code: 'EPIPE' }));
    this.spawning.clear();
    // their exits will not be reported: as killed
    for (const c of this.running.values()) c.exited(null, 'SIGKILL');
    this.running.clear();
  }
}

/** SIGUSR1 in the process's shared pending set (what kill(2) sets), from /proc/PID/status. */
function pendingSigusr1(pid: number): boolean {
  let st: string;
  try {
    st = fs.readFileSync(`/proc/${pid}/status`, 'latin1');
  } catch {
    return false;
  }
  const m = /^ShdPnd:\s*([0-9a-f]+)/m.exec(st);
  return m !== null && (BigInt(`0x${m[1]}`) & SIGUSR1_BIT) !== 0n;
}

function errnoName(n: number): string {
  const e = Object.entries(os.constants.errno).find(([, v]) => v === n);
  return e ? e[0] : `E${n}`;
}

function signalName(n: number): NodeJS.Signals {
  const e = Object.entries(os.constants.signals).find(([, v]) => v === n);
  return (e ? e[0] : 'SIGKILL') as NodeJS.Signals;
}
