/**
 * Worker thread of the audit log: inserts journaled records into SQLite in
 * batches (one transaction per batch) and applies the retention settings.
 * See audit-log.ts. Messages in: arrays of journal rows; out: `{through}`,
 * the highest record id committed so far.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { INSERT_SQL, openAuditDb, type JournalRow } from './audit-log.js';

interface Config {
  path: string;
  sync: 'normal' | 'full';
  maxRows: number;
  maxAgeDays: number;
  pruneIntervalMs: number;
}

const cfg = workerData as Config;
const db = openAuditDb(cfg.path, cfg.sync);
// Checkpoints run here, off the daemon's thread; a large WAL is fine.
db.pragma('wal_autocheckpoint = 4000');
const insert = db.prepare(INSERT_SQL);
const insertAll = db.transaction((batches: JournalRow[][]) => {
  for (const rows of batches) for (const r of rows) insert.run(...r);
});

let pending: JournalRow[][] = [];
let scheduled = false;

function flush(): void {
  scheduled = false;
  const batches = pending;
  pending = [];
  if (batches.length === 0) return;
  insertAll(batches);
  const last = batches[batches.length - 1] as JournalRow[];
  const through = (last[last.length - 1] as JournalRow)[0];
  parentPort?.postMessage({ through });
}

parentPort?.on('message', (rows: JournalRow[]) => {
  if (rows.length === 0) return;
  pending.push(rows);
  if (!scheduled) {
    scheduled = true;
    setImmediate(flush);
  }
});

function prune(): void {
  let deleted = 0;
  if (cfg.maxAgeDays > 0) {
    deleted += db.prepare('DELETE FROM decisions WHERE time_ms < ?').run(Date.now() - cfg.maxAgeDays * 86_400_000).changes;
  }
  if (cfg.maxRows > 0) {
    const m = (db.prepare('SELECT max(id) AS m FROM decisions').get() as { m: number | null }).m;
    if (m !== null) deleted += db.prepare('DELETE FROM decisions WHERE id <= ?').run(m - cfg.maxRows).changes;
  }
  if (deleted > 0) {
    db.pragma('incremental_vacuum');
    db.pragma('wal_checkpoint(TRUNCATE)');
  }
}

prune();
if (cfg.pruneIntervalMs > 0) setInterval(prune, cfg.pruneIntervalMs);
