/**
 * `audit.Query` (ours): the decision audit log, read-only, as an in-process
 * dom0 service for qubes the policy lets call it (by default only sys-gui:
 * policy/50-gui-admin.policy). The payload is a JSON filter
 * `{source?, target?, service?, result?, sinceMs?, limit?}` (limit at most
 * 1000, default 200); the reply is a JSON array of rows, oldest first, as
 * `qrexec-audit --json` gives them.
 */
import { queryAudit, type AuditFilter } from '../audit/index.js';
import type { InProcessService } from '../daemon/index.js';

export const AUDIT_QUERY_SERVICE = 'audit.Query';

const NAME = /^[\w@:.+-]{1,200}$/;

/** Parses the filter; a message for what is wrong. */
export function parseAuditFilter(payload: Buffer): AuditFilter | string {
  let j: unknown;
  try {
    j = payload.length === 0 ? {} : (JSON.parse(payload.toString('utf8')) as unknown);
  } catch {
    return 'the filter is not JSON';
  }
  if (typeof j !== 'object' || j === null || Array.isArray(j)) return 'the filter must be a JSON object';
  const o = j as Record<string, unknown>;
  const f: { -readonly [K in keyof AuditFilter]: AuditFilter[K] } = { limit: 200 };
  for (const k of ['source', 'target', 'service'] as const) {
    const v = o[k];
    if (v === undefined || v === '') continue;
    if (typeof v !== 'string' || !NAME.test(v)) return `${k}: expected a name`;
    f[k] = v;
  }
  if (o['result'] !== undefined && o['result'] !== '') {
    if (o['result'] !== 'allow' && o['result'] !== 'deny') return 'result: allow or deny';
    f.result = o['result'];
  }
  if (o['sinceMs'] !== undefined) {
    if (typeof o['sinceMs'] !== 'number' || !Number.isFinite(o['sinceMs'])) return 'sinceMs: expected a number';
    f.sinceMs = o['sinceMs'];
  }
  if (o['limit'] !== undefined) {
    if (typeof o['limit'] !== 'number' || !Number.isInteger(o['limit']) || o['limit'] < 1 || o['limit'] > 1000) return 'limit: 1 to 1000';
    f.limit = o['limit'];
  }
  return f;
}

export function auditQueryService(dbPath: string): InProcessService {
  return ({ payload }) => {
    const f = parseAuditFilter(payload);
    if (typeof f === 'string') return { code: 1, stdout: Buffer.alloc(0), stderr: `AuditQueryError ${f}\n` };
    try {
      return { code: 0, stdout: Buffer.from(JSON.stringify(queryAudit(dbPath, f))), stderr: '' };
    } catch (e) {
      return { code: 1, stdout: Buffer.alloc(0), stderr: `AuditQueryError ${(e as Error).message}\n` };
    }
  };
}
