/**
 * Reading the audit log (bin/qrexec-audit). Opens the database read-only, so
 * it can run while the daemon writes.
 */
import Database from 'better-sqlite3';
import { QrexecError, unreadableFile } from '../common/errors.js';
import { journalSegments, readJournal, type JournalRow } from './audit-log.js';

export interface AuditFilter {
  readonly source?: string | undefined;
  /** Matches the resolved target or the intended target. */
  readonly target?: string | undefined;
  readonly service?: string | undefined;
  readonly result?: 'allow' | 'deny' | undefined;
  /** Unix milliseconds. */
  readonly sinceMs?: number | undefined;
  /** Most recent N rows (default 1000; 0 = all). */
  readonly limit?: number | undefined;
}

/** A row as stored. */
export interface AuditRow {
  id: number;
  time_ms: number;
  client: string;
  mode: string;
  source: string;
  requested_source: string | null;
  intended_target: string;
  target: string | null;
  service: string;
  argument: string;
  action: string;
  result: string;
  rule: string | null;
  ask_answer: string | null;
  reason: string | null;
  duration_us: number;
}

function rowOf(j: JournalRow): AuditRow {
  return {
    id: j[0],
    time_ms: j[1],
    client: j[2],
    mode: j[3],
    source: j[4],
    requested_source: j[5],
    intended_target: j[6],
    target: j[7],
    service: j[8],
    argument: j[9],
    action: j[10],
    result: j[11],
    rule: j[12],
    ask_answer: j[13],
    reason: j[14],
    duration_us: j[15],
  };
}

function matches(r: AuditRow, f: AuditFilter): boolean {
  return (
    (f.source === undefined || r.source === f.source) &&
    (f.target === undefined || r.target === f.target || r.intended_target === f.target) &&
    (f.service === undefined || r.service === f.service) &&
    (f.result === undefined || r.result === f.result) &&
    (f.sinceMs === undefined || r.time_ms >= f.sinceMs)
  );
}

/**
 * Rows matching the filter, oldest first: the database, plus the records
 * the daemon has journaled but not yet inserted (so every acknowledged
 * decision shows).
 */
/** The audit database cannot be read. */
export class AuditQueryError extends QrexecError {
  override name = 'AuditQueryError';
}

export function queryAudit(dbPath: string, f: AuditFilter): AuditRow[] {
  // SQLite's own words ("disk I/O error" for a directory) do not say what is wrong
  const problem = unreadableFile(dbPath);
  if (problem !== undefined) throw new AuditQueryError(`audit database ${problem}`);
  let db: Database.Database;
  try {
    db = new Database(dbPath, { readonly: true, fileMustExist: true });
  } catch (e) {
    throw new AuditQueryError(`audit database ${dbPath}: ${(e as Error).message}`);
  }
  let rows: AuditRow[];
  try {
    const where: string[] = [];
    const args: (string | number)[] = [];
    if (f.source !== undefined) {
      where.push('source = ?');
      args.push(f.source);
    }
    if (f.target !== undefined) {
      where.push('(target = ? OR intended_target = ?)');
      args.push(f.target, f.target);
    }
    if (f.service !== undefined) {
      where.push('service = ?');
      args.push(f.service);
    }
    if (f.result !== undefined) {
      where.push('result = ?');
      args.push(f.result);
    }
    if (f.sinceMs !== undefined) {
      where.push('time_ms >= ?');
      args.push(f.sinceMs);
    }
    const limit = f.limit ?? 1000;
    const sql =
      'SELECT * FROM (SELECT * FROM decisions' +
      (where.length ? ' WHERE ' + where.join(' AND ') : '') +
      ' ORDER BY id DESC' +
      (limit > 0 ? ' LIMIT ' + String(Math.floor(limit)) : '') +
      ') ORDER BY id';
    rows = db.prepare(sql).all(...args) as AuditRow[];
  } finally {
    db.close();
  }
  const seen = new Set(rows.map((r) => r.id));
  const maxId = rows.length ? (rows[rows.length - 1] as AuditRow).id : 0;
  let extra = false;
  for (const seg of journalSegments(dbPath)) {
    for (const j of readJournal(seg)) {
      if (seen.has(j[0])) continue;
      const r = rowOf(j);
      if (!matches(r, f)) continue;
      // A journaled row not returned by the query is either not yet ingested, or was cut by LIMIT.
      if (r.id < maxId || rows.length === 0 || r.id > maxId) {
        seen.add(r.id);
        rows.push(r);
        extra = true;
      }
    }
  }
  if (extra) {
    rows.sort((a, b) => a.id - b.id);
    const limit = f.limit ?? 1000;
    if (limit > 0 && rows.length > limit) rows = rows.slice(rows.length - limit);
  }
  return rows;
}

/**
 * `--since` values: an ISO date/time, Unix seconds, or a duration back from
 * `now` such as `30s`, `15m`, `2h`, `7d`. Returns Unix ms, or null if invalid.
 */
export function parseSince(s: string, now = Date.now()): number | null {
  const rel = /^(\d+)([smhd])$/.exec(s);
  if (rel) {
    const mult = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[rel[2] as 's' | 'm' | 'h' | 'd'];
    return now - Number(rel[1]) * mult;
  }
  if (/^\d+$/.test(s)) return Number(s) * 1000;
  const t = Date.parse(s);
  return Number.isNaN(t) ? null : t;
}

/** One human-readable line per row. */
export function formatRow(r: AuditRow): string {
  const when = new Date(r.time_ms).toISOString();
  const arg = r.argument === '+' ? '' : r.argument;
  const target = r.target !== null && r.target !== r.intended_target ? `${r.intended_target} -> ${r.target}` : r.intended_target;
  const src = r.requested_source !== null ? `${r.source} (via relay)` : r.source;
  let s = `${when} ${r.result.toUpperCase().padEnd(5)} ${r.service}${arg} ${src} -> ${target} [${r.mode}]`;
  if (r.action !== r.result) s += ` action=${r.action}`;
  if (r.ask_answer !== null) s += ` answer=${r.ask_answer}`;
  s += ` rule=${r.rule ?? '-'}`;
  if (r.reason !== null) s += ` (${r.reason})`;
  return s + ` ${r.duration_us}us`;
}
