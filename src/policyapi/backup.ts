/**
 * Backup and restore of a whole policy directory (ours): every regular file
 * under it (policy files, include/, tests/, delegations.conf) in one JSON
 * document. A restore is checked first: the backed-up policy must load on its
 * own. Then it is written file by file, atomically: included files first,
 * policy files next, then removals of files the backup does not hold
 * (policy files before include files), so that no policy file ever names a
 * missing include.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadRules, memorySource, PolicySyntaxError } from '../policy/index.js';
import { removeDurably, TEMP_PREFIX, writeAtomic } from './store.js';

export const BACKUP_FORMAT = 'qrexec-ts-policy-backup';

export interface PolicyBackup {
  readonly format: typeof BACKUP_FORMAT;
  readonly version: 1;
  readonly createdMs: number;
  /** Relative path → base64 content. */
  readonly files: Record<string, string>;
}

export class BackupError extends Error {
  override name = 'BackupError';
}

function filesUnder(root: string, rel = ''): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
    if (e.name.startsWith(TEMP_PREFIX)) continue;
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...filesUnder(root, r));
    else if (fs.statSync(path.join(root, r)).isFile()) out.push(r);
  }
  return out.sort();
}

export function createBackup(dir: string): PolicyBackup {
  const files: Record<string, string> = {};
  for (const r of filesUnder(dir)) files[r] = fs.readFileSync(path.join(dir, r)).toString('base64');
  return { format: BACKUP_FORMAT, version: 1, createdMs: Date.now(), files };
}

export function parseBackup(text: string): PolicyBackup {
  let b: unknown;
  try {
    b = JSON.parse(text);
  } catch {
    throw new BackupError('not a policy backup (not JSON)');
  }
  const o = b as Partial<PolicyBackup>;
  if (o.format !== BACKUP_FORMAT || o.version !== 1 || typeof o.files !== 'object' || o.files === null) throw new BackupError('not a policy backup');
  for (const [r, v] of Object.entries(o.files)) {
    if (typeof v !== 'string' || r.split('/').some((p) => p === '' || p === '.' || p === '..') || path.isAbsolute(r)) throw new BackupError(`invalid entry in the backup: ${r}`);
  }
  return o as PolicyBackup;
}

/** Restores `b` into `dir`; returns [written, removed]. @throws BackupError when the backed-up policy does not load */
export function restoreBackup(dir: string, b: PolicyBackup): [number, number] {
  const abs = path.resolve(dir);
  const contents = new Map(Object.entries(b.files).map(([r, v]) => [r, Buffer.from(v, 'base64')]));
  try {
    loadRules(memorySource(new Map([...contents].map(([r, c]) => [path.join(abs, r), c]))), { policyDirs: [abs], legacyDir: '/etc/qubes-rpc/policy' });
  } catch (e) {
    if (e instanceof PolicySyntaxError) throw new BackupError(`the backed-up policy does not load: ${e.message}`);
    throw e;
  }
  const isPolicy = (r: string): boolean => !r.includes('/') && r.endsWith('.policy');
  const order = [...contents.keys()].sort((x, y) => Number(isPolicy(x)) - Number(isPolicy(y)));
  for (const r of order) {
    const target = path.join(abs, r);
    fs.mkdirSync(path.dirname(target), { recursive: true });
    const now = fs.existsSync(target) ? fs.readFileSync(target) : null;
    if (now === null || !now.equals(contents.get(r) as Buffer)) writeAtomic(target, contents.get(r) as Buffer, abs);
  }
  const extra = filesUnder(abs).filter((r) => !contents.has(r)).sort((x, y) => Number(isPolicy(y)) - Number(isPolicy(x)));
  for (const r of extra) removeDurably(path.join(abs, r));
  return [order.length, extra.length];
}
