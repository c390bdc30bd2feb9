/**
 * The policy the daemon decides with, kept in memory and reloaded when the
 * files change.
 *
 * A reload builds a complete new Policy and only then swaps it in, so a
 * request sees either the old policy or the new one, never a mixture. A
 * policy that fails to load replaces the old one by a "broken" state in
 * which every request is denied (fail closed) and the error (file:line) is
 * logged — at once, and again at most every few seconds while requests are
 * being denied — until the files are fixed; the next change reloads.
 *
 * Watching: each policy directory and every directory below it
 * (include/...) get a plain inotify watch through fs.watch; a policy
 * directory that is missing (removed, renamed away, not yet created) is
 * awaited by a watch on its parent, set only while it is missing, for its
 * name only (a busy parent — an audit log next to the policy — costs
 * nothing while the directory exists). Events are debounced (a
 * burst of writes becomes one reload), and an event during a reload causes
 * one more reload after it. A slow stat poll backs the watchers up in case
 * an event is lost (inotify queue overflow, a watch that could not be set).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LoadCache, PolicySyntaxError, type Policy } from '../policy/index.js';
import { loadPolicyFromDisk } from '../policy-files/disk.js';
import type { Logger } from './log.js';

export type PolicyState =
  | { readonly ok: true; readonly policy: Policy; readonly generation: number }
  | { readonly ok: false; readonly error: string; readonly generation: number };

export interface PolicyStoreOptions {
  readonly policyDirs: readonly string[];
  readonly legacyDir?: string | undefined;
  readonly log: Logger;
  /** Quiet time after the last event before reloading (default 10 ms). */
  readonly debounceMs?: number;
  /** Longest a burst of events can postpone a reload (default 40 ms). */
  readonly maxDelayMs?: number;
  /** Stat poll interval as a safety net (default 2000 ms; 0 = off). */
  readonly pollMs?: number;
  /** Replaces loadPolicyFromDisk (tests). */
  readonly load?: () => Policy;
}

/** Text for a load failure, keeping the engine's `file:line: detail` form. */
export function describeLoadError(e: unknown): string {
  if (e instanceof PolicySyntaxError) return e.message;
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  return String(e);
}

export class PolicyStore {
  private state: PolicyState;
  private generation = 0;
  /** Watched directories: the watch, the names of interest (null: all), the inode watched. */
  private readonly watchers = new Map<string, { watcher: fs.FSWatcher; names: Set<string> | null; ino: number }>();
  private timer: NodeJS.Timeout | null = null;
  private firstEventAt = 0;
  private pollTimer: NodeJS.Timeout | null = null;
  private pollSignature = '';
  private lastErrorLog = 0;
  private closed = false;
  private readonly listeners: ((s: PolicyState) => void)[] = [];
  private readonly load: () => Policy;
  /** Reloads parse only the files that changed. */
  private readonly cache = new LoadCache();

  constructor(private readonly opts: PolicyStoreOptions) {
    const legacyDir = opts.legacyDir;
    this.load =
      opts.load ??
      (() => loadPolicyFromDisk({ policyDirs: opts.policyDirs, cache: this.cache, ...(legacyDir !== undefined ? { legacyDir } : {}) }));
    this.state = this.build();
  }

  /** The policy to decide with now. */
  get current(): PolicyState {
    return this.state;
  }

  /** Called after every reload (tests, benchmarks). */
  onReload(fn: (s: PolicyState) => void): void {
    this.listeners.push(fn);
  }

  /**
   * Log a denial caused by a broken policy: loudly, but at most every 5 s
   * so that a flood of requests does not flood the log.
   */
  reportBroken(): void {
    const s = this.state;
    if (s.ok) return;
    const now = Date.now();
    if (now - this.lastErrorLog >= 5000) {
      this.lastErrorLog = now;
      this.opts.log.error(`policy not loaded, denying every request until it is fixed: ${s.error}`);
    }
  }

  /** Load the policy again now, synchronously, and swap it in. */
  reload(): PolicyState {
    this.state = this.build();
    for (const fn of this.listeners) fn(this.state);
    return this.state;
  }

  /**
   * Swap in a policy already loaded from the files as they are now (the
   * Policy API loads the whole policy to validate a change before writing
   * it): the daemon decides by it at once, without waiting for the watch.
   */
  adopt(policy: Policy): PolicyState {
    this.state = { ok: true, policy, generation: ++this.generation };
    this.lastErrorLog = 0;
    for (const fn of this.listeners) fn(this.state);
    return this.state;
  }

  private build(): PolicyState {
    const generation = ++this.generation;
    const t0 = performance.now();
    try {
      const policy = this.load();
      const ms = performance.now() - t0;
      if (generation > 1 || this.lastErrorLog !== 0) {
        this.opts.log.info(`policy loaded: ${policy.rules.length} rules in ${ms.toFixed(1)} ms`);
      }
      this.lastErrorLog = 0;
      return { ok: true, policy, generation };
    } catch (e) {
      const error = describeLoadError(e);
      this.opts.log.error(`ERROR loading policy, denying every request until it is fixed: ${error}`);
      this.lastErrorLog = Date.now();
      return { ok: false, error, generation };
    }
  }

  /** Start watching the policy directories (and the legacy directory). */
  watch(): void {
    this.rewatch();
    const pollMs = this.opts.pollMs ?? 2000;
    if (pollMs > 0) {
      this.pollSignature = this.signature();
      this.pollTimer = setInterval(() => {
        const sig = this.signature();
        if (sig !== this.pollSignature) {
          this.pollSignature = sig;
          this.schedule();
        }
      }, pollMs);
      this.pollTimer.unref();
    }
  }

  private roots(): string[] {
    const r = [...this.opts.policyDirs];
    if (this.opts.legacyDir !== undefined) r.push(this.opts.legacyDir);
    return r.map((p) => path.resolve(p));
  }

  /**
   * Set watches on every root and its subdirectories, and on the parent of
   * a missing root (for that root's name only); drop stale watches.
   */
  private rewatch(): void {
    if (this.closed) return;
    // directory -> names of interest in it (null: every event).
    const want = new Map<string, Set<string> | null>();
    const missing: string[] = [];
    for (const root of this.roots()) {
      const dirs = walkDirs(root);
      if (dirs.length === 0) missing.push(root);
      for (const d of dirs) want.set(d, null);
    }
    for (const root of missing) {
      const parent = path.dirname(root);
      const names = want.get(parent);
      if (names === null) continue;
      if (names === undefined) want.set(parent, new Set([path.basename(root)]));
      else names.add(path.basename(root));
    }
    for (const [dir, w] of this.watchers) {
      const names = want.get(dir);
      // A directory replaced by another one (renamed over) keeps its path, not its inode.
      if (names === undefined || !sameInterest(w.names, names) || inodeOf(dir) !== w.ino) {
        w.watcher.close();
        this.watchers.delete(dir);
      }
    }
    for (const [dir, names] of want) {
      if (this.watchers.has(dir)) continue;
      try {
        const ino = fs.statSync(dir).ino;
        const watcher = fs.watch(dir, { persistent: false }, (_event, name) => {
          if (names === null || name === null || names.has(name)) this.schedule();
        });
        watcher.on('error', () => {
          // The directory went away: forget the watch; the next rewatch (or the poll) notices.
          watcher.close();
          if (this.watchers.get(dir)?.watcher === watcher) this.watchers.delete(dir);
          this.schedule();
        });
        this.watchers.set(dir, { watcher, names, ino });
      } catch {
        // Missing directory: the parent's watch (or the poll) will see it appear.
      }
    }
    // A root created while its parent's watch was being set up: look again.
    if (missing.some((root) => inodeOf(root) !== -1)) this.schedule();
  }

  /** Debounced reload: quiet for debounceMs, but never later than maxDelayMs after the first event. */
  private schedule(): void {
    if (this.closed) return;
    const now = performance.now();
    const debounce = this.opts.debounceMs ?? 10;
    const maxDelay = this.opts.maxDelayMs ?? 40;
    if (this.timer === null) this.firstEventAt = now;
    else clearTimeout(this.timer);
    const wait = Math.max(0, Math.min(debounce, this.firstEventAt + maxDelay - now));
    this.timer = setTimeout(() => {
      this.timer = null;
      this.rewatch();
      this.reload();
      this.pollSignature = this.signature();
    }, wait);
  }

  /** A cheap fingerprint of the watched trees: names, sizes, mtimes. */
  private signature(): string {
    const parts: string[] = [];
    for (const root of this.roots()) {
      for (const d of walkDirs(root)) {
        let names: string[];
        try {
          names = fs.readdirSync(d);
        } catch {
          continue;
        }
        names.sort();
        for (const n of names) {
          try {
            const st = fs.statSync(path.join(d, n));
            parts.push(`${d}/${n}:${st.size}:${st.mtimeMs}:${st.ino}`);
          } catch {
            parts.push(`${d}/${n}:?`);
          }
        }
      }
      parts.push('|');
    }
    return parts.join('\n');
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.pollTimer) clearInterval(this.pollTimer);
    for (const w of this.watchers.values()) w.watcher.close();
    this.watchers.clear();
  }
}

function inodeOf(p: string): number {
  try {
    return fs.statSync(p).ino;
  } catch {
    return -1;
  }
}

function sameInterest(a: Set<string> | null, b: Set<string> | null): boolean {
  if (a === null || b === null) return a === b;
  return a.size === b.size && [...a].every((n) => b.has(n));
}

/** A directory and all directories below it (following symlinks, bounded depth). */
function walkDirs(root: string, depth = 0, out: string[] = []): string[] {
  let entries: fs.Dirent[];
  try {
    if (!fs.statSync(root).isDirectory()) return out;
    entries = fs.readdirSync(root, { withFileTypes: true });
  } catch {
    return out;
  }
  out.push(root);
  if (depth >= 8) return out;
  for (const e of entries) {
    const p = path.join(root, e.name);
    if (e.isDirectory() || (e.isSymbolicLink() && isDir(p))) walkDirs(p, depth + 1, out);
  }
  return out;
}

function isDir(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}
