/**
 * Qubes' filesystems in sandboxes (issue #11 §1): a running TemplateVM
 * writes its own root and its AppVMs see it after their next start; a
 * StandaloneVM has its own copy; a DispVM's private volume is a throw-away
 * overlay of its dispvm template's. Root only (CI).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SandboxWorld, SH_SERVICE, sandboxSkipReason } from './world.js';
import { ensureStandalone } from '../../src/runtime/sandbox/index.js';

const skip = sandboxSkipReason();
const opts = { skip: skip ?? false };
let w: SandboxWorld;

before(async () => {
  if (skip) return;
  w = await SandboxWorld.create([
    { name: 'work', domid: 1, uuid: '11111111-1111-4111-8111-111111111111' },
    { name: 'tpl', domid: 2, uuid: '22222222-2222-4222-8222-222222222222' },
    { name: 'sa', domid: 3, uuid: '33333333-3333-4333-8333-333333333333' },
    { name: 'dvm', domid: 4, uuid: '44444444-4444-4444-8444-444444444444' },
    { name: 'disp1', domid: 5, uuid: '55555555-5555-4555-8555-555555555555' },
  ]);
  w.templateService('test.Sh', SH_SERVICE);
  ensureStandalone(w.data, 'sa', 'tpl');
  await w.start('work');
  await w.start('tpl', { volumes: { klass: 'TemplateVM', name: 'tpl' } });
  await w.start('sa', { volumes: { klass: 'StandaloneVM', name: 'sa' } });
  await w.hostReady();
});

after(async () => {
  if (skip) return;
  await w?.close();
});

void test('a running TemplateVM writes its own root; its AppVMs see the change after their next start, the host never', opts, async () => {
  const s = await w.sh('tpl', 'echo from-tpl > /etc/tpl-change && echo from-tpl > /usr/share/tpl-change && echo from-tpl > /opt/tpl-file && echo ok\n', 'root');
  assert.equal(s.out, 'ok\n', s.err);
  assert.ok(!fs.existsSync('/etc/tpl-change') && !fs.existsSync('/usr/share/tpl-change'), 'host untouched');
  assert.equal((await w.sh('work', 'cat /etc/tpl-change /opt/tpl-file 2>&1 | grep -c "No such"\n')).out, '2\n', 'not while running');
  await w.stop('work');
  await w.start('work');
  assert.equal((await w.sh('work', 'cat /etc/tpl-change /opt/tpl-file 2>&1 | grep -c "No such"\n')).out, '2\n', 'not while the template runs');
  await w.stop('tpl');
  assert.equal((await w.sh('work', 'cat /etc/tpl-change 2>&1 | grep -c "No such"\n')).out, '1\n', 'not before its own restart');
  await w.stop('work');
  await w.start('work');
  assert.equal((await w.sh('work', 'cat /etc/tpl-change /usr/share/tpl-change /opt/tpl-file\n')).out, 'from-tpl\nfrom-tpl\nfrom-tpl\n');
  // an AppVM cannot write into the template
  await w.sh('work', 'echo appvm > /etc/tpl-change\n', 'root');
  assert.equal(fs.readFileSync(path.join(w.data, 'qubes', 'tpl', 'layers', '0002', 'etc', 'tpl-change'), 'utf8'), 'from-tpl\n');
  // the template's writes survive its own restart
  await w.start('tpl', { volumes: { klass: 'TemplateVM', name: 'tpl' } });
  assert.equal((await w.sh('tpl', 'cat /etc/tpl-change\n')).out, 'from-tpl\n');
});

void test('a StandaloneVM has its own copy: it misses later template changes and keeps its own root writes', opts, async () => {
  await w.sh('tpl', 'echo later > /etc/tpl-later\n', 'root');
  await w.stop('sa');
  await w.start('sa', { volumes: { klass: 'StandaloneVM', name: 'sa' } });
  assert.match((await w.sh('sa', 'cat /etc/tpl-later 2>&1\n')).out, /No such file/);
  assert.equal((await w.sh('sa', 'echo mine > /etc/sa-own && echo ok\n', 'root')).out, 'ok\n');
  await w.stop('sa');
  await w.start('sa', { volumes: { klass: 'StandaloneVM', name: 'sa' } });
  assert.equal((await w.sh('sa', 'cat /etc/sa-own\n')).out, 'mine\n');
  assert.match((await w.sh('tpl', 'cat /etc/sa-own 2>&1\n')).out, /No such file/);
});

void test("a DispVM starts from its dispvm template's private volume, and everything it writes is gone when it stops", opts, async () => {
  await w.start('dvm');
  assert.equal((await w.sh('dvm', 'echo dvm-data > /home/user/dvm-file && echo ok\n')).out, 'ok\n');
  await w.stop('dvm');
  const disp = { volumes: { klass: 'DispVM' as const, name: 'disp1', template: 'tpl', dispvmTemplate: 'dvm' } };
  await w.start('disp1', disp);
  const s = await w.sh('disp1', 'cat /home/user/dvm-file; echo changed > /home/user/dvm-file; echo new > /home/user/new; echo root > /etc/disp-root; cat /home/user/dvm-file\n');
  assert.equal(s.out, 'dvm-data\nchanged\n', s.err);
  await w.stop('disp1');
  assert.equal(fs.readFileSync(path.join(w.privateOf('dvm'), 'home', 'user', 'dvm-file'), 'utf8'), 'dvm-data\n', "the dispvm template's volume is untouched");
  assert.ok(!fs.existsSync(path.join(w.privateOf('dvm'), 'home', 'user', 'new')));
  assert.ok(!fs.existsSync(w.privateOf('disp1')), 'a DispVM has no volume of its own on disk');
  await w.start('disp1', disp);
  assert.equal((await w.sh('disp1', 'cat /home/user/dvm-file; ls /home/user/new /etc/disp-root 2>&1 | grep -c "No such"\n')).out, 'dvm-data\n2\n');
});
