/**
 * The decision audit log: every policy decision the daemon makes, kept in
 * an SQLite database (better-sqlite3, WAL mode) so that it can be queried
 * (bin/qrexec-audit), and durable before the daemon replies.
 *
 * Write path. An SQLite commit costs 15-45 µs here (more with fsync), as
 * much as a whole decision, so the hot path does not commit. Instead:
 * 1. {@link AuditLog.append} queues the record; records queued in the same
 *    event-loop turn are written together, with one write(2), as JSON lines
 *    to a journal file next to the database (`DB-journal.N`);
 * 2. then their callbacks run — the daemon replies only now, so every
 *    acknowledged decision is on disk (in the page cache: it survives the
 *    daemon being killed; with `sync: 'full'` the journal is also fdatasync'ed,
 *    surviving power loss);
 * 3. a worker thread tails the journal and inserts the same records into
 *    SQLite (its own connection, many records per transaction). The daemon
 *    sends it nothing per batch: it only sets a flag in shared memory, which
 *    the worker looks at every few milliseconds; a journal segment is
 *    deleted by the worker once all its records are in SQLite.
 * At start, records left in journal segments by a killed daemon are
 * inserted (INSERT OR IGNORE on the record id, so a record is never
 * duplicated) before anything else happens. Readers (queryAudit) merge the
 * database with the journal, so they see every acknowledged decision.
 *
 * Retention: rows beyond `maxRows`, and rows older than `maxAgeDays`, are
 * deleted by the worker periodically; freed pages go back to the file
 * system (auto_vacuum=INCREMENTAL) and the WAL is truncated, which bounds
 * the size on disk.
 */
import Database from 'better-sqlite3';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';

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
  /** Keep at most this many rows (default 1,000,000; 0 = no limit). */
  readonly maxRows?: number;
  /** Delete rows older than this many days (default 90; 0 = keep). */
  readonly maxAgeDays?: number;
  /** Prune every so many milliseconds (default 60,000). */
  readonly pruneIntervalMs?: number;
  /** Start a new journal segment after this many records (default 20,000). */
  readonly segmentRecords?: number;
}

export const SCHEMA = `
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

/** A journal line: the record's id, then its fields in column order. */
export type JournalRow = [
  number,
  number,
  string,
  string,
  string,
  string | null,
  string,
  string | null,
  string,
  string,
  string,
  string,
  string | null,
  string | null,
  string | null,
  number,
];

export const INSERT_SQL = `INSERT OR IGNORE INTO decisions (id, time_ms, client, mode, source, requested_source,
  intended_target, target, service, argument, action, result, rule, ask_answer, reason, duration_us)
  VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`;

/** Open (creating if needed) the database with our settings. */
export function openAuditDb(file: string, sync: 'normal' | 'full'): Database.Database {
  const db = new Database(file);
  db.pragma('auto_vacuum = INCREMENTAL'); // only effective before the first table exists
  db.pragma('journal_mode = WAL');
  db.pragma(`synchronous = ${sync === 'full' ? 'FULL' : 'NORMAL'}`);
  db.pragma('journal_size_limit = 16777216');
  db.pragma('busy_timeout = 5000');
  db.exec(SCHEMA);
  return db;
}

/** Journal segment files of a database, oldest first. */
export function journalSegments(dbPath: string): string[] {
  const dir = path.dirname(path.resolve(dbPath));
  const prefix = path.basename(dbPath) + '-journal.';
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  return names
    .filter((n) => n.startsWith(prefix) && /^\d+$/.test(n.slice(prefix.length)))
    .sort((a, b) => Number(a.slice(prefix.length)) - Number(b.slice(prefix.length)))
    .map((n) => path.join(dir, n));
}

/** Append the rows of journal text to `rows`; a torn line (killed mid-write) is skipped. */
export function parseJournal(text: string, rows: JournalRow[]): JournalRow[] {
  for (const line of text.split('\n')) {
    if (line === '') continue;
    try {
      const r = JSON.parse(line) as unknown;
      if (Array.isArray(r) && r.length === 16 && typeof r[0] === 'number') rows.push(r as JournalRow);
    } catch {
      // torn line
    }
  }
  return rows;
}

/** Rows of a journal segment (none if it cannot be read). */
export function readJournal(file: string): JournalRow[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  return parseJournal(text, []);
}

function toRow(id: number, r: AuditRecord): JournalRow {
  return [
    id,
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
  ];
}

type Waiter = (err: Error | null) => void;

/**
 * Control words shared with the ingestion worker (Int32Array over a
 * SharedArrayBuffer): the daemon's thread only stores into them — no
 * message, no wake-up per batch.
 */
export const CTL_SEGMENT = 0; // number of the segment being appended to
export const CTL_DIRTY = 1; // set to 1 after every journal write; the worker clears it
export const CTL_CLOSED = 2; // 1: no more writes; the current segment is final
export const CTL_WORDS = 3;

/** The journal segment file number `n` of a database. */
export function segmentPath(dbPath: string, n: number): string {
  return `${dbPath}-journal.${n}`;
}

/** An open audit log (one writer: the daemon). */
export class AuditLog {
  private readonly dbPath: string;
  private readonly sync: 'normal' | 'full';
  private nextId: number;
  private queue: AuditRecord[] = [];
  private waiters: Waiter[] = [];
  private scheduled = false;
  private fd: number;
  private segNo = 1;
  private segCount = 0;
  private readonly ctl: Int32Array;
  private readonly worker: Worker;
  private ingestedThrough = 0;
  private readonly segmentRecords: number;
  private closed = false;
  private readonly idleWaiters: (() => void)[] = [];

  constructor(opts: AuditOptions) {
    this.dbPath = path.resolve(opts.path);
    this.sync = opts.sync ?? 'normal';
    this.segmentRecords = opts.segmentRecords ?? 20_000;
    fs.mkdirSync(path.dirname(this.dbPath), { recursive: true, mode: 0o750 });
    // Recover what a previous daemon acknowledged but did not ingest.
    const db = openAuditDb(this.dbPath, this.sync);
    try {
      const leftovers = journalSegments(this.dbPath);
      if (leftovers.length > 0) {
        const insert = db.prepare(INSERT_SQL);
        const ingest = db.transaction((rows: JournalRow[]) => {
          for (const r of rows) insert.run(...r);
        });
        for (const f of leftovers) {
          ingest(readJournal(f));
          fs.unlinkSync(f);
        }
      }
      const max = (db.prepare('SELECT max(id) AS m FROM decisions').get() as { m: number | null }).m ?? 0;
      this.nextId = max + 1;
      this.ingestedThrough = max;
    } finally {
      db.close();
    }
    this.fd = fs.openSync(segmentPath(this.dbPath, this.segNo), 'a', 0o640);
    this.ctl = new Int32Array(new SharedArrayBuffer(CTL_WORDS * 4));
    Atomics.store(this.ctl, CTL_SEGMENT, this.segNo);
    this.worker = new Worker(new URL('./ingest-worker.js', import.meta.url), {
      workerData: {
        path: this.dbPath,
        sync: this.sync,
        ctl: this.ctl,
        firstSegment: this.segNo,
        maxRows: opts.maxRows ?? 1_000_000,
        maxAgeDays: opts.maxAgeDays ?? 90,
        pruneIntervalMs: opts.pruneIntervalMs ?? 60_000,
      },
    });
    this.worker.on('message', (m: { through: number }) => this.ingested(m.through));
    this.worker.on('error', () => {
      // The journal still holds everything; the next start ingests it.
    });
    this.worker.unref();
  }

  /**
   * Queue a record; `done` is called once it is on disk (err null), or with
   * the error if it could not be written — the caller must then not report
   * an allow.
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

  /** Write everything queued now (one write), then release the callbacks. */
  flush(): void {
    this.scheduled = false;
    if (this.queue.length === 0) return;
    const records = this.queue;
    const waiters = this.waiters;
    this.queue = [];
    this.waiters = [];
    let err: Error | null = null;
    try {
      let text = '';
      let id = this.nextId;
      for (const r of records) text += JSON.stringify(toRow(id++, r)) + '\n';
      fs.writeSync(this.fd, text);
      if (this.sync === 'full') fs.fdatasyncSync(this.fd);
      this.nextId = id;
      this.segCount += records.length;
    } catch (e) {
      err = e instanceof Error ? e : new Error(String(e));
    }
    if (err === null) Atomics.store(this.ctl, CTL_DIRTY, 1);
    for (const w of waiters) w(err);
    if (err === null && this.segCount >= this.segmentRecords) this.rotate();
  }

  /** Start the next segment; the worker ingests and deletes the old one. */
  private rotate(): void {
    try {
      const fd = fs.openSync(segmentPath(this.dbPath, this.segNo + 1), 'a', 0o640);
      fs.closeSync(this.fd);
      this.fd = fd;
      this.segNo++;
      this.segCount = 0;
      Atomics.store(this.ctl, CTL_SEGMENT, this.segNo);
    } catch {
      // Keep appending to the current segment; try again after the next batch.
    }
  }

  private ingested(through: number): void {
    if (through > this.ingestedThrough) this.ingestedThrough = through;
    if (this.idle) for (const f of this.idleWaiters.splice(0)) f();
  }

  private get idle(): boolean {
    return this.queue.length === 0 && this.ingestedThrough >= this.nextId - 1;
  }

  /** Resolves once every appended record is in SQLite (tests, shutdown). */
  settled(): Promise<void> {
    this.flush();
    if (this.idle) return Promise.resolve();
    // Keep the process alive while waiting for the worker's answer.
    this.worker.ref();
    this.worker.postMessage('poke');
    return new Promise((resolve) =>
      this.idleWaiters.push(() => {
        if (!this.closed) this.worker.unref();
        resolve();
      }),
    );
  }

  /** Flush, wait for ingestion, stop the worker, drop the journal. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    Atomics.store(this.ctl, CTL_CLOSED, 1);
    this.worker.ref();
    await Promise.race([this.settled(), new Promise((r) => setTimeout(r, 5000))]);
    await this.worker.terminate();
    fs.closeSync(this.fd);
    if (this.ingestedThrough >= this.nextId - 1) {
      for (const f of journalSegments(this.dbPath)) {
        try {
          fs.unlinkSync(f);
        } catch {
          // gone
        }
      }
    }
  }
}
