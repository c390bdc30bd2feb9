/**
 * Disk usage of qubes' volumes, for admin.vm.volume.Info's `usage`.
 *
 * As the reference's file pool (qubes/storage/file.py get_disk_usage) and
 * reflink pool (st_blocks * 512 of the image) measure it: the space
 * allocated on disk, not the apparent size (a sparse file counts only its
 * written blocks): the sum of st_blocks * 512 over the volume's host
 * directories and everything in them (lstat: symlinks are not followed; like
 * `du -x`, nothing on another filesystem is counted).
 *
 * Walking a tree costs far more than a call, so it never happens on the
 * request path: {@link VolumeUsage.usage} answers from a cache (0 until the
 * first walk of that qube ends) and, when the entry is older than the TTL,
 * queues a walk in the background. Walks run one at a time, with the
 * asynchronous fs calls (the thread pool), so the event loop is never blocked.
 * Every qube is walked once at start, and a qube again when it shuts down
 * (what a qube writes lands while it runs).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Qube, Registry } from './registry.js';

/** The host directories holding each of a qube's volumes (absent: nothing on the host disk, usage 0). */
export type VolumeDirs = (name: string, klass: string) => Readonly<Partial<Record<string, readonly string[]>>>;

export interface VolumeUsageOptions {
  /** Re-walk a qube whose figure is older than this when it is asked for (default 30 s). */
  readonly ttlMs?: number;
  /** Walk every qube once at start (default true). */
  readonly prime?: boolean;
}

interface Entry {
  at: number;
  readonly bytes: Map<string, number>;
}

/** Allocated bytes of `p` and everything beneath it on the same filesystem (0 if it does not exist). */
export async function allocatedBytes(p: string): Promise<number> {
  let st: fs.Stats;
  try {
    st = await fs.promises.lstat(p);
  } catch {
    return 0;
  }
  let total = st.blocks * 512;
  if (!st.isDirectory()) return total;
  const dev = st.dev;
  const stack = [p];
  while (stack.length > 0) {
    const dir = stack.pop() as string;
    let names: string[];
    try {
      names = await fs.promises.readdir(dir);
    } catch {
      continue; // gone or unreadable meanwhile
    }
    for (const name of names) {
      const child = path.join(dir, name);
      let cst: fs.Stats;
      try {
        cst = await fs.promises.lstat(child);
      } catch {
        continue;
      }
      if (cst.dev !== dev) continue;
      total += cst.blocks * 512;
      if (cst.isDirectory()) stack.push(child);
    }
  }
  return total;
}

export class VolumeUsage {
  private readonly cache = new Map<string, Entry>();
  private readonly queue = new Set<string>();
  private running: Promise<void> | null = null;
  private closed = false;
  private readonly ttlMs: number;
  private readonly off: () => void;

  constructor(
    private readonly registry: Registry,
    private readonly dirs: VolumeDirs,
    opts: VolumeUsageOptions = {},
  ) {
    this.ttlMs = opts.ttlMs ?? 30_000;
    this.off = registry.on((subject, event, kwargs) => {
      if (event === 'domain-shutdown' && subject) this.refresh(subject.name);
      else if (event === 'domain-delete') {
        const vm = kwargs.find(([k]) => k === 'vm');
        if (vm) this.cache.delete(vm[1]);
      }
    });
    if (opts.prime !== false) for (const q of registry.list()) this.refresh(q.name);
  }

  /** The last measured usage of `q`'s volume `vol` (0 before its first walk); queues a walk when stale. */
  usage(q: Qube, vol: string): number {
    const e = this.cache.get(q.name);
    if (!e || Date.now() - e.at > this.ttlMs) this.refresh(q.name);
    return e?.bytes.get(vol) ?? 0;
  }

  /** Queue a walk of `name`'s volumes. */
  refresh(name: string): void {
    if (this.closed) return;
    this.queue.add(name);
    // started in a later microtask, so that `running` is set before the walk can end
    this.running ??= Promise.resolve().then(() => this.drain());
  }

  /** Resolves when no walk is queued or running. */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  close(): void {
    this.closed = true;
    this.queue.clear();
    this.off();
  }

  private async drain(): Promise<void> {
    try {
      for (let name = this.next(); name !== undefined && !this.closed; name = this.next()) {
        const q = this.registry.byName(name);
        if (!q) continue;
        const bytes = new Map<string, number>();
        for (const [vol, ds] of Object.entries(this.dirs(q.name, q.klass))) {
          let sum = 0;
          for (const d of ds ?? []) sum += await allocatedBytes(d);
          bytes.set(vol, sum);
        }
        // a qube removed (or renamed away) during its walk keeps no entry
        if (this.registry.byName(name) === q) this.cache.set(name, { at: Date.now(), bytes });
      }
    } finally {
      this.running = null;
    }
  }

  private next(): string | undefined {
    const it = this.queue.values().next();
    if (it.done) return undefined;
    this.queue.delete(it.value);
    return it.value;
  }
}
