/**
 * The decision audit log: every policy decision the daemon makes, in an
 * SQLite database (better-sqlite3, WAL mode) so that it can be queried
 * (bin/qrexec-audit) and survives the daemon being killed.
 *
 * Durability: {@link AuditLog.append} queues a record and calls back once
 * the transaction holding it has committed; the daemon sends its reply only
 * then, so an acknowledged decision is always in the log. Records that
 * arrive in the same event-loop turn share one transaction (group commit),
 * which keeps the cost per decision low under load without weakening that
 * rule. With `synchronous=NORMAL` (the default) a commit survives the daemon
 * being killed (the WAL is written before the callback); `full` also fsyncs
 * the WAL at each commit, surviving power loss at a higher cost per batch.
 *
 * Retention: rows beyond `maxRows`, and rows older than `maxAgeDays`, are
 * deleted by a periodic prune; freed pages are returned to the file
 * system (auto_vacuum=INCREMENTAL), and the WAL file is truncated to
 * `journal_size_limit`. This bounds the size on disk.
 */
import Database from 'better-sqlite3';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** One decision. */
export interface AuditRecord {
  /** When the request was complete, Unix milliseconds. */
  readonly timeMs: number;
  /** Who asked: `qrexec-daemon` for the policy socket, or the qube calling policy.EvalSimple/EvalGUI. */
  readonly client: string;
  /** `exec`, `just_evaluate`, `assume_yes`, `eval_simple`, `eval_gui`. */
  readonly mode: string;
  readonly source: string;
  readonly requestedSource: string | null;
  readonly intendedTarget: string;
  /** The resolved target of an allow, else null. */
  readonly target: string | null;
  readonly service: string;
  readonly argument: string;
  /** What the policy said: allow, ask, deny, or error (policy not loaded, system info unavailable...). */
  readonly action: 'allow' | 'ask' | 'deny' | 'error';
  /** What the caller was told. */
  readonly result: 'allow' | 'deny';
  /** `file:line` of the deciding rule. */
  readonly rule: string | null;
  /** For asks: `allow:TARGET`, `deny`, `assumed-yes`, `timeout`, `no-guivm`, `error`, `invalid`. */
  readonly askAnswer: string | null;
  /** Why, for denies and errors. */
  readonly reason: string | null;
  /** Time spent by the daemon on this decision, microseconds (includes waiting for the user on ask). */
  readonly durationUs: number;
}

export interface AuditOptions {
  /** Database file; its directory is created if missing. */
  readonly path: string;
  /** `normal` (survives a daemon crash) or `full` (also power loss). Default normal. */
  readonly sync?: 'normal' | 'full';
  /** Keep at most this many rows (default 1,000,000). */
  readonly maxRows?: number;
  /** Delete rows older than this many days (default 90; 0 = keep). */
  readonly maxAgeDays?: number;
  /** Prune every so many milliseconds (default 60,000). */
  readonly pruneIntervalMs?: number;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS decisions (
  id INTEGER PRIMARY KEY,
  time_ms INTEGER NOT NULL,
  client TEXT NOT NULL,
  mode TEXT NOT NULL,
  source TEXT NOT NULL,
  requested_source TEXT,
  intended_target TEXT NOT NULL,
  target TEXT,
  service TEXT NOT NULL,
  argument TEXT NOT NULL,
  action TEXT NOT NULL,
  result TEXT NOT NULL,
  rule TEXT,
  ask_answer TEXT,
  reason TEXT,
  duration_us INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_time ON decisions(time_ms);
`;

type Waiter = (err: Error | null) => void;

/** An open audit log. Not thread-safe; one writer (the daemon). */
export class AuditLog {
  private readonly db: Database.Database;
  private readonly insert: Database.Statement;
  private readonly insertBatch: (records: readonly AuditRecord[]) => void;
  private queue: AuditRecord[] = [];
  private waiters: Waiter[] = [];
  private scheduled = false;
  private readonly pruneTimer: NodeJS.Timeout | null;
  private readonly maxRows: number;
  private readonly maxAgeDays: number;
  private closed = false;

  constructor(opts: AuditOptions) {
    fs.mkdirSync(path.dirname(path.resolve(opts.path)), { recursive: true, mode: 0o750 });
    const db = new Database(opts.path);
    this.db = db;
    // auto_vacuum only takes effect before the first table exists.
    db.pragma('auto_vacuum = INCREMENTAL');
    db.pragma('journal_mode = WAL');
    db.pragma(`synchronous = ${opts.sync === 'full' ? 'FULL' : 'NORMAL'}`);
    db.pragma('journal_size_limit = 16777216');
    db.pragma('busy_timeout = 5000');
    db.exec(SCHEMA);
    this.insert = db.prepare(
      `INSERT INTO decisions (time_ms, client, mode, source, requested_source, intended_target, target,
        service, argument, action, result, rule, ask_answer, reason, duration_us)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    const insert = this.insert;
    this.insertBatch = db.transaction((records: readonly AuditRecord[]) => {
      for (const r of records) {
        insert.run(
          r.timeMs,
          r.client,
          r.mode,
          r.source,
          r.requestedSource,
          r.intendedTarget,
          r.target,
          r.service,
          r.argument,
          r.action,
          r.result,
          r.rule,
          r.askAnswer,
          r.reason,
          Math.round(r.durationUs),
        );
      }
    });
    this.maxRows = opts.maxRows ?? 1_000_000;
    this.maxAgeDays = opts.maxAgeDays ?? 90;
    const every = opts.pruneIntervalMs ?? 60_000;
    this.pruneTimer = every > 0 ? setInterval(() => this.safePrune(), every) : null;
    this.pruneTimer?.unref();
    this.safePrune();
  }

  /**
   * Queue a record; `done` is called once it is committed (err null), or
   * with the error if it could not be written — the caller must then not
   * report an allow.
   */
  append(record: AuditRecord, done: Waiter): void {
    if (this.closed) {
      done(new Error('audit log is closed'));
      return;
    }
    this.queue.push(record);
    this.waiters.push(done);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  /** Write everything queued now, in one transaction. */
  flush(): void {
    this.scheduled = false;
    if (this.queue.length === 0) return;
    const records = this.queue;
    const waiters = this.waiters;
    this.queue = [];
    this.waiters = [];
    let err: Error | null = null;
    try {
      this.insertBatch(records);
    } catch (e) {
      err = e instanceof Error ? e : new Error(String(e));
    }
    for (const w of waiters) w(err);
  }

  /** Apply the retention settings now. Returns the number of rows deleted. */
  prune(): number {
    let deleted = 0;
    if (this.maxAgeDays > 0) {
      const cutoff = Date.now() - this.maxAgeDays * 86_400_000;
      deleted += this.db.prepare('DELETE FROM decisions WHERE time_ms < ?').run(cutoff).changes;
    }
    if (this.maxRows > 0) {
      const row = this.db.prepare('SELECT max(id) AS m FROM decisions').get() as { m: number | null };
      if (row.m !== null) {
        deleted += this.db.prepare('DELETE FROM decisions WHERE id <= ?').run(row.m - this.maxRows).changes;
      }
    }
    if (deleted > 0) {
      this.db.pragma('incremental_vacuum');
      this.db.pragma('wal_checkpoint(TRUNCATE)');
    }
    return deleted;
  }

  private safePrune(): void {
    try {
      this.prune();
    } catch {
      // A failed prune costs only disk space; the next run retries.
    }
  }

  /** Flush, then close the database. */
  close(): void {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    if (this.pruneTimer) clearInterval(this.pruneTimer);
    this.db.close();
  }
}
