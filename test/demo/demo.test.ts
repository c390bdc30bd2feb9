/** `npm start` must keep working: the demo host, its calls and its audit log. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

test('qrexec-demo --once: allowed, denied and missing calls through real daemons and agents', { timeout: 120_000 }, () => {
  const r = spawnSync(path.join(ROOT, 'bin/qrexec-demo'), ['--once'], { encoding: 'utf8', timeout: 110_000 });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /hello from work\n\[exit status 0\]/);
  assert.match(r.stdout, /Request refused\n\[exit status 126\]/);
  assert.match(r.stdout, /this is work, called by vault for demo\.Whoami\+me/);
  assert.match(r.stdout, /\[exit status 127\]/);
  assert.match(r.stdout, /ALLOW demo\.Echo\+hello work -> vault .*rule=50-demo\.policy:2/);
  assert.match(r.stdout, /DENY +demo\.Echo vault -> work .*rule=50-demo\.policy:3/);
});
