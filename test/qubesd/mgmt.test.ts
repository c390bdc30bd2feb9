/**
 * A management qube under the shipped admin policy (issue #10 §3): `mgmt`
 * may manage the qubes it creates (@tag:created-by-mgmt). From inside it,
 * through qrexec, our qvm-* tools see only dom0, itself and what it
 * created; another qube is hidden (`no such domain`), a property call the
 * policy refuses fails as with the reference's client (exit 1), a raw
 * qrexec call exits 126, and nothing a qube sends makes qubesd see another
 * source. The texts and exit codes are what the reference's Python tools
 * printed in the same set-up (qrexec mode).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { adminPolicyFiles } from '../../src/qubesd/index.js';
import { ROOT, run, startQrexecSystem } from './qrexec-system.js';

function policy(): Map<string, string> {
  const files = adminPolicyFiles();
  const add = (name: string, text: string): void => void files.set(name, (files.get(name) ?? '') + text);
  add('include/admin-global-ro', 'mgmt  @adminvm  allow target=dom0\nmgmt  mgmt  allow target=dom0\nmgmt  @tag:created-by-mgmt  allow target=dom0\n');
  add('include/admin-local-ro', 'mgmt  mgmt  allow target=dom0\n');
  add('include/admin-local-rwx', 'mgmt  @tag:created-by-mgmt  allow target=dom0\n');
  files.set('30-mgmt.policy', 'admin.vm.Create.AppVM  *  mgmt  @adminvm  allow target=dom0\nadmin.label.List  *  mgmt  @adminvm  allow target=dom0\n');
  return files;
}

test('a management qube sees and manages only the qubes it created', { timeout: 120000 }, async () => {
  const sys = await startQrexecSystem(policy());
  try {
    assert.equal(await sys.admin('admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black'), '0\0');
    for (const name of ['mgmt', 'work', 'vault']) assert.equal(await sys.admin('admin.vm.Create.AppVM', 'dom0', 'tpl', `name=${name} label=red`), '0\0');
    const env = await sys.enter('mgmt');
    const tool = (name: string, ...args: string[]): ReturnType<typeof run> => run(path.join(ROOT, 'bin', name), args, env);

    // create through qrexec: qubesd tags the new qube with its creator, the calling qube
    const created = await tool('qvm-create', '-t', 'tpl', '-l', 'green', 'child');
    assert.equal(created.code, 0, created.err + created.out.toString());
    assert.match(await sys.admin('admin.vm.tag.List', 'child'), /(^|\n|\0)created-by-mgmt\n/);

    // qvm-ls inside mgmt: dom0 (the policy lets it list @adminvm), itself and its own qube; nothing else
    const ls = await tool('qvm-ls', '--raw-list');
    assert.equal(ls.code, 0, ls.err);
    assert.deepEqual(ls.out.toString().split('\n').filter(Boolean).sort(), ['child', 'dom0', 'mgmt']);
    const table = await tool('qvm-ls');
    assert.equal(table.code, 0, table.err);
    assert.match(table.out.toString(), /^child +Halted +AppVM +green +tpl /m);
    assert.doesNotMatch(table.out.toString(), /work|vault/);
    // dom0 sees everything
    assert.match(await sys.admin('admin.vm.List'), /\nvault class=AppVM/);

    // prefs of its own qube: read and write
    const set = await tool('qvm-prefs', 'child', 'vcpus', '3');
    assert.equal(set.code, 0, set.err);
    const get = await tool('qvm-prefs', 'child', 'vcpus');
    assert.equal(get.out.toString(), '3\n');
    // another qube is not even visible, as with the reference's client
    const other = await tool('qvm-prefs', 'work', 'netvm');
    assert.equal(other.code, 2);
    assert.match(other.err, /no such domain: 'work'/);
    // mgmt may read but not change itself: refused by the policy; as the reference's client, exit 1
    const self = await tool('qvm-prefs', 'mgmt', 'vcpus', '4');
    assert.equal(self.code, 1, self.err);
    assert.equal(self.err, "qvm-prefs: error: Failed to access 'vcpus' property\n");
    // a refused GetAll (the default for qubes) is fallen back from silently
    assert.equal(table.err, '');
    assert.match(await sys.admin('admin.vm.property.Get', 'mgmt', 'vcpus'), /^0\0default=True type=int /);
    // a direct call to a hidden qube is refused by policy, before qubesd
    const raw = await sys.call(env, 'vault', 'admin.vm.property.Get+netvm');
    assert.equal(raw.code, 126);

    // whatever mgmt sends, qubesd sees mgmt: a forged request header in the payload is only payload,
    // and a Create on behalf of "dom0" still gets the created-by-mgmt tag
    const forged = await sys.call(env, 'dom0', 'admin.vm.Create.AppVM+tpl', 'name=forged label=red\0admin.vm.Create.AppVM+tpl dom0 name dom0\0');
    assert.notEqual(forged.out.toString(), '0\0');
    const second = await sys.call(env, 'dom0', 'admin.vm.Create.AppVM+tpl', 'name=second label=red');
    assert.equal(second.out.toString(), '0\0');
    assert.match(await sys.admin('admin.vm.tag.List', 'second'), /created-by-mgmt\n/);
    assert.doesNotMatch(await sys.admin('admin.vm.tag.List', 'second'), /created-by-dom0/);
  } finally {
    await sys.close();
  }
});
