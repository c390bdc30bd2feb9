/**
 * Per-qube limits through cgroups: cgroup v2 when the host has it with
 * controllers (memory.max, pids.max, cpu.max, cgroup.freeze), else the v1
 * hierarchies (memory, pids, cpu, freezer), each qube's group made under our
 * own group of that hierarchy. With neither, no limits (the caller says so).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { SandboxError } from './errors.js';

export interface Limits {
  /** Bytes of memory for all the qube's processes (maxmem). */
  readonly memoryBytes?: number;
  /** Most processes and threads. */
  readonly pids?: number;
  /** CPUs' worth of time (vcpus). */
  readonly cpus?: number;
}

const CG = '/sys/fs/cgroup';
const V1_CONTROLLERS = ['memory', 'pids', 'cpu', 'freezer'] as const;

/** Which cgroup interface the host offers us. */
export type CgroupMode = { readonly kind: 'v2'; readonly base: string } | { readonly kind: 'v1'; readonly bases: ReadonlyMap<string, string> } | { readonly kind: 'none'; readonly reason: string };

/** Our own group in each hierarchy, from /proc/self/cgroup. */
function ownGroups(): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of fs.readFileSync('/proc/self/cgroup', 'utf8').split('\n')) {
    const [, ctrls, p] = line.split(':');
    if (ctrls === undefined || p === undefined) continue;
    for (const c of ctrls === '' ? ['']: ctrls.split(',')) m.set(c, p);
  }
  return m;
}

let detected: CgroupMode | undefined;

/** Detects (once) where qubes' groups can be made. */
export function detectCgroups(): CgroupMode {
  if (detected) return detected;
  detected = detect();
  return detected;
}

function detect(): CgroupMode {
  if (process.geteuid?.() !== 0) return { kind: 'none', reason: 'not root (cgroup delegation is not set up)' };
  const own = ownGroups();
  if (fs.existsSync(path.join(CG, 'cgroup.controllers'))) {
    const base = path.join(CG, own.get('') ?? '/', 'qrexec-ts');
    try {
      fs.mkdirSync(base, { recursive: true });
      const avail = fs.readFileSync(path.join(path.dirname(base), 'cgroup.controllers'), 'utf8').trim().split(/\s+/);
      const want = ['memory', 'pids', 'cpu'].filter((c) => avail.includes(c));
      fs.writeFileSync(path.join(path.dirname(base), 'cgroup.subtree_control'), want.map((c) => `+${c}`).join(' '));
      fs.writeFileSync(path.join(base, 'cgroup.subtree_control'), want.map((c) => `+${c}`).join(' '));
      return { kind: 'v2', base };
    } catch (e) {
      return { kind: 'none', reason: `cgroup v2 at ${CG}: cannot delegate controllers (${(e as Error).message})` };
    }
  }
  const bases = new Map<string, string>();
  for (const c of V1_CONTROLLERS) {
    const root = path.join(CG, c);
    if (!fs.existsSync(path.join(root, 'cgroup.procs'))) continue;
    const base = path.join(root, own.get(c) ?? '/', 'qrexec-ts');
    try {
      fs.mkdirSync(base, { recursive: true });
      bases.set(c, base);
    } catch {
      /* not writable: without this controller */
    }
  }
  if (bases.size === 0) return { kind: 'none', reason: `no writable cgroup v2 or v1 hierarchy under ${CG}` };
  return { kind: 'v1', bases };
}

/**
 * Removes the groups whose name starts with `prefix` (a host killed with -9
 * left them; their processes died with their sandboxes, and any left are
 * killed). Returns how many were removed.
 */
export function cleanStaleCgroups(prefix: string): number {
  const mode = detectCgroups();
  if (mode.kind === 'none' || prefix === '') return 0;
  const bases = mode.kind === 'v2' ? [mode.base] : [...mode.bases.values()];
  let n = 0;
  for (const base of bases) {
    let names: string[];
    try {
      names = fs.readdirSync(base).filter((e) => e.startsWith(prefix));
    } catch {
      continue;
    }
    for (const e of names) {
      const d = path.join(base, e);
      try {
        for (const pid of fs.readFileSync(path.join(d, 'cgroup.procs'), 'utf8').split('\n').filter((x) => x)) {
          try {
            process.kill(Number(pid), 'SIGKILL');
          } catch {
            /* gone */
          }
        }
        if (fs.existsSync(path.join(d, 'freezer.state'))) fs.writeFileSync(path.join(d, 'freezer.state'), 'THAWED');
        fs.rmdirSync(d);
        n++;
      } catch {
        /* busy or gone: a later start reports it */
      }
    }
  }
  return n;
}

/**
 * Makes group `d` of sandbox `id`. One of that name left behind (a host or
 * test killed before its cleanup) is removed when it holds no process, and
 * reused when the kernel keeps it (a child group); one that still holds
 * processes belongs to a live sandbox and is refused.
 */
function makeOrReclaim(d: string, id: string): void {
  try {
    fs.mkdirSync(d);
    return;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  let procs: string[];
  try {
    procs = fs.readFileSync(path.join(d, 'cgroup.procs'), 'utf8').split('\n').filter((x) => x);
  } catch (e) {
    throw new SandboxError('CGROUP', `cgroup for ${id}: ${d} exists and is not a usable group (${(e as Error).message})`);
  }
  if (procs.length > 0) {
    throw new SandboxError('CGROUP', `cgroup for ${id}: ${d} already holds processes (${procs.slice(0, 5).join(', ')}${procs.length > 5 ? ', ...' : ''}): another sandbox of this name is running`);
  }
  try {
    fs.rmdirSync(d);
    fs.mkdirSync(d);
  } catch (e) {
    // still there (it has child groups): empty of processes, so ours to reuse
    if (!fs.existsSync(d)) throw e;
  }
}

/** The groups of one sandbox. */
export class SandboxCgroup {
  private constructor(
    readonly mode: CgroupMode,
    /** controller ('' in v2) -> group directory */
    readonly dirs: ReadonlyMap<string, string>,
  ) {}

  /** Makes the groups of sandbox `id` with `limits`; undefined when the host has no cgroups for us. */
  static create(id: string, limits: Limits): SandboxCgroup | undefined {
    const mode = detectCgroups();
    if (mode.kind === 'none') return undefined;
    const dirs = new Map<string, string>();
    const bases = mode.kind === 'v2' ? new Map([['', mode.base]]) : mode.bases;
    try {
      for (const [c, base] of bases) {
        const d = path.join(base, id);
        makeOrReclaim(d, id);
        dirs.set(c, d);
      }
      const cg = new SandboxCgroup(mode, dirs);
      cg.apply(limits);
      return cg;
    } catch (e) {
      for (const d of dirs.values()) fs.rmSync(d, { force: true, recursive: false });
      if (e instanceof SandboxError) throw e;
      throw new SandboxError('CGROUP', `cgroup for ${id}: ${(e as Error).message}`);
    }
  }

  private write(ctrl: string, file: string, value: string): void {
    const d = this.dirs.get(this.mode.kind === 'v2' ? '' : ctrl);
    if (d === undefined) return;
    fs.writeFileSync(path.join(d, file), value);
  }

  private apply(l: Limits): void {
    const v2 = this.mode.kind === 'v2';
    if (l.memoryBytes !== undefined) {
      this.write('memory', v2 ? 'memory.max' : 'memory.limit_in_bytes', String(l.memoryBytes));
      if (v2) this.write('memory', 'memory.swap.max', '0');
    }
    if (l.pids !== undefined) this.write('pids', 'pids.max', String(l.pids));
    if (l.cpus !== undefined) {
      const period = 100_000;
      const quota = Math.max(1000, Math.round(l.cpus * period));
      if (v2) this.write('cpu', 'cpu.max', `${quota} ${period}`);
      else {
        this.write('cpu', 'cpu.cfs_period_us', String(period));
        this.write('cpu', 'cpu.cfs_quota_us', String(quota));
      }
    }
  }

  /** The `cgroup.procs` files the sandbox's first process joins. */
  get procsFiles(): string[] {
    return [...this.dirs.values()].map((d) => path.join(d, 'cgroup.procs'));
  }

  /** Pids in the group (the memory or pids group in v1). */
  pids(): number[] {
    const d = this.dirs.get('') ?? this.dirs.get('pids') ?? this.dirs.get('memory') ?? [...this.dirs.values()][0];
    if (d === undefined) return [];
    try {
      return fs.readFileSync(path.join(d, 'cgroup.procs'), 'utf8').split('\n').filter((x) => x).map(Number);
    } catch {
      return [];
    }
  }

  /**
   * True when pause may use the freezer: cgroup v2 only. A task frozen by
   * the v1 freezer does not die of SIGKILL until thawed, so a paused qube
   * (a preloaded disposable) would outlive a host killed with -9 (its
   * lifeline and --die-with-parent cannot act); in v2 fatal signals kill
   * frozen tasks. On v1, pause is SIGSTOP, which SIGKILL ends.
   */
  get canFreeze(): boolean {
    return this.mode.kind === 'v2';
  }

  /** Freezes (true) or thaws (false) every process of the qube; waits until the freezer says so. */
  async freeze(on: boolean): Promise<void> {
    if (this.mode.kind === 'v2') {
      this.write('', 'cgroup.freeze', on ? '1' : '0');
      return;
    }
    const d = this.dirs.get('freezer');
    if (d === undefined) throw new SandboxError('CGROUP', 'no freezer');
    fs.writeFileSync(path.join(d, 'freezer.state'), on ? 'FROZEN' : 'THAWED');
    for (let i = 0; i < 200; i++) {
      const s = fs.readFileSync(path.join(d, 'freezer.state'), 'utf8').trim();
      if (s === (on ? 'FROZEN' : 'THAWED')) return;
      await sleep(5);
    }
    throw new SandboxError('CGROUP', `freezer did not reach ${on ? 'FROZEN' : 'THAWED'}`);
  }

  /** Memory in use now (bytes), or undefined. */
  memoryCurrent(): number | undefined {
    const v2 = this.mode.kind === 'v2';
    const d = this.dirs.get(v2 ? '' : 'memory');
    if (d === undefined) return undefined;
    try {
      return Number(fs.readFileSync(path.join(d, v2 ? 'memory.current' : 'memory.usage_in_bytes'), 'utf8').trim());
    } catch {
      return undefined;
    }
  }

  /** Kills what is left and removes the groups (retrying while the kernel still counts exiting processes). */
  async destroy(): Promise<void> {
    // the kernel empties a killed group within milliseconds: retries from 1 ms, doubling to 10 ms (about 1 s in all)
    for (let i = 0, delay = 1; i < 110; i++, delay = Math.min(delay * 2, 10)) {
      for (const p of this.pids()) {
        try {
          process.kill(p, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      if (this.mode.kind === 'v1' && this.dirs.has('freezer')) {
        try {
          fs.writeFileSync(path.join(this.dirs.get('freezer') as string, 'freezer.state'), 'THAWED');
        } catch {
          /* removed */
        }
      }
      let left = 0;
      for (const d of this.dirs.values()) {
        try {
          fs.rmdirSync(d);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ENOENT') left++;
        }
      }
      if (left === 0) return;
      await sleep(delay);
    }
    throw new SandboxError('CGROUP', `cgroup ${[...this.dirs.values()].join(', ')} still busy`);
  }
}
