// bin/qrexec-host: the policy daemon and the qrexec daemons of two qubes in one
// process, with real agents, a real policy directory and the audit log.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdir, writeFile, access } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import * as net from 'node:net';
import { World, BIN, waitFor } from './harness.js';
import { qubeCall } from './caller.js';

let w: World;
let policyDir: string;
const uuid = (id: number): string => `00000000-0000-0000-0000-0000000000${String(id).padStart(2, '0')}`;

before(async () => {
  w = await World.create();
  policyDir = join(w.dir, 'policy.d');
  await mkdir(policyDir);
  await writeFile(join(policyDir, '30-test.policy'), 'test.Echo * work vault allow\ntest.Later * work vault deny notify=no\n');
  const dom = (type: string, u: string): object => ({ tags: [], type, template_for_dispvms: false, default_dispvm: null, icon: 'x', label: 'red', guivm: null, relayvm: null, transport_rpc: null, internal: null, power_state: 'Running', uuid: u });
  await writeFile(join(w.dir, 'system-info.json'), JSON.stringify({ domains: { dom0: dom('AdminVM', uuid(0)), work: dom('AppVM', uuid(1)), vault: dom('AppVM', uuid(2)) } }));
  await w.service('vault', 'test.Echo', '#!/bin/sh\necho "from=$QREXEC_REMOTE_DOMAIN arg=$1 user=$(id -un)"\ncat\n');
  await w.service('vault', 'test.Later', '#!/bin/sh\necho later\n');
  await w.agent(1, 'work');
  await w.agent(2, 'vault');
  w.start(
    BIN('qrexec-host'),
    [
      '--policy-path', policyDir, '--socket-path', join(w.dir, 'policy.sock'), '--system-info', join(w.dir, 'system-info.json'),
      '--eval-socket-path', 'none', '--gui-socket-path', 'none', '--qubesd-events-socket', 'none', '--audit-db', join(w.dir, 'audit.sqlite'),
      `--qrexec-socket-dir=${w.sockDir}`, `--qube=1:work:${uuid(1)}:root`, `--qube=2:vault:${uuid(2)}:root`,
    ],
    w.env({ VCHAN_DOMAIN: '0' }),
  );
  for (const name of ['work', 'vault', '1', '2', `uuid:${uuid(1)}`]) {
    await waitFor(() => access(join(w.sockDir, `qrexec.${name}`)).then(() => true, () => false), 15000, `qrexec.${name}`);
  }
});
after(async () => {
  await w.close();
});

const call = (target: string, service: string, input = ''): ReturnType<typeof qubeCall> => qubeCall(join(w.dir, 'agent-work.sock'), w.dir, 1, target, service, input);

function audit(...args: string[]): { source: string; target: string; service: string; result: string }[] {
  const r = spawnSync(BIN('qrexec-audit'), ['--db', join(w.dir, 'audit.sqlite'), '--json', ...args], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.trim().split('\n').filter((l) => l).map((l) => JSON.parse(l) as { source: string; target: string; service: string; result: string });
}

void test('qrexec-host: an allowed call is decided in-process by the policy file and audited', async () => {
  const r = await call('vault', 'test.Echo+a1', 'ping\n');
  assert.equal(r.code, 0);
  assert.equal(r.stdout.toString(), 'from=work arg=a1 user=root\nping\n');
  await waitFor(async () => audit('--service', 'test.Echo').some((x) => x.result === 'allow' && x.source === 'work'), 10000, 'audit record of the allow');
});

void test('qrexec-host: a denied call and a call no rule allows are refused and audited as deny', async () => {
  assert.ok((await call('vault', 'test.Later')).refused);
  assert.ok((await call('vault', 'test.Nothing')).refused);
  await waitFor(async () => audit('--result', 'deny').length >= 2, 10000, 'audit records of the denies');
});

void test('qrexec-host: a policy change is used by the next call', async () => {
  await writeFile(join(policyDir, '20-later.policy'), 'test.Later * work vault allow\n');
  await waitFor(async () => !(await call('vault', 'test.Later')).refused, 10000, 'the new rule');
  assert.equal((await call('vault', 'test.Later')).stdout.toString(), 'later\n');
});

void test('qrexec-host: the policy socket still answers other clients', async () => {
  const reply = await new Promise<string>((resolve, reject) => {
    const s = net.createConnection(join(w.dir, 'policy.sock'));
    let got = '';
    s.on('data', (d: Buffer) => (got += d.toString()));
    s.on('end', () => resolve(got));
    s.on('error', reject);
    s.end('source=work\nintended_target=vault\nservice_and_arg=test.Echo+x\njust_evaluate=yes\n\n');
  });
  assert.equal(reply, 'result=allow');
});

void test('qrexec-host: --help, a missing or malformed --qube', () => {
  const help = spawnSync(BIN('qrexec-host'), ['--help'], { encoding: 'utf8' });
  assert.equal(help.status, 0);
  assert.match(help.stdout, /--qube DOMID:NAME:UUID/);
  const none = spawnSync(BIN('qrexec-host'), ['--policy-path', policyDir], { encoding: 'utf8' });
  assert.equal(none.status, 2);
  assert.match(none.stderr, /required: --qube/);
  const bad = spawnSync(BIN('qrexec-host'), ['--qube=0:x:y'], { encoding: 'utf8' });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /argument --qube/);
});
