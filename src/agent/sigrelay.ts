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

const Op = { NEW: 1, RELEASE: 3 } as const;
const Rec = { READY: 1, SIGNAL: 2, FAILED: 4 } as const;
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

export class SignalRelays {
  private readonly child: ChildProcess;
  private readonly ready: number[] = [];
  private readonly waiters: Array<(pid: number | undefined) => void> = [];
  private requested = 0;
  private pending: Buffer = Buffer.alloc(0);
  private dead = false;

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

  private send(op: number, pid: number): void {
    if (this.dead) return;
    const b = Buffer.alloc(8);
    b.writeUInt32LE(op, 0);
    b.writeUInt32LE(pid, 4);
    this.child.stdin?.write(b);
  }

  private onData(d: Buffer): void {
    this.pending = this.pending.length ? Buffer.concat([this.pending, d]) : d;
    let off = 0;
    for (; this.pending.length - off >= 12; off += 12) {
      const type = this.pending.readUInt32LE(off);
      const pid = this.pending.readUInt32LE(off + 4);
      if (type === Rec.READY || type === Rec.FAILED) {
        this.requested = Math.max(0, this.requested - 1);
        const got = type === Rec.READY ? pid : undefined;
        const w = this.waiters.shift();
        if (w) w(got);
        else if (got !== undefined) this.ready.push(got);
      } else if (type === Rec.SIGNAL) {
        this.onSignal(pid);
      }
    }
    this.pending = this.pending.subarray(off);
  }

  private fail(why: string): void {
    if (this.dead) return;
    this.dead = true;
    this.log(why);
    for (const w of this.waiters.splice(0)) w(undefined);
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
