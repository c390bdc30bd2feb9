/**
 * qrexec-agent stops on SIGTERM also while it still waits for its host
 * (dom0 has not connected to its control vchan yet): exit status 0, its
 * listening socket removed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

test('qrexec-agent: SIGTERM before dom0 connected stops it cleanly', { timeout: 30_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'agent-sigterm-'));
  try {
    const p = spawn(process.execPath, [path.join(ROOT, 'bin/qrexec-agent'), `--agent-socket=${path.join(dir, 'agent.sock')}`], {
      env: { ...process.env, VCHAN_SOCKET_DIR: dir, VCHAN_DOMAIN: '7', QREXEC_SERVICE_PATH: dir },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    p.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const exited = new Promise<number | null>((r) => p.once('exit', (code) => r(code)));
    // listening for dom0 on its control vchan (port 512)
    for (let i = 0; i < 500 && !fs.readdirSync(dir).some((n) => n.includes('512')); i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(fs.readdirSync(dir).some((n) => n.includes('512')), `the agent listens: ${fs.readdirSync(dir).join(' ')}`);
    p.kill('SIGTERM');
    const code = await Promise.race([exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 10_000))]);
    if (code === 'hung') p.kill('SIGKILL');
    assert.equal(code, 0, err);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
