/**
 * Where the daemon gets system info (the qube list the policy is evaluated
 * against) and how it keeps it current.
 *
 * - {@link FileSystemInfo}: a JSON file in qubesd's `internal.GetSystemInfo`
 *   shape (--system-info), reloaded when the file changes.
 * - {@link QubesdSystemInfo}: asks qubesd (`internal.GetSystemInfo+ dom0 name
 *   dom0\0` on its internal socket; reply `0\0<json>`). The reference asks for
 *   every request (~20 ms of a 50 ms call, qubes-issues #9362); we cache the
 *   answer and subscribe to qubesd's `admin.Events`: any event marks the
 *   cache stale, and the next request fetches again. While the event stream
 *   is not connected the cache is not trusted and every request fetches
 *   (concurrent requests share one fetch).
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { parseSystemInfo, type SystemInfo } from '../policy/index.js';
import { qubesdCall } from '../qubesd-client/call.js';
import type { Logger } from './log.js';

/** A source of system info: a value when it is cached, a promise when it must be fetched. */
export interface SystemInfoSource {
  /** @throws (or rejects) when no valid system info is available: the caller denies. */
  get(): SystemInfo | Promise<SystemInfo>;
  close(): void;
}

/** A fixed value (tests, benchmarks). */
export function staticSystemInfo(info: SystemInfo): SystemInfoSource {
  return { get: () => info, close() {} };
}

/** Read and validate a system info JSON file. */
export function readSystemInfoFile(file: string): SystemInfo {
  return parseSystemInfo(JSON.parse(fs.readFileSync(file, 'utf8')) as unknown);
}

/** System info from a file, reloaded (debounced) when the file changes. A bad file denies everything until fixed. */
export class FileSystemInfo implements SystemInfoSource {
  private info: SystemInfo | null = null;
  private error: Error | null = null;
  private watcher: fs.FSWatcher | null = null;
  private timer: NodeJS.Timeout | null = null;
  private poll: NodeJS.Timeout | null = null;
  private signature = '';
  private closed = false;

  constructor(
    private readonly file: string,
    private readonly log: Logger,
  ) {
    this.reload();
  }

  /** Throw if the file could not be loaded at start (for a clear startup error). */
  get ok(): boolean {
    return this.info !== null;
  }

  get lastError(): Error | null {
    return this.error;
  }

  reload(): void {
    try {
      this.info = readSystemInfoFile(this.file);
      if (this.error) this.log.info(`system info reloaded from ${this.file}`);
      this.error = null;
    } catch (e) {
      this.info = null;
      this.error = e instanceof Error ? e : new Error(String(e));
      this.log.error(`cannot load system info from ${this.file}: ${this.error.message}`);
    }
  }

  /**
   * Watch the file itself, not its directory: a busy directory (an audit
   * log next to the file) would otherwise wake us for every write there. A
   * file replaced by a rename is noticed on the old inode (its link count
   * changes) and the watch moves to the new one; while the file is missing,
   * its directory is watched for its name. A slow stat poll backs this up.
   */
  watch(): void {
    this.watchFile();
    this.signature = statSignature(this.file);
    this.poll = setInterval(() => {
      if (statSignature(this.file) !== this.signature) this.changed();
    }, 2000);
    this.poll.unref();
  }

  private watchFile(): void {
    if (this.closed) return;
    this.watcher?.close();
    this.watcher = null;
    const base = path.basename(this.file);
    let target = this.file;
    let filter: string | null = null;
    if (!fs.existsSync(this.file)) {
      target = path.dirname(path.resolve(this.file));
      filter = base;
    }
    try {
      const w = fs.watch(target, { persistent: false }, (_ev, name) => {
        if (filter === null || name === null || name === filter) this.changed();
      });
      w.on('error', () => {
        w.close();
        if (this.watcher === w) this.watcher = null;
        this.changed();
      });
      this.watcher = w;
    } catch (e) {
      this.log.warning(`cannot watch ${target}: ${(e as Error).message}`);
    }
  }

  /** Debounced: reload, and watch whatever is at the path now. */
  private changed(): void {
    if (this.closed) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.signature = statSignature(this.file);
      this.reload();
      this.watchFile();
    }, 10);
  }

  get(): SystemInfo {
    if (this.info === null) throw this.error ?? new Error('no system info');
    return this.info;
  }

  close(): void {
    this.closed = true;
    this.watcher?.close();
    if (this.timer) clearTimeout(this.timer);
    if (this.poll) clearInterval(this.poll);
  }
}

/** Inode, size and mtime of a file ('' if missing): changes when it is rewritten or replaced. */
function statSignature(file: string): string {
  try {
    const st = fs.statSync(file);
    return `${st.ino}:${st.size}:${st.mtimeMs}`;
  } catch {
    return '';
  }
}

/** Largest GetSystemInfo reply accepted. */
const MAX_SYSTEM_INFO_REPLY = 64 * 1024 * 1024;

export interface QubesdSystemInfoOptions {
  /** qubesd's internal socket (internal.GetSystemInfo). */
  readonly socketPath: string;
  /** qubesd's admin socket for admin.Events, or null not to subscribe (then every request fetches). */
  readonly eventsSocketPath: string | null;
  readonly log: Logger;
  readonly timeoutMs?: number;
}

/** System info from qubesd, cached while qubesd's event stream says nothing changed. */
export class QubesdSystemInfo implements SystemInfoSource {
  private cache: SystemInfo | null = null;
  /** Bumped on every qubesd event; a fetch is current if it did not change meanwhile. */
  private eventGen = 0;
  private cacheGen = -1;
  private inflight: Promise<SystemInfo> | null = null;
  private events: net.Socket | null = null;
  private eventsLive = false;
  private retry: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(private readonly opts: QubesdSystemInfoOptions) {
    if (opts.eventsSocketPath !== null) this.subscribe(opts.eventsSocketPath);
  }

  get(): SystemInfo | Promise<SystemInfo> {
    if (this.cache !== null && this.eventsLive && this.cacheGen === this.eventGen) return this.cache;
    if (this.inflight) return this.inflight;
    const gen = this.eventGen;
    const p = qubesdCall(this.opts.socketPath, 'internal.GetSystemInfo', 'dom0', {
      timeoutMs: this.opts.timeoutMs ?? 10_000,
      maxReply: MAX_SYSTEM_INFO_REPLY,
    }).then(
      (data) => {
        const info = parseSystemInfo(JSON.parse(data.toString('utf8')) as unknown);
        this.cache = info;
        this.cacheGen = gen;
        this.inflight = null;
        return info;
      },
      (e: unknown) => {
        this.inflight = null;
        throw e;
      },
    );
    this.inflight = p;
    return p;
  }

  private subscribe(socketPath: string): void {
    if (this.closed) return;
    const sock = net.connect(socketPath);
    this.events = sock;
    sock.on('connect', () => {
      sock.write('admin.Events+ dom0 name dom0\0');
      sock.end();
    });
    sock.on('data', () => {
      // Any event (the first is connection-established) may change what we cached.
      this.eventGen++;
      this.eventsLive = true;
    });
    const lost = (why: string): void => {
      if (this.events !== sock) return;
      this.events = null;
      if (this.eventsLive) this.opts.log.warning(`qubesd event stream lost (${why}); fetching system info per request`);
      this.eventsLive = false;
      this.eventGen++;
      if (!this.closed) {
        this.retry = setTimeout(() => this.subscribe(socketPath), 1000);
        this.retry.unref();
      }
    };
    sock.on('error', (e) => lost(e.message));
    sock.on('close', () => lost('closed'));
  }

  close(): void {
    this.closed = true;
    if (this.retry) clearTimeout(this.retry);
    const s = this.events;
    this.events = null;
    s?.destroy();
  }
}
