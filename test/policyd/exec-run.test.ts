/**
 * qrexec-policy-exec with 5 arguments runs an allowed call the way the
 * reference does: start the target through qubesd's admin socket, then
 * `qrexec-client -Ed TARGET -c IDENT,SOURCE,DOMID -- CMD`. A fake qubesd and
 * a fake qrexec-client record what they are given.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { BIN, tmpDir } from './helpers.js';

const dir = tmpDir('policy-exec-run-');
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const VAULT_UUID = '33333333-3333-4333-8333-333333333333';
fs.mkdirSync(path.join(dir, 'policy.d'));
fs.writeFileSync(
  path.join(dir, 'policy.d', '50-test.policy'),
  'test.Svc * work vault allow user=alice\ntest.Svc * work @adminvm allow\ntest.Svc * @anyvm @anyvm deny\n',
);
const dom = (type: string, uuid: string): object => ({
  tags: [], type, template_for_dispvms: false, default_dispvm: null, icon: 'x', label: 'red', guivm: null,
  relayvm: null, transport_rpc: null, internal: null, power_state: 'Running', uuid,
});
fs.writeFileSync(
  path.join(dir, 'system-info.json'),
  JSON.stringify({ domains: { dom0: dom('AdminVM', '00000000-0000-0000-0000-000000000000'), work: dom('AppVM', '11111111-1111-4111-8111-111111111111'), vault: dom('AppVM', VAULT_UUID) } }),
);
const clientLog = path.join(dir, 'client.log');
const fakeClient = path.join(dir, 'qrexec-client');
const clientEnvLog = path.join(dir, 'client-env.log');
fs.writeFileSync(fakeClient, `#!/bin/sh\nfor a in "$@"; do printf '%s\\n' "$a"; done > ${clientLog}\nprintf '%s' "$QREXEC_QUBESD_SOCKET" > ${clientEnvLog}\nexit 7\n`, { mode: 0o755 });

const qubesdRequests: string[] = [];
const qubesdSock = path.join(dir, 'qubesd.sock');
const qubesd = net.createServer({ allowHalfOpen: true }, (s) => {
  const chunks: Buffer[] = [];
  s.on('data', (d: Buffer) => chunks.push(d));
  s.on('end', () => {
    qubesdRequests.push(Buffer.concat(chunks).toString('latin1'));
    s.end(Buffer.from('0\0', 'latin1'));
  });
});
await new Promise<void>((r) => qubesd.listen(qubesdSock, r));
after(() => qubesd.close());

function exec(args: string[]): Promise<number | null> {
  return new Promise((resolve) => {
    const p = spawn(BIN('qrexec-policy-exec'), [
      '--path', path.join(dir, 'policy.d'), '--system-info', path.join(dir, 'system-info.json'),
      '--qubesd-admin-socket', qubesdSock, '--qrexec-client', fakeClient, ...args,
    ], { stdio: ['ignore', 'ignore', 'ignore'] });
    p.on('exit', (code) => resolve(code));
  });
}

test('allowed qube call: target started through qubesd, then qrexec-client with the reference arguments', async () => {
  fs.rmSync(clientLog, { force: true });
  qubesdRequests.length = 0;
  const code = await exec(['5', 'work', 'vault', 'test.Svc+arg', 'SOCKET42']);
  assert.equal(code, 7, 'the exit status of qrexec-client is passed on');
  assert.deepEqual(qubesdRequests, [`admin.vm.Start+ dom0 name uuid:${VAULT_UUID}\0`]);
  assert.deepEqual(fs.readFileSync(clientLog, 'utf8').split('\n').slice(0, -1), [
    '-Ed', `uuid:${VAULT_UUID}`, '-c', 'SOCKET42,work,5', '--', 'alice:QUBESRPC test.Svc+arg work',
  ]);
  // -k (DispVMs) in our qrexec-client goes to the same qubesd
  assert.equal(fs.readFileSync(clientEnvLog, 'utf8'), qubesdSock);
});

test('allowed call to dom0: no start, the target keyword in the command', async () => {
  fs.rmSync(clientLog, { force: true });
  qubesdRequests.length = 0;
  const code = await exec(['5', 'work', '@adminvm', 'test.Svc', 'SOCKET43']);
  assert.equal(code, 7);
  assert.deepEqual(qubesdRequests, []);
  assert.deepEqual(fs.readFileSync(clientLog, 'utf8').split('\n').slice(0, -1), [
    '-Ed', 'dom0', '-c', 'SOCKET43,work,5', '--', 'QUBESRPC test.Svc work keyword adminvm',
  ]);
});

test('denied call: exit status 1, nothing started, no qrexec-client', async () => {
  fs.rmSync(clientLog, { force: true });
  qubesdRequests.length = 0;
  const code = await exec(['5', 'vault', 'work', 'test.Svc', 'SOCKET44']);
  assert.equal(code, 1);
  assert.deepEqual(qubesdRequests, []);
  assert.equal(fs.existsSync(clientLog), false);
});
