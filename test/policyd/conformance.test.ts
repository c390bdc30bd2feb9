/**
 * Differential test against the reference qrexec-policy-daemon: replays
 * every exchange of <case>/daemon-expected.jsonl in the vendored corpus
 * (test/conformance/policy.tar.gz)
 * against bin/qrexec-policy-daemon started as the README says, and compares
 * replies as qrexec-daemon reads them (lines split at \n, one trailing \n
 * dropped, order free). Where the reference closed without a reply (it
 * crashed), we must answer result=deny.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { corpusDir } from '../conformance/corpus.js';
import { exchange, pool, replyLines, replyResult, spawnDaemon, tmpDir } from './helpers.js';

interface Exchange {
  request: string;
  reply: string;
}

test('conformance: every daemon-expected.jsonl exchange', { timeout: 600_000 }, async () => {
  const CONFORMANCE = corpusDir();
  const cases = fs
    .readdirSync(CONFORMANCE)
    .filter((c) => c.startsWith('case-') && fs.existsSync(path.join(CONFORMANCE, c, 'daemon-expected.jsonl')))
    .sort();
  assert.ok(cases.length >= 275, `only ${cases.length} cases with daemon vectors`);
  const dir = tmpDir('policyd-conf-');
  let total = 0;
  const failures: string[] = [];
  try {
    await pool(cases, 4, async (c, idx) => {
      const caseDir = path.join(CONFORMANCE, c);
      const exchanges = fs
        .readFileSync(path.join(caseDir, 'daemon-expected.jsonl'), 'utf8')
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Exchange);
      // A few cases also run with the audit log on, so that path is replayed too.
      const audit = idx % 25 === 0 ? ['--audit-db', path.join(dir, `${c}.sqlite`)] : ['--no-audit'];
      const d = await spawnDaemon(
        dir,
        [
          '--policy-path',
          path.join(caseDir, 'policy.d'),
          '--system-info',
          path.join(caseDir, 'system-info.json'),
          '--log-level',
          'error',
          ...audit,
        ],
        `${c}.sock`,
      );
      try {
        const replies = await pool(exchanges, 8, (e) => exchange(d.socket, e.request));
        exchanges.forEach((e, i) => {
          total++;
          const got = replies[i] as string;
          const ok =
            e.reply === ''
              ? replyResult(got) === 'deny'
              : JSON.stringify(replyLines(got)) === JSON.stringify(replyLines(e.reply));
          if (!ok && failures.length < 30) {
            failures.push(`${c}: request ${JSON.stringify(e.request)}\n  expected ${JSON.stringify(e.reply)}\n  got      ${JSON.stringify(got)}`);
          } else if (!ok) failures.push(c);
        });
      } finally {
        await d.stop();
      }
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  assert.ok(total > 0);
  assert.equal(failures.length, 0, `${failures.length} of ${total} exchanges differ:\n${failures.slice(0, 30).join('\n')}`);
});
