/**
 * Policy-based filtering (qubes/ext/admin.py): a qube's admin.vm.List shows
 * only the qubes the policy allows it to list (ask and deny hide), and its
 * admin.Events stream carries only the events the policy allows it to see.
 * dom0 is never filtered. The local socket trusts `src`, so these tests
 * write the caller's name the way dom0's qrexec daemon does.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { Policy, loadRules, memorySource } from '../../src/policy/index.js';
import { call, startTestQubesd, type TestQubesd } from './helpers.js';

function policyOf(text: string): Policy {
  return new Policy(loadRules(memorySource(new Map([['/p/50-admin.policy', text], ['/l/.keep', '']])), { policyDirs: ['/p'], legacyDir: '/l' }));
}

const RULES = `
admin.vm.List  *  mgmt  @adminvm              allow target=dom0
admin.vm.List  *  mgmt  mgmt                  allow target=dom0
admin.vm.List  *  mgmt  @tag:created-by-mgmt  allow target=dom0
admin.vm.List  *  mgmt  asked                 ask
admin.vm.List  *  mgmt  denied                deny
admin.Events   *  mgmt  @tag:created-by-mgmt  allow target=dom0
admin.Events   +domain-add  mgmt  @adminvm    allow target=dom0
admin.Events   +property-set_default_qrexec_timeout  mgmt  @adminvm  allow target=dom0
`;

let t: TestQubesd;
let current: Policy | null = policyOf(RULES);

before(async () => {
  t = await startTestQubesd({ policy: () => current });
  assert.equal(await call(t, 'admin.vm.Create.TemplateVM', 'dom0', '', 'name=debian-12 label=black'), '0\0');
  for (const name of ['mgmt', 'mine', 'other', 'asked', 'denied']) {
    assert.equal(await call(t, 'admin.vm.Create.AppVM', 'dom0', 'debian-12', `name=${name} label=red`), '0\0');
  }
  // dom0 may set a created-by- tag (qubes set theirs by creating through the API)
  assert.equal(await call(t, 'admin.vm.tag.Set', 'mine', 'created-by-mgmt'), '0\0');
});
after(async () => {
  await t.close();
});

const names = (reply: string): string[] => {
  assert.ok(reply.startsWith('0\0'), reply);
  return reply
    .slice(2)
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(' ')[0] as string);
};

test('admin.vm.List from a qube: only what the policy allows (ask and deny hide)', async () => {
  assert.deepEqual(names(await call(t, 'admin.vm.List', 'dom0', '', '', 'mgmt')).sort(), ['dom0', 'mgmt', 'mine']);
  // dom0 sees everything
  assert.deepEqual(names(await call(t, 'admin.vm.List')).sort(), ['asked', 'debian-12', 'denied', 'dom0', 'mgmt', 'mine', 'other']);
  // a qube with no rule sees nothing
  assert.deepEqual(names(await call(t, 'admin.vm.List', 'dom0', '', '', 'other')), []);
  // destination one qube: itself or nothing
  assert.deepEqual(names(await call(t, 'admin.vm.List', 'mine', '', '', 'mgmt')), ['mine']);
  assert.deepEqual(names(await call(t, 'admin.vm.List', 'other', '', '', 'mgmt')), []);
});

test('a qube created by mgmt through the API is listed at once; a policy change takes effect on the next call', async () => {
  assert.equal(await call(t, 'admin.vm.Create.AppVM', 'dom0', 'debian-12', 'name=made label=blue', 'mgmt'), '0\0');
  assert.ok(names(await call(t, 'admin.vm.List', 'dom0', '', '', 'mgmt')).includes('made'));
  current = policyOf(RULES.replace('mgmt  @tag:created-by-mgmt  allow', 'mgmt  @tag:created-by-mgmt  ask'));
  try {
    assert.deepEqual(names(await call(t, 'admin.vm.List', 'dom0', '', '', 'mgmt')).sort(), ['dom0', 'mgmt']);
    // a policy that failed to load hides everything
    current = null;
    assert.deepEqual(names(await call(t, 'admin.vm.List', 'dom0', '', '', 'mgmt')), []);
    assert.equal(names(await call(t, 'admin.vm.List')).length, 8);
  } finally {
    current = policyOf(RULES);
    assert.equal(await call(t, 'admin.vm.Remove', 'made'), '0\0');
  }
});

/** Subscribe to admin.Events as `src`; returns the frames seen so far and a stop function. */
async function subscribe(src: string): Promise<{ frames: () => string; stop: () => void }> {
  const s = net.connect({ path: t.sock, allowHalfOpen: true });
  let got = '';
  s.on('data', (c: Buffer) => (got += c.toString('latin1')));
  s.write(`admin.Events+ ${src} name dom0\0`);
  s.end();
  for (let i = 0; i < 400 && !got.includes('connection-established'); i++) await new Promise((r) => setTimeout(r, 5));
  assert.equal(got, '1\0\0connection-established\0\0');
  return { frames: () => got, stop: () => s.destroy() };
}

test('admin.Events from a qube: only the events about qubes the policy allows, per event', async () => {
  const m = await subscribe('mgmt');
  const d = await subscribe('dom0');
  try {
    assert.equal(await call(t, 'admin.vm.property.Set', 'other', 'vcpus', '3'), '0\0');
    assert.equal(await call(t, 'admin.vm.property.Set', 'mine', 'vcpus', '4'), '0\0');
    // an app-level event is evaluated against its `vm` argument when it has one (domain-add: the new qube),
    // else against @adminvm (a global property)
    assert.equal(await call(t, 'admin.vm.Create.AppVM', 'dom0', 'debian-12', 'name=later label=green'), '0\0');
    assert.equal(await call(t, 'admin.property.Set', 'dom0', 'default_qrexec_timeout', '33'), '0\0');
    assert.equal(await call(t, 'admin.property.Set', 'dom0', 'default_shutdown_timeout', '44'), '0\0');
    for (let i = 0; i < 400 && !d.frames().includes('property-set:default_shutdown_timeout'); i++) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, 50));
    const seen = m.frames();
    assert.ok(seen.includes('1\0mine\0property-set:vcpus\0'), seen);
    assert.ok(seen.includes('1\0mine\0property-pre-set:vcpus\0'), seen);
    assert.ok(!seen.includes('\0other\0'), seen);
    // domain-add (vm=later): later has no created-by-mgmt tag, so hidden although +domain-add to @adminvm is allowed
    assert.ok(!seen.includes('domain-add'), seen);
    assert.ok(seen.includes('1\0\0property-set:default_qrexec_timeout\0'), seen);
    assert.ok(!seen.includes('default_shutdown_timeout'), seen);
    // dom0 saw all of it
    assert.ok(d.frames().includes('1\0other\0property-set:vcpus\0'));
    assert.ok(d.frames().includes('domain-add'));
  } finally {
    m.stop();
    d.stop();
    assert.equal(await call(t, 'admin.vm.Remove', 'later'), '0\0');
    assert.equal(await call(t, 'admin.property.Reset', 'dom0', 'default_qrexec_timeout'), '0\0');
    assert.equal(await call(t, 'admin.property.Reset', 'dom0', 'default_shutdown_timeout'), '0\0');
  }
});
