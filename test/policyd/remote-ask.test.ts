/**
 * qubes-issues #10913: an `ask` whose source is a RemoteVM (a call relayed
 * by its relay qube, requested_source=REMOTEVM) goes to the GUI domain of
 * that relay, a qube of this host: not to whatever guivm the RemoteVM
 * carries, and not refused for want of one. bin/qrexec-policy-daemon as a
 * process, two fake policy agents.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FakeAgent, req, systemInfo, writeFixture } from './fixture.js';
import { exchange, spawnDaemon, tmpDir, type DaemonProcess } from './helpers.js';

const remote = (name: string, guivm: string | null, uuid: string): Record<string, unknown> => ({
  [name]: {
    tags: [], type: 'RemoteVM', template_for_dispvms: false, default_dispvm: null, icon: 'remotevm-red', label: 'red',
    guivm, relayvm: 'relay', transport_rpc: 'qubesair.SSHProxy', internal: null, power_state: 'Running', uuid,
  },
});

describe('qrexec-policy-daemon: ask for a relayed RemoteVM source (#10913)', () => {
  let dir: string;
  let d: DaemonProcess;
  let dom0Gui: FakeAgent;
  let relayGui: FakeAgent;

  before(async () => {
    dir = tmpDir();
    const fx = writeFixture(dir);
    const info = systemInfo({
      'sys-gui-b': { ...(systemInfo() as { domains: Record<string, Record<string, unknown>> }).domains['sys-gui'], uuid: '66666666-6666-6666-6666-666666666666' },
      relay: { ...(systemInfo() as { domains: Record<string, Record<string, unknown>> }).domains['personal'], guivm: 'sys-gui-b', uuid: '77777777-7777-7777-7777-777777777777' },
      ...remote('work-a', 'dom0', '88888888-8888-8888-8888-888888888888'),
      ...remote('bare-a', null, '99999999-9999-9999-9999-999999999999'),
    });
    fs.writeFileSync(fx.infoFile, JSON.stringify(info));
    fs.writeFileSync(path.join(fx.policyDir, '10-remote.policy'), 'test.RemoteAsk * work-a @default ask default_target=vault\ntest.RemoteAsk * work-a vault ask\ntest.RemoteAsk * bare-a @default ask default_target=vault\ntest.RemoteAsk * bare-a vault ask\ntest.RemoteAsk * @anyvm @anyvm deny\n');
    dom0Gui = new FakeAgent(path.join(dir, 'dom0.sock'));
    relayGui = new FakeAgent(path.join(dir, 'relay-gui.sock'));
    await Promise.all([dom0Gui.listen(), relayGui.listen()]);
    d = await spawnDaemon(dir, ['--policy-path', fx.policyDir, '--system-info', fx.infoFile, '--agent-socket', `dom0=${dom0Gui.socketPath}`, '--agent-socket', `sys-gui-b=${relayGui.socketPath}`, '--ask-timeout', '5', '--audit-db', path.join(dir, 'audit.sqlite')]);
  });

  after(async () => {
    await d?.stop();
    await Promise.all([dom0Gui?.close(), relayGui?.close()]);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  for (const [src, own] of [['work-a', 'a guivm of its own (dom0)'], ['bare-a', 'no guivm']] as const) {
    test(`a RemoteVM with ${own}: the ask goes to its relay's GUI domain, and its answer decides`, async () => {
      relayGui.answer = () => 'allow:vault';
      dom0Gui.answer = () => 'deny';
      const n = relayGui.calls.length;
      const m = dom0Gui.calls.filter((c) => c.service === 'policy.Ask').length;
      const r = await exchange(d.socket, req('relay', '@default', 'test.RemoteAsk+x', `requested_source=${src}\n`));
      assert.match(r, /^user=DEFAULT\nresult=allow\ntarget=vault\n/, d.log().slice(-1500));
      const call = relayGui.calls.slice(n).find((c) => c.service === 'policy.Ask');
      assert.ok(call, 'no policy.Ask in the relay\'s GUI domain');
      assert.equal(call.params['source'], src);
      assert.equal(call.params['default_target'], 'vault');
      assert.equal(dom0Gui.calls.filter((c) => c.service === 'policy.Ask').length, m, 'the ask went to dom0');
      relayGui.answer = () => 'deny';
      assert.equal(await exchange(d.socket, req('relay', '@default', 'test.RemoteAsk+x', `requested_source=${src}\n`)), 'result=deny');
    });
  }

  test('a call by a qube that is not the RemoteVM\'s relay: refused, no ask anywhere', async () => {
    const asks = (): number => [...relayGui.calls, ...dom0Gui.calls].filter((c) => c.service === 'policy.Ask').length;
    const n = asks();
    assert.equal(await exchange(d.socket, req('personal', '@default', 'test.RemoteAsk+x', 'requested_source=work-a\n')), 'result=deny');
    assert.equal(asks(), n);
  });
});
