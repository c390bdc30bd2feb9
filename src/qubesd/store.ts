/**
 * The registry's durable store: SQLite through better-sqlite3, in WAL mode
 * with synchronous=FULL, so a change is on disk when its transaction
 * commits and qubesd replies only after that. One change is one
 * transaction: after kill -9 at any moment a restart finds every
 * acknowledged change and no half of any.
 *
 * Group fsync (`synchronous: 'GROUP'`, what bin/qubesd uses): SQLite's
 * NORMAL (a commit writes the WAL but does not fsync it, so it does not
 * block the event loop), and {@link SqliteStore.sync} fdatasyncs the WAL
 * in libuv's thread pool; one fdatasync covers every commit made before it
 * started, so the Sets that arrive while one runs share the next (and one
 * SQLite commit, see {@link SqliteStore.transaction}). The
 * reply waits for it: an acknowledged change is on disk as with FULL
 * (the WAL's own checksums find the last whole commit after a crash).
 *
 * The schema is versioned (`PRAGMA user_version`); {@link MIGRATIONS} brings
 * an older file up to date, each step in its own transaction.
 *
 * Values are stored as JSON (string, number, boolean or null).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import type { Label, QubeRecord, RegistrySnapshot, RegistryStore } from './registry.js';
import type { Value } from './properties.js';
import { isQubeClass } from './names.js';

type DB = Database.Database;

/** Each entry upgrades the schema from version i to i+1. */
export const MIGRATIONS: readonly ((db: DB) => void)[] = [
  // 0 -> 1: qubes and their properties, tags, features; global properties
  (db) => {
    db.exec(`
      CREATE TABLE qubes (qid INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, uuid TEXT NOT NULL UNIQUE, klass TEXT NOT NULL);
      CREATE TABLE props (qid INTEGER NOT NULL REFERENCES qubes(qid) ON DELETE CASCADE, name TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (qid, name));
      CREATE TABLE tags (qid INTEGER NOT NULL REFERENCES qubes(qid) ON DELETE CASCADE, tag TEXT NOT NULL, PRIMARY KEY (qid, tag));
      CREATE TABLE features (qid INTEGER NOT NULL REFERENCES qubes(qid) ON DELETE CASCADE, name TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (qid, name));
      CREATE TABLE globals (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    `);
  },
  // 1 -> 2: labels move from the built-in set to a table (custom labels, admin.label.Create)
  (db) => {
    db.exec('CREATE TABLE labels (idx INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, color TEXT NOT NULL)');
    const ins = db.prepare('INSERT INTO labels (idx, name, color) VALUES (?, ?, ?)');
    const defaults: [number, string, string][] = [
      [1, 'red', '0xcc0000'],
      [2, 'orange', '0xf57900'],
      [3, 'yellow', '0xedd400'],
      [4, 'green', '0x73d216'],
      [5, 'gray', '0x555555'],
      [6, 'blue', '0x3465a4'],
      [7, 'purple', '0x75507b'],
      [8, 'black', '0x000000'],
    ];
    for (const l of defaults) ins.run(...l);
  },
];
export const SCHEMA_VERSION = MIGRATIONS.length;

export class StoreError extends Error {
  override name = 'StoreError';
}

export interface SqliteStoreOptions {
  /**
   * synchronous=FULL (default: durable at commit), NORMAL (still survives
   * a process kill, not a power loss) or GROUP (NORMAL, made durable by
   * {@link SqliteStore.sync}).
   */
  readonly synchronous?: 'FULL' | 'NORMAL' | 'GROUP';
  /** Stop migrating at this version (tests of migrations). */
  readonly migrateTo?: number;
}

/** Open (creating, migrating) the registry file `dir/qubes.db`. */
export class SqliteStore implements RegistryStore {
  readonly db: DB;
  private readonly st;
  private readonly group: boolean;
  private readonly wal: string;
  /** Commits so far, and how many of them are on disk / covered by the fdatasync running now. */
  private commits = 0;
  private synced = 0;
  private running: { readonly upTo: number; readonly done: Promise<void> } | null = null;
  private next: { readonly done: Promise<void>; resolve(): void; reject(e: Error): void } | null = null;
  private dirSynced = false;
  private walOpen: { readonly fd: number; readonly ino: number; readonly dev: number } | null = null;
  /** GROUP: whether the writes made while an fdatasync runs have a shared transaction open, and how deep in a write we are. */
  private batch = false;
  private depth = 0;
  /** fdatasyncs of the WAL made so far (tests). */
  fdatasyncs = 0;

  constructor(file: string, opts: SqliteStoreOptions = {}) {
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    this.group = opts.synchronous === 'GROUP';
    this.wal = `${file}-wal`;
    this.db.pragma(`synchronous = ${opts.synchronous === 'GROUP' ? 'NORMAL' : (opts.synchronous ?? 'FULL')}`);
    this.db.pragma('foreign_keys = ON');
    migrate(this.db, opts.migrateTo ?? SCHEMA_VERSION);
    const db = this.db;
    this.st = {
      addQube: db.prepare('INSERT INTO qubes (qid, name, uuid, klass) VALUES (?, ?, ?, ?)'),
      delQube: db.prepare('DELETE FROM qubes WHERE qid = ?'),
      setProp: db.prepare('INSERT INTO props (qid, name, value) VALUES (?, ?, ?) ON CONFLICT (qid, name) DO UPDATE SET value = excluded.value'),
      delProp: db.prepare('DELETE FROM props WHERE qid = ? AND name = ?'),
      setGlobal: db.prepare('INSERT INTO globals (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value'),
      delGlobal: db.prepare('DELETE FROM globals WHERE name = ?'),
      addTag: db.prepare('INSERT OR IGNORE INTO tags (qid, tag) VALUES (?, ?)'),
      delTag: db.prepare('DELETE FROM tags WHERE qid = ? AND tag = ?'),
      setFeature: db.prepare('INSERT INTO features (qid, name, value) VALUES (?, ?, ?) ON CONFLICT (qid, name) DO UPDATE SET value = excluded.value'),
      delFeature: db.prepare('DELETE FROM features WHERE qid = ? AND name = ?'),
      addLabel: db.prepare('INSERT INTO labels (idx, name, color) VALUES (?, ?, ?)'),
      delLabel: db.prepare('DELETE FROM labels WHERE idx = ?'),
    };
  }

  get version(): number {
    return this.db.pragma('user_version', { simple: true }) as number;
  }

  load(): RegistrySnapshot {
    const qubes = new Map<number, { rec: QubeRecord; props: Map<string, Value>; tags: Set<string>; features: Map<string, string> }>();
    for (const r of this.db.prepare('SELECT qid, name, uuid, klass FROM qubes').all() as { qid: number; name: string; uuid: string; klass: string }[]) {
      if (!isQubeClass(r.klass)) throw new StoreError(`qube ${r.name}: unknown class ${r.klass}`);
      const props = new Map<string, Value>();
      const tags = new Set<string>();
      const features = new Map<string, string>();
      qubes.set(r.qid, { rec: { qid: r.qid, name: r.name, uuid: r.uuid, klass: r.klass, props, tags, features }, props, tags, features });
    }
    for (const r of this.db.prepare('SELECT qid, name, value FROM props').all() as { qid: number; name: string; value: string }[]) {
      qubes.get(r.qid)?.props.set(r.name, JSON.parse(r.value) as Value);
    }
    for (const r of this.db.prepare('SELECT qid, tag FROM tags').all() as { qid: number; tag: string }[]) qubes.get(r.qid)?.tags.add(r.tag);
    for (const r of this.db.prepare('SELECT qid, name, value FROM features').all() as { qid: number; name: string; value: string }[]) {
      qubes.get(r.qid)?.features.set(r.name, r.value);
    }
    const globals = new Map<string, Value>();
    for (const r of this.db.prepare('SELECT name, value FROM globals').all() as { name: string; value: string }[]) {
      globals.set(r.name, JSON.parse(r.value) as Value);
    }
    const labels = (this.db.prepare('SELECT idx, name, color FROM labels ORDER BY idx').all() as { idx: number; name: string; color: string }[]).map(
      (r): Label => ({ index: r.idx, name: r.name, color: r.color }),
    );
    return { qubes: [...qubes.values()].map((x) => x.rec), globals, labels };
  }

  /**
   * Run `fn` as one transaction: committed when it returns. GROUP, while an
   * fdatasync runs: the writes share one SQLite transaction, each in a
   * savepoint of it (a write that throws is undone alone), committed when
   * that fdatasync ends, just before the next one starts: they would wait
   * for that one anyway, so sharing the commit costs them no time. Their
   * replies wait for {@link sync}, so nothing is acknowledged before it is
   * committed and on disk.
   */
  transaction<T>(fn: () => T): T {
    if (!this.group || (!this.batch && !this.running)) {
      if (this.db.inTransaction) return fn();
      const r = this.db.transaction(fn).immediate();
      this.commits++;
      return r;
    }
    if (this.depth > 0) return fn();
    if (!this.batch) {
      this.db.exec('BEGIN IMMEDIATE');
      this.batch = true;
    }
    this.db.exec('SAVEPOINT w');
    this.depth++;
    try {
      const r = fn();
      // as better-sqlite3's own transactions: the change must be made by the time fn returns
      if (r instanceof Promise) throw new TypeError('Transaction function cannot return a promise');
      this.db.exec('RELEASE w');
      return r;
    } catch (e) {
      this.db.exec('ROLLBACK TO w');
      this.db.exec('RELEASE w');
      throw e;
    } finally {
      this.depth--;
    }
  }

  /** GROUP: called when a shared transaction could not be committed (its writes are lost: the model must be reloaded). */
  onLost: (() => void) | null = null;

  /** Commit the shared transaction, if one is open; false when that failed (its writes are lost). */
  private commitBatch(): boolean {
    if (!this.batch) return true;
    this.batch = false;
    try {
      this.db.exec('COMMIT');
    } catch {
      try {
        if (this.db.inTransaction) this.db.exec('ROLLBACK');
      } catch {
        // the connection has rolled back already
      }
      this.onLost?.();
      return false;
    }
    this.commits++;
    return true;
  }

  /**
   * Resolves once every commit made so far is on disk: at once with FULL
   * (it was at commit), else after an fdatasync of the WAL that started
   * after the last of them (group fsync: one runs at a time, and the
   * commits made meanwhile wait for the next, together). Rejects when the
   * fdatasync failed.
   */
  sync(): Promise<void> {
    if (!this.group) return DONE;
    // the shared transaction is committed when the running fdatasync ends, and the next one covers it
    if (!this.batch && this.synced >= this.commits) return DONE;
    if (!this.batch && this.running && this.running.upTo >= this.commits) return this.running.done;
    if (this.running) {
      if (!this.next) {
        let resolve: () => void = () => undefined;
        let reject: (e: Error) => void = () => undefined;
        const done = new Promise<void>((res, rej) => {
          resolve = res;
          reject = rej;
        });
        this.next = { done, resolve, reject };
      }
      return this.next.done;
    }
    return this.startSync();
  }

  private startSync(): Promise<void> {
    const upTo = this.commits;
    const dir = path.dirname(this.wal);
    const done = (async () => {
      this.fdatasyncs++;
      await fdatasync(this.walFd());
      if (!this.dirSynced) {
        // the WAL's directory entry, once (FULL has SQLite do the same)
        const dh = await fs.promises.open(dir, 'r');
        try {
          await dh.sync();
        } finally {
          await dh.close();
        }
        this.dirSynced = true;
      }
    })();
    const running = { upTo, done };
    this.running = running;
    const settle = (): void => {
      if (this.running === running) this.running = null;
      const waiting = this.next;
      this.next = null;
      if (!this.commitBatch()) waiting?.reject(new StoreError('the registry could not be written'));
      else if (waiting) this.startSync().then(waiting.resolve, waiting.reject);
    };
    done.then(
      () => {
        this.synced = Math.max(this.synced, upTo);
        settle();
      },
      settle,
    );
    return done;
  }

  addQube(q: QubeRecord): void {
    this.st.addQube.run(q.qid, q.name, q.uuid, q.klass);
    for (const [k, v] of q.props) this.st.setProp.run(q.qid, k, JSON.stringify(v));
    for (const t of q.tags) this.st.addTag.run(q.qid, t);
    for (const [k, v] of q.features) this.st.setFeature.run(q.qid, k, v);
  }

  removeQube(qid: number): void {
    this.st.delQube.run(qid);
  }

  setProp(qid: number, name: string, value: Value | undefined): void {
    if (value === undefined) this.st.delProp.run(qid, name);
    else this.st.setProp.run(qid, name, JSON.stringify(value));
  }

  setGlobal(name: string, value: Value | undefined): void {
    if (value === undefined) this.st.delGlobal.run(name);
    else this.st.setGlobal.run(name, JSON.stringify(value));
  }

  setTag(qid: number, tag: string, present: boolean): void {
    if (present) this.st.addTag.run(qid, tag);
    else this.st.delTag.run(qid, tag);
  }

  setFeature(qid: number, name: string, value: string | undefined): void {
    if (value === undefined) this.st.delFeature.run(qid, name);
    else this.st.setFeature.run(qid, name, value);
  }

  setLabel(label: Label, present: boolean): void {
    if (present) this.st.addLabel.run(label.index, label.name, label.color);
    else this.st.delLabel.run(label.index);
  }

  /**
   * The WAL's descriptor, kept open between syncs (one thread-pool call per
   * sync, not three); reopened when the file at the WAL's name is another
   * one than it (SQLite removes the WAL when the last connection closes, so
   * only another process could have made it so, but an fdatasync of the
   * wrong file would acknowledge changes that are not on disk).
   */
  private walFd(): number {
    const st = fs.statSync(this.wal);
    if (this.walOpen && this.walOpen.ino === st.ino && this.walOpen.dev === st.dev) return this.walOpen.fd;
    if (this.walOpen) fs.closeSync(this.walOpen.fd);
    this.walOpen = null;
    const fd = fs.openSync(this.wal, 'r');
    const own = fs.fstatSync(fd);
    this.walOpen = { fd, ino: own.ino, dev: own.dev };
    return fd;
  }

  close(): void {
    this.commitBatch();
    const w = this.walOpen;
    this.walOpen = null;
    // not under an fdatasync still running on it
    if (w) void (this.running?.done ?? DONE).catch(() => undefined).then(() => fs.closeSync(w.fd));
    this.db.close();
  }
}

const DONE = Promise.resolve();

function fdatasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (e) => (e ? reject(e) : resolve())));
}

/** Bring the schema up to `target`, one transaction per step. */
export function migrate(db: DB, target = SCHEMA_VERSION): void {
  let v = db.pragma('user_version', { simple: true }) as number;
  if (v > SCHEMA_VERSION) throw new StoreError(`registry schema version ${v} is newer than this qubesd (${SCHEMA_VERSION})`);
  while (v < target) {
    const step = MIGRATIONS[v] as (db: DB) => void;
    const next = v + 1;
    db.transaction(() => {
      step(db);
      db.pragma(`user_version = ${next}`);
    }).immediate();
    v = next;
  }
}
