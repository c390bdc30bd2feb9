/** The decision audit log: writer (policy daemon) and reader (qrexec-audit). */
export { AuditLog, type AuditRecord, type AuditOptions } from './audit-log.js';
export { AuditQueryError, queryAudit, parseSince, formatRow, type AuditFilter, type AuditRow } from './query.js';
