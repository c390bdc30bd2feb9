/**
 * Small command-line details of issue 9: qrexec-client's help gives its real
 * default timeout, qrexec-policy-exec --path takes --legacy-dir, and
 * qrexec-client -e says nothing on a successful call.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const bin = (n: string): string => path.join(ROOT, 'bin', n);

test('qrexec-client --help gives the default connection timeout it uses: 10 s', () => {
  const r = spawnSync(bin('qrexec-client'), ['--help'], { encoding: 'utf8' });
  assert.equal(r.status, 0);
  assert.match(r.stdout, /-w timeout - override default connection timeout of 10s/);
  assert.doesNotMatch(r.stdout, /5s/);
});

test('qrexec-policy-exec --path ... --legacy-dir: !compat-4.0 reads that 4.0 directory', () => {
  const args = ['--path', path.join(ROOT, 'examples/policy.d'), '--system-info', path.join(ROOT, 'examples/system-info.json'), '--just-evaluate'];
  const call = ['untrusted', '@dispvm', 'qubes.StartApp+firefox']; // allowed only by examples/legacy/qubes.StartApp+firefox
  const withLegacy = spawnSync(bin('qrexec-policy-exec'), [...args, '--legacy-dir', path.join(ROOT, 'examples/legacy'), ...call], { encoding: 'utf8' });
  assert.equal(withLegacy.status, 0, withLegacy.stderr);
  assert.match(withLegacy.stdout, /result=allow/);
  const other = fs.mkdtempSync(path.join(os.tmpdir(), 'exec-legacy-'));
  try {
    // an empty 4.0 directory: the legacy rule is not there, the call is denied
    const without = spawnSync(bin('qrexec-policy-exec'), [...args, '--legacy-dir', other, ...call], { encoding: 'utf8' });
    assert.equal(without.status, 1, without.stderr);
    assert.match(without.stdout, /result=deny/);
  } finally {
    fs.rmSync(other, { recursive: true, force: true });
  }
  const help = spawnSync(bin('qrexec-policy-exec'), ['--help'], { encoding: 'utf8' });
  assert.match(help.stdout, /--legacy-dir DIR/);
});

test('qrexec-client -e: a successful call prints nothing (no "vchan connection closed early")', async () => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'client-e-'));
  const user = os.userInfo().username;
  const children: ChildProcess[] = [];
  try {
    fs.mkdirSync(path.join(d, 'policy.d'));
    fs.mkdirSync(path.join(d, 'sock'));
    const env = { ...process.env, VCHAN_SOCKET_DIR: d };
    children.push(
      spawn(bin('qrexec-host'), ['--policy-path', path.join(d, 'policy.d'), '--system-info', path.join(ROOT, 'examples/system-info.json'), '--socket-path', path.join(d, 'policy.sock'), '--qrexec-socket-dir', path.join(d, 'sock'), '--no-audit', '--qubesd-admin-socket', 'none', '--policy-api-dir', 'none', '--qube', `1:work:5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c66:${user}`], { env, stdio: 'ignore' }),
      spawn(bin('qrexec-agent'), [`--agent-socket=${path.join(d, 'work.sock')}`], { env: { ...env, VCHAN_DOMAIN: '1' }, stdio: 'ignore' }),
    );
    for (let i = 0; i < 300 && !fs.existsSync(path.join(d, 'work.sock')); i++) await new Promise((r) => setTimeout(r, 100));
    assert.ok(fs.existsSync(path.join(d, 'work.sock')), 'the agent is up');
    const marker = path.join(d, 'ran');
    for (let i = 0; i < 5; i++) {
      // stdin left open, as a terminal's is
      const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
        const c = spawn(bin('qrexec-client'), [`--socket-dir=${path.join(d, 'sock')}`, '-e', '-d', 'work', `${user}:touch ${marker}.${i}`], { env, stdio: ['pipe', 'ignore', 'pipe'] });
        let stderr = '';
        c.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
        c.on('close', (code) => resolve({ code, stderr }));
      });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stderr, '', `call ${i}`);
    }
    for (let i = 0; i < 100 && !fs.existsSync(`${marker}.4`); i++) await new Promise((r) => setTimeout(r, 50));
    assert.ok(fs.existsSync(`${marker}.4`), 'the commands ran');
  } finally {
    for (const c of children) c.kill();
    await new Promise((r) => setTimeout(r, 200));
    fs.rmSync(d, { recursive: true, force: true });
  }
});
