// The Policy API served by bin/qrexec-host: from qubes through qrexec (policy.* routed
// by include/admin-policy-ro and -rwx) with bin/qubes-policy and qrexec-client-vm, from
// dom0 through the policy API socket; changes are audited and decided by at once;
// a breaking change leaves the policy in force.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdir, writeFile, access, copyFile, readFile } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { World, BIN, ROOT, waitFor, run } from '../e2e/harness.js';
import { qubeCall } from '../e2e/caller.js';

let w: World;
let policyDir: string;
const uuid = (id: number): string => `00000000-0000-0000-0000-0000000000${String(id).padStart(2, '0')}`;

before(async () => {
  w = await World.create();
  policyDir = join(w.dir, 'policy.d');
  await mkdir(join(policyDir, 'include'), { recursive: true });
  await copyFile(join(ROOT, 'examples/policy.d/90-admin-policy-default.policy'), join(policyDir, '90-admin-policy-default.policy'));
  await writeFile(join(policyDir, 'include/admin-policy-rwx'), 'mgmt @adminvm allow target=dom0\n');
  await writeFile(join(policyDir, 'include/admin-policy-ro'), '!include include/admin-policy-rwx\nwork @adminvm allow target=dom0\n');
  await writeFile(join(policyDir, '30-test.policy'), 'test.Echo * work mgmt allow\n');
  const dom = (type: string, u: string): object => ({ tags: [], type, template_for_dispvms: false, default_dispvm: null, icon: 'x', label: 'red', guivm: null, relayvm: null, transport_rpc: null, internal: null, power_state: 'Running', uuid: u });
  await writeFile(join(w.dir, 'system-info.json'), JSON.stringify({ domains: { dom0: dom('AdminVM', uuid(0)), mgmt: dom('AppVM', uuid(1)), work: dom('AppVM', uuid(2)), other: dom('AppVM', uuid(3)) } }));
  await w.service('mgmt', 'test.Echo', '#!/bin/sh\necho echo\n');
  await w.agent(1, 'mgmt');
  await w.agent(2, 'work');
  await w.agent(3, 'other');
  w.start(
    BIN('qrexec-host'),
    [
      '--policy-path', policyDir, '--socket-path', join(w.dir, 'policy.sock'), '--system-info', join(w.dir, 'system-info.json'),
      '--eval-socket-path', 'none', '--gui-socket-path', 'none', '--qubesd-events-socket', 'none', '--audit-db', join(w.dir, 'audit.sqlite'),
      '--policy-api-socket', join(w.dir, 'policy-admin.sock'),
      `--qrexec-socket-dir=${w.sockDir}`, `--qube=1:mgmt:${uuid(1)}:root`, `--qube=2:work:${uuid(2)}:root`, `--qube=3:other:${uuid(3)}:root`,
    ],
    w.env({ VCHAN_DOMAIN: '0' }),
  );
  for (const name of ['mgmt', 'work', 'other']) {
    await waitFor(() => access(join(w.sockDir, `qrexec.${name}`)).then(() => true, () => false), 15000, `qrexec.${name}`);
  }
  await waitFor(() => access(join(w.dir, 'policy-admin.sock')).then(() => true, () => false), 15000, 'policy API socket');
});
after(async () => {
  await w.close();
});

/** bin/qubes-policy (or another command) run in qube `name` (domid) through qrexec-client-vm. */
const inQube = (domid: number, name: string, cmd: string, args: string[], input = ''): ReturnType<typeof run> =>
  run(BIN(cmd), args, { ...w.env({ VCHAN_DOMAIN: String(domid) }), QREXEC_CLIENT_VM: `${BIN('qrexec-client-vm')} --agent-socket=${join(w.dir, `agent-${name}.sock`)}`, QUBES_POLICY_API_SOCKET: '' }, input);
const inDom0 = (cmd: string, args: string[], input = ''): ReturnType<typeof run> => run(BIN(cmd), args, { ...process.env, QUBES_POLICY_API_SOCKET: join(w.dir, 'policy-admin.sock') }, input);

void test('a qube with admin-policy-rwx lists, gets, replaces and removes through qrexec', async () => {
  let r = await inQube(1, 'mgmt', 'qubes-policy', ['-l']);
  assert.equal(r.stderr, '');
  assert.equal(r.stdout.toString(), '30-test\n90-admin-policy-default\n');
  r = await inQube(1, 'mgmt', 'qubes-policy', ['-r', '40-new'], 'test.New * work mgmt allow\n');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(await readFile(join(policyDir, '40-new.policy'), 'utf8'), 'test.New * work mgmt allow\n');
  r = await inQube(1, 'mgmt', 'qubes-policy', ['-g', '40-new']);
  assert.equal(r.stdout.toString(), 'test.New * work mgmt allow\n');
  r = await inQube(1, 'mgmt', 'qubes-policy', ['-l', 'include/']);
  assert.equal(r.stdout.toString(), 'admin-policy-ro\nadmin-policy-rwx\n');
  r = await inQube(1, 'mgmt', 'qubes-policy', ['-d', '40-new']);
  assert.equal(r.code, 0, r.stderr);
  r = await inQube(1, 'mgmt', 'qubes-policy', ['-g', '40-new']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^Not found: .*40-new\.policy\n$/);
});

void test('a qube with admin-policy-ro reads but cannot change anything; a qube with neither cannot read', async () => {
  const r = await inQube(2, 'work', 'qubes-policy', ['-g', '30-test']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.toString(), 'test.Echo * work mgmt allow\n');
  for (const args of [['-r', '30-test'], ['-r', 'include/admin-policy-rwx'], ['-d', '30-test'], ['-r', '99-mine']]) {
    const x = await inQube(2, 'work', 'qubes-policy', args, 'work @adminvm allow target=dom0\n');
    assert.notEqual(x.code, 0, `work ${args.join(' ')}`);
  }
  for (const args of [['-g', '30-test'], ['-l'], ['-r', '99-mine']]) {
    const x = await inQube(3, 'other', 'qubes-policy', args, '* * @anyvm @anyvm allow\n');
    assert.notEqual(x.code, 0, `other ${args.join(' ')}`);
  }
  assert.equal(await readFile(join(policyDir, '30-test.policy'), 'utf8'), 'test.Echo * work mgmt allow\n');
  assert.equal(await readFile(join(policyDir, 'include/admin-policy-rwx'), 'utf8'), 'mgmt @adminvm allow target=dom0\n');
  await assert.rejects(access(join(policyDir, '99-mine.policy')));
});

void test('errors travel to the qube: class name mapped back by the client', async () => {
  const r = await inQube(1, 'mgmt', 'qubes-policy', ['-r', '30-test'], 'broken\n');
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^Policy change validation failed: .*30-test\.policy:1: wrong number of fields\n$/);
});

void test('a breaking change is refused and calls keep being decided by the old policy', async () => {
  const call = (): ReturnType<typeof qubeCall> => qubeCall(join(w.dir, 'agent-work.sock'), w.dir, 2, 'mgmt', 'test.Echo');
  assert.equal((await call()).stdout.toString(), 'echo\n');
  const r = await inDom0('qubes-policy', ['-r', '30-test'], 'test.Echo * work mgmt allow\n!include include/nothing\n');
  assert.equal(r.code, 1);
  await new Promise((res) => setTimeout(res, 200));
  assert.equal((await call()).stdout.toString(), 'echo\n');
  // an accepted change is decided by at once (no wait for the file watch)
  assert.equal((await inDom0('qubes-policy', ['-r', '30-test'], 'test.Echo * work mgmt deny\n')).code, 0);
  assert.ok((await call()).refused);
  assert.equal((await inDom0('qubes-policy', ['-r', '30-test'], 'test.Echo * work mgmt allow\n')).code, 0);
  assert.equal((await call()).stdout.toString(), 'echo\n');
});

void test('dom0: the socket serves every method; changes are in the audit log with who and tokens', async () => {
  const r = await inDom0('qubes-policy', ['-g', 'include/admin-policy-rwx']);
  assert.equal(r.stdout.toString(), 'mgmt @adminvm allow target=dom0\n');
  assert.equal((await inDom0('qubes-policy', ['-r', 'include/extra'], 'work vault allow\n')).code, 0);
  assert.equal((await inDom0('qubes-policy', ['-d', 'include/extra'])).code, 0);
  await waitFor(async () => {
    const a = spawnSync(BIN('qrexec-audit'), ['--db', join(w.dir, 'audit.sqlite'), '--json'], { encoding: 'utf8' });
    const rows = a.stdout.split('\n').filter((l) => l).map((l) => JSON.parse(l) as { mode: string; client: string; service: string; reason: string | null });
    return rows.some((x) => x.mode === 'policy_admin' && x.client === 'dom0' && x.service === 'policy.include.Remove' && /new=removed/.test(x.reason ?? '')) &&
      rows.some((x) => x.mode === 'policy_admin' && x.client === 'mgmt' && x.service === 'policy.Replace');
  }, 10000, 'audit records of the changes');
});

void test('usage errors exit 2', async () => {
  assert.equal((await inDom0('qubes-policy', ['-g'])).code, 2);
  assert.equal((await inDom0('qubes-policy', ['-l', 'x'])).code, 2);
  assert.equal((await inDom0('qubes-policy', ['-g', 'a/b'])).code, 2);
  const h = await inDom0('qubes-policy', ['--help']);
  assert.equal(h.code, 0);
  assert.match(h.stdout.toString(), /usage: qubes-policy/);
});

const sha = (s: string): string => 'sha256:' + createHash('sha256').update(s).digest('hex');

void test('ours: --eval from a qube, --diff changes nothing, --log / --show / --restore', async () => {
  const e = await inQube(2, 'work', 'qubes-policy', ['--eval', 'test.Echo', 'work', 'mgmt']);
  assert.equal(e.code, 0, e.stderr);
  const x = JSON.parse(e.stdout.toString()) as { request: { source: string }; decision: { result: string } };
  assert.equal(x.request.source, 'work');
  assert.match(e.stdout.toString(), /30-test\.policy/);
  assert.match(e.stdout.toString(), /"result": "allow"/);
  const before = await readFile(join(policyDir, '30-test.policy'), 'utf8');
  const d = await inQube(1, 'mgmt', 'qubes-policy', ['-r', '30-test', '--diff'], 'test.Echo * work mgmt deny\ntest.Other * mgmt work allow\n');
  assert.equal(d.code, 0, d.stderr);
  const out = d.stdout.toString();
  // a `*` argument rule: the call without argument (+) and with any argument (*) both change
  assert.equal(
    out,
    'test.Echo *: 1 decision changes\n  work -> mgmt: allow target=mgmt => deny\n' +
      'test.Echo +: 1 decision changes\n  work -> mgmt: allow target=mgmt => deny\n' +
      'test.Other *: 1 decision changes\n  mgmt -> work: deny => allow target=work\n' +
      'test.Other +: 1 decision changes\n  mgmt -> work: deny => allow target=work\n' +
      '4 decisions change\n',
  );
  assert.equal(await readFile(join(policyDir, '30-test.policy'), 'utf8'), before);
  // the breaking-change test replaced 30-test from dom0 with a deny version, then back
  const log = await inQube(2, 'work', 'qubes-policy', ['--log', '30-test']);
  assert.equal(log.code, 0, log.stderr);
  const deny = 'test.Echo * work mgmt deny\n';
  assert.match(log.stdout.toString(), new RegExp(`^\\S+Z dom0 policy.Replace ${sha(before)} -> ${sha(deny)}$`, 'm'));
  const show = await inQube(2, 'work', 'qubes-policy', ['--show', sha(deny)]);
  assert.equal(show.stdout.toString(), deny);
  assert.notEqual((await inQube(2, 'work', 'qubes-policy', ['--restore', sha(deny), '30-test'])).code, 0, 'restore needs admin-policy-rwx');
  assert.equal((await inQube(1, 'mgmt', 'qubes-policy', ['--restore', sha(deny), '30-test'])).code, 0);
  assert.equal(await readFile(join(policyDir, '30-test.policy'), 'utf8'), deny);
  assert.equal((await inDom0('qubes-policy', ['--restore', sha(before), '30-test'])).code, 0);
  assert.equal(await readFile(join(policyDir, '30-test.policy'), 'utf8'), before);
  const missing = await inDom0('qubes-policy', ['--show', sha('never')]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /^No such version: sha256:/);
});
