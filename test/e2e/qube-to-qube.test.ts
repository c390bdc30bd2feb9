import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdir, writeFile, chmod } from 'node:fs/promises';
import { World } from './harness.js';
import { qubeCall } from './caller.js';
import { fakePolicyDaemon } from '../daemon/peer.js';

let w: World;
let policy: { requests: string[]; close: () => void };
before(async () => {
  w = await World.create();
  // policy: allow test.* to vault and to dom0, deny everything else
  policy = await fakePolicyDaemon(join(w.dir, 'policy.sock'), (req) => {
    const f = Object.fromEntries(req.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
    const svc = f['service_and_arg'] ?? '';
    if (!svc.startsWith('test.')) return 'result=deny\n';
    const t = f['intended_target'] === '@adminvm' || f['intended_target'] === 'dom0' ? 'dom0' : f['intended_target'];
    return `user=root\nresult=allow\ntarget=${t}\nautostart=False\nrequested_target=${f['intended_target']}\n`;
  });
  await w.service('vault', 'test.Echo', '#!/bin/sh\necho "from=$QREXEC_REMOTE_DOMAIN arg=$1"\ncat\necho e >&2\nexit 5\n');
  await w.service('vault', 'test.Cat', '#!/bin/sh\nexec cat\n');
  const dom0rpc = join(w.dir, 'rpc-dom0');
  await mkdir(dom0rpc, { recursive: true });
  await writeFile(join(dom0rpc, 'test.Host'), '#!/bin/sh\necho "host from=$QREXEC_REMOTE_DOMAIN kw=$QREXEC_REQUESTED_TARGET_KEYWORD arg=$1"\nexit 4\n');
  await chmod(join(dom0rpc, 'test.Host'), 0o755);
  const daemonArgs = [`--policy-socket=${join(w.dir, 'policy.sock')}`, `--policy-program=${join(w.dir, 'none')}`];
  process.env['QREXEC_SERVICE_PATH'] = dom0rpc; // inherited by the daemons (dom0 services)
  await w.qube(1, 'work', daemonArgs);
  await w.qube(2, 'vault', daemonArgs);
});
after(async () => {
  policy.close();
  await w.close();
});

const call = (target: string, service: string, input: Buffer | string = ''): ReturnType<typeof qubeCall> =>
  qubeCall(join(w.dir, 'agent-work.sock'), w.dir, 1, target, service, input);

void test('qube → qube: allowed call, stdio and exit code; the source is the calling qube', async () => {
  const r = await call('vault', 'test.Echo+a1', 'ping\n');
  assert.equal(r.stdout.toString(), 'from=work arg=a1\nping\n');
  assert.equal(r.stderr, 'e\n');
  assert.equal(r.code, 5);
  assert.ok(policy.requests.some((q) => q === 'source=work\nintended_target=vault\nservice_and_arg=test.Echo+a1\n\n'));
});

void test('qube → qube: denied call is refused (126)', async () => {
  const r = await call('vault', 'other.Service');
  assert.ok(r.refused);
});

void test('qube → qube: 64 KiB boundaries through cat, many calls in a row', async () => {
  for (const n of [65535, 65536, 65537, 1 << 20]) {
    const data = Buffer.alloc(n, n & 0xff);
    const r = await call('vault', 'test.Cat', data);
    assert.equal(r.code, 0);
    assert.ok(r.stdout.equals(data), `n=${n}`);
  }
  for (let i = 0; i < 20; i++) assert.equal((await call('vault', 'test.Cat', `x${i}`)).stdout.toString(), `x${i}`);
});

void test('qube → qube: longest service name (65,000 bytes with its NUL) reaches the service; one more is refused', async () => {
  const svc = `test.Echo+${'a'.repeat(64999 - 'test.Echo+'.length)}`;
  const r = await call('vault', svc, '');
  assert.equal(r.code, 5);
  assert.equal(r.stdout.toString(), `from=work arg=${'a'.repeat(64999 - 10)}\n`);
  assert.ok((await call('vault', `${svc}a`)).refused);
});

void test('qube → dom0: host service runs with the reference environment', async () => {
  const r = await call('@adminvm', 'test.Host+z');
  assert.equal(r.stdout.toString(), 'host from=work kw=adminvm arg=z\n');
  assert.equal(r.code, 4);
});
