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

test('a bad line is answered with an error object, and the lines after it still are', () => {
  const args = ['--policy-dir', path.join(ROOT, 'examples/policy.d'), '--legacy-dir', path.join(ROOT, 'examples/legacy'), '--system-info', path.join(ROOT, 'examples/system-info.json')];
  const good = '{"source":"work","intended_target":"vault","service_and_arg":"no.Such"}';
  const r = run(args, `${good}\nnot json\n{"source":1}\n${good}\n`);
  assert.equal(r.code, 1, r.err);
  const lines = r.out.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.equal(lines.length, 4, r.out);
  assert.equal(lines[0]?.['result'], 'deny');
  assert.equal(lines[1]?.['error'], 'request');
  assert.equal(lines[1]?.['line'], 2);
  assert.equal(lines[2]?.['error'], 'request');
  assert.match(String(lines[2]?.['message']), /"source" must be a string/);
  assert.deepEqual(lines[3], lines[0]);
});

test('a coprocess: each line is answered before the next one is written', async () => {
  const { spawn } = await import('node:child_process');
  const child = spawn(EVAL, ['--policy-dir', path.join(ROOT, 'examples/policy.d'), '--legacy-dir', path.join(ROOT, 'examples/legacy'), '--system-info', path.join(ROOT, 'examples/system-info.json')], { stdio: ['pipe', 'pipe', 'pipe'] });
  let buf = '';
  const waiters: (() => void)[] = [];
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (d: string) => {
    buf += d;
    waiters.splice(0).forEach((w) => w());
  });
  const nextLine = async (): Promise<string> => {
    const deadline = Date.now() + 20_000;
    while (!buf.includes('\n')) {
      if (Date.now() > deadline) throw new Error(`no answer; stdout so far: ${JSON.stringify(buf)}`);
      await new Promise<void>((r) => {
        waiters.push(r);
        setTimeout(r, 200);
      });
    }
    const i = buf.indexOf('\n');
    const line = buf.slice(0, i);
    buf = buf.slice(i + 1);
    return line;
  };
  try {
    child.stdin.write('{"source":"work","intended_target":"@default","service_and_arg":"qubes.Filecopy+"}\n');
    assert.equal((JSON.parse(await nextLine()) as Record<string, unknown>)['result'], 'ask');
    child.stdin.write('{"source":"personal","intended_target":"vault","service_and_arg":"qubes.Gpg"}\n');
    assert.equal((JSON.parse(await nextLine()) as Record<string, unknown>)['result'], 'deny');
    child.stdin.write('{oops}\n');
    assert.equal((JSON.parse(await nextLine()) as Record<string, unknown>)['error'], 'request');
    child.stdin.end();
    const code = await new Promise((r) => child.on('close', r));
    assert.equal(code, 1);
  } finally {
    child.kill();
  }
});
