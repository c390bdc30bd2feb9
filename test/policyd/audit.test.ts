/** The audit log's write path: journal segments tailed into SQLite by the worker; a failed write denies. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { AuditLog, type AuditRecord } from '../../src/audit/index.js';
import { journalSegments } from '../../src/audit/audit-log.js';
import { parseSystemInfo } from '../../src/policy/index.js';
import { loadPolicyFromDisk } from '../../src/policy-files/disk.js';
import { decideAndRecord, Notifier, staticSystemInfo, type ServerContext } from '../../src/policyd/index.js';
import { silentLogger } from '../../src/policyd/log.js';
import { systemInfo, writeFixture } from './fixture.js';
import { tmpDirs } from './helpers.js';

const newDir = tmpDirs();

const record = (i: number): AuditRecord => ({
  timeMs: Date.now(),
  client: 'qrexec-daemon',
  mode: 'exec',
  source: 'work',
  requestedSource: null,
  intendedTarget: 'vault',
  target: 'vault',
  service: 'test.Audit',
  argument: `+n${i}`,
  action: 'allow',
  result: 'allow',
  rule: 'x.policy:1',
  askAnswer: null,
  reason: null,
  durationUs: 3,
});

function rowsInDb(db: string): string[] {
  const conn = new Database(db, { readonly: true });
  try {
    return (conn.prepare('SELECT argument FROM decisions ORDER BY id').all() as { argument: string }[]).map((r) => r.argument);
  } finally {
    conn.close();
  }
}

test('records across many journal segments all reach SQLite, in order; finished segments are deleted', async () => {
  const dir = newDir();
  const db = path.join(dir, 'audit.sqlite');
  const log = new AuditLog({ path: db, segmentRecords: 10 });
  let acked = 0;
  for (let i = 0; i < 95; i++) {
    log.append(record(i), (err) => {
      assert.equal(err, null);
      acked++;
    });
    if (i % 7 === 6) await new Promise((r) => setImmediate(r)); // batches of 7 over several turns
  }
  await log.settled();
  assert.equal(acked, 95);
  assert.deepEqual(
    rowsInDb(db),
    Array.from({ length: 95 }, (_, i) => `+n${i}`),
  );
  const t0 = Date.now();
  while (journalSegments(db).length > 1) {
    if (Date.now() - t0 > 10_000) assert.fail(`segments left: ${journalSegments(db).join(' ')}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  await log.close();
  assert.deepEqual(journalSegments(db), []);
  // A new log over the same database carries on with the ids.
  const again = new AuditLog({ path: db });
  again.append(record(95), () => {});
  await again.close();
  assert.equal(rowsInDb(db).length, 96);
});

test('a decision whose audit record cannot be written is denied', async () => {
  const dir = newDir();
  const fx = writeFixture(dir);
  const policy = loadPolicyFromDisk({ policyDirs: [fx.policyDir] });
  const failing = {
    append(_r: AuditRecord, done: (err: Error | null) => void): void {
      done(new Error('No space left on device'));
    },
  } as unknown as AuditLog;
  const working = new AuditLog({ path: path.join(dir, 'audit.sqlite') });
  const ctx = (audit: AuditLog): ServerContext => ({
    policy: () => ({ ok: true, policy, generation: 1 }),
    log: silentLogger,
    gui: null,
    askTimeoutMs: 1000,
    notify: new Notifier(null, silentLogger),
    systemInfo: staticSystemInfo(parseSystemInfo(systemInfo())),
    audit,
  });
  const ask = (audit: AuditLog): Promise<string> =>
    new Promise((resolve) =>
      decideAndRecord(
        { source: 'work', intendedTarget: 'vault', serviceAndArg: 'test.Allow+', requestedSource: undefined, assumeYesForAsk: false, justEvaluate: false },
        ctx(audit),
        resolve,
      ),
    );
  try {
    assert.match(await ask(working), /^user=DEFAULT\nresult=allow\ntarget=vault\n/);
    assert.equal(await ask(failing), 'result=deny');
  } finally {
    await working.close();
  }
});
