/**
 * The Admin API from inside a qube, through qrexec under policy: a qube
 * started by bin/qubesd (process backend) calls `qrexec-client-vm dom0
 * admin.…`; its qrexec daemon asks the policy daemon, runs the dom0 socket
 * service RUN/qubes-rpc/admin.… (a symlink to qubesd.sock), and qubesd sees
 * the calling qube as the source — never a name the qube sends.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startQrexecSystem } from './qrexec-system.js';

test('admin.* from a qube through qrexec: policy decides, qubesd sees the calling qube as the source', { timeout: 90000 }, async () => {
  const sys = await startQrexecSystem(
    new Map([
      [
        '50-test.policy',
        'admin.vm.List      *  mgmt  @adminvm  allow target=dom0\n' +
          'admin.vm.List      *  mgmt  mgmt      allow target=dom0\n' +
          'admin.vm.tag.Set   *  mgmt  work      allow target=dom0\n' +
          'admin.vm.tag.List  *  mgmt  work      allow target=dom0\n' +
          'admin.vm.property.Get * mgmt @anyvm deny notify=no\n',
      ],
    ]),
  );
  try {
    for (const name of ['mgmt', 'work']) assert.equal(await sys.admin('admin.vm.Create.StandaloneVM', 'dom0', '', `name=${name} label=red`), '0\0');
    const env = await sys.enter('mgmt');
    const list = await sys.call(env, 'dom0', 'admin.vm.List');
    assert.equal(list.code, 0);
    assert.match(list.out.toString(), /^0\0dom0 class=AdminVM state=Running uuid=0{8}-/);
    assert.match(list.out.toString(), /\nmgmt class=StandaloneVM state=Running /);
    // the source is mgmt: a created-by- tag may be changed only by dom0, so this is refused by qubesd itself
    const tag = await sys.call(env, 'work', 'admin.vm.tag.Set+created-by-dom0');
    assert.equal(tag.out.toString(), '2\0PermissionDenied\0\0changing this tag is prohibited by qubes.ext.admin.AdminExtension\0');
    const tag2 = await sys.call(env, 'work', 'admin.vm.tag.Set+from-mgmt');
    assert.equal(tag2.out.toString(), '0\0');
    assert.match(await sys.admin('admin.vm.tag.List', 'work'), /\nfrom-mgmt\n/);
    // denied by policy: qrexec's 126, qubesd never asked
    const denied = await sys.call(env, 'work', 'admin.vm.property.Get+netvm');
    assert.equal(denied.code, 126);
    assert.equal(denied.out.length, 0);
    // the qube cannot pick its source: whatever it sends is payload, the header is the daemon's
    const spoof = await sys.call(env, 'work', 'admin.vm.tag.List', 'admin.vm.tag.Set+x dom0 name work\0');
    assert.equal(spoof.out.toString(), '2\0ProtocolError\0\0unexpected payload\0');
  } finally {
    await sys.close();
  }
});
