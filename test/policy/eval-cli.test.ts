import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const EVAL = path.join(ROOT, 'bin/qrexec-policy-eval');

function run(args: string[], input: string, cwd = ROOT) {
  const r = spawnSync(EVAL, args, { input, cwd, encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

test('relative paths, legacy directory included, one line per request', () => {
  const r = run(
    ['--policy-dir', 'policy.d', '--system-info', 'system-info.json', '--legacy-dir', 'legacy'],
    '{"source":"untrusted","intended_target":"@dispvm","service_and_arg":"qubes.StartApp+firefox"}\n\n' +
      '{"source":"work","intended_target":"vault","service_and_arg":"no.Such"}\n',
    path.join(ROOT, 'examples'),
  );
  assert.equal(r.code, 0, r.err);
  const lines = r.out.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.equal(lines.length, 2);
  assert.equal(lines[1]?.['result'], 'deny');
});

test('a policy that does not load: one error line, exit status 2', () => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'eval-cli-'));
  try {
    fs.writeFileSync(path.join(d, '10-a.policy'), 'q.S * @anyvm @anyvm allow\n\nq.S * work\n');
    const r = run(['--policy-dir', d, '--system-info', path.join(ROOT, 'examples/system-info.json')], '{"source":"work","intended_target":"vault","service_and_arg":"q.S"}\n');
    assert.equal(r.code, 2);
    assert.deepEqual(JSON.parse(r.out), { error: 'policy', file: '10-a.policy', line: 3 });
    assert.match(r.err, /10-a\.policy:3: wrong number of fields/);
  } finally {
    fs.rmSync(d, { recursive: true, force: true });
  }
});

test('bad request lines and bad options are reported, with exit status 1 and 2', () => {
  const args = ['--policy-dir', path.join(ROOT, 'examples/policy.d'), '--legacy-dir', path.join(ROOT, 'examples/legacy'), '--system-info', path.join(ROOT, 'examples/system-info.json')];
  const bad = run(args, '{"source":1}\n');
  assert.equal(bad.code, 1);
  assert.match(bad.err, /stdin:1: request: "source" must be a string/);
  const usage = run(['--policy-dir'], '');
  assert.equal(usage.code, 2);
  assert.match(usage.err, /needs a value/);
  const help = run(['--help'], '');
  assert.equal(help.code, 0);
  assert.match(help.out, /^usage: qrexec-policy-eval/);
});
