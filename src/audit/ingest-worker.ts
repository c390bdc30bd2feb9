/**
 * Worker thread of the audit log: tails the journal segments the daemon
 * appends to and inserts their records into SQLite, many per transaction,
 * then applies the retention settings. See audit-log.ts.
 *
 * The daemon's thread sends nothing per batch: it sets CTL_DIRTY after each
 * journal write and CTL_SEGMENT when it starts a new segment. This thread
 * looks at those words every few milliseconds (reading the file only when
 * something was written), so ingestion costs the daemon neither messages
 * nor wake-ups. A segment below CTL_SEGMENT is complete: once read to its
 * end and committed, it is deleted. Out: `{through}`, the highest record id
 * committed so far, after each commit. In: `'poke'` — look now.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';
import {
  CTL_CLOSED,
  CTL_DIRTY,
  CTL_SEGMENT,
  INSERT_SQL,
  openAuditDb,
  parseJournal,
  segmentPath,
  type JournalRow,
} from './audit-log.js';

interface Config {
  path: string;
  sync: 'normal' | 'full';
  ctl: Int32Array;
  /** The first segment of this run (the daemon may have moved past it before this thread started). */
  firstSegment: number;
  maxRows: number;
  maxAgeDays: number;
  pruneIntervalMs: number;
}

/** How often the control words are looked at. */
const POLL_MS = 20;
/** Most bytes read (and rows held) per pass; a longer backlog takes several passes. */
const CHUNK = 1 << 20;

const cfg = workerData as Config;
const ctl = cfg.ctl;
// Ingestion is background work: let the daemon's own thread go first when
// both want the CPU. (On Linux this renices this thread only.)
try {
  os.setPriority(Math.min(19, os.getPriority() + 5));
} catch {
  // not allowed: fine
}
const db = openAuditDb(cfg.path, cfg.sync);
// Checkpoints run here, off the daemon's thread; a large WAL is fine.
db.pragma('wal_autocheckpoint = 4000');
const insert = db.prepare(INSERT_SQL);
const insertAll = db.transaction((rows: JournalRow[]) => {
  for (const r of rows) insert.run(...r);
});

/** The segment being read, where, and the bytes of an incomplete last line. */
let seg = cfg.firstSegment;
let fd: number | null = null;
let offset = 0;
let partial: Buffer | null = null;
const buf = Buffer.allocUnsafe(CHUNK);

/** Read what is new in the current segment; true if the chunk limit was hit. */
function readSegment(rows: JournalRow[]): boolean {
  if (fd === null) {
    try {
      fd = fs.openSync(segmentPath(cfg.path, seg), 'r');
    } catch {
      return false; // not there (yet, or recovered and removed)
    }
    offset = 0;
    partial = null;
  }
  const n = fs.readSync(fd, buf, 0, CHUNK, offset);
  if (n === 0) return false;
  offset += n;
  const end = buf.lastIndexOf(0x0a, n - 1);
  let complete: Buffer;
  if (end < 0) {
    partial = partial === null ? Buffer.from(buf.subarray(0, n)) : Buffer.concat([partial, buf.subarray(0, n)]);
    return n === CHUNK;
  }
  complete = buf.subarray(0, end + 1);
  if (partial !== null) complete = Buffer.concat([partial, complete]);
  partial = end + 1 < n ? Buffer.from(buf.subarray(end + 1, n)) : null;
  parseJournal(complete.toString('utf8'), rows);
  return n === CHUNK;
}

let running = false;

/** One pass: everything new, committed in one transaction; finished segments deleted. */
function pass(): void {
  if (running) return;
  running = true;
  try {
    const rows: JournalRow[] = [];
    const done: string[] = [];
    let more = false;
    const dirty = Atomics.exchange(ctl, CTL_DIRTY, 0) !== 0;
    const closed = Atomics.load(ctl, CTL_CLOSED) !== 0;
    if (dirty || closed || Atomics.load(ctl, CTL_SEGMENT) !== seg) {
      for (;;) {
        // Load the segment number before reading: if it has moved on, the
        // segment being read was complete before this read.
        const current = Atomics.load(ctl, CTL_SEGMENT);
        more = readSegment(rows);
        if (more || current === seg) break;
        if (fd !== null) fs.closeSync(fd);
        fd = null;
        done.push(segmentPath(cfg.path, seg));
        seg++;
      }
    }
    if (rows.length > 0) {
      insertAll(rows);
      parentPort?.postMessage({ through: (rows[rows.length - 1] as JournalRow)[0] });
    }
    for (const f of done) {
      try {
        fs.unlinkSync(f);
      } catch {
        // gone
      }
    }
    if (more) Atomics.store(ctl, CTL_DIRTY, 1); // the rest on the next pass
    if (more) setImmediate(pass);
  } finally {
    running = false;
  }
}

setInterval(pass, POLL_MS);
parentPort?.on('message', (m: unknown) => {
  if (m === 'poke') pass();
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
