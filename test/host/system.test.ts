/**
 * The host process put together in this process (src/host/system.ts), with
 * the process backend: the policy daemon gets system info from qubesd, and a
 * qrexec daemon's autostart and @dispvm calls reach qubesd, without any
 * socket: qubesd's three sockets are removed before the calls.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BIN, run } from '../e2e/harness.js';
import { startSystem } from '../../src/host/system.js';
import { silentLogger } from '../../src/policyd/index.js';

void test('in one process: a qube created after the start is in system info, autostart and @dispvm go to qubesd in-process', { timeout: 120_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qhs-'));
  const data = path.join(dir, 'data');
  const sys = await startSystem({ dataDir: data, runDir: path.join(dir, 'run'), runtime: 'process', log: silentLogger, ...(process.env['E2E_DEBUG'] ? { debug: true } : {}) });
  try {
    const call = async (method: string, dest: string, arg = '', payload = ''): Promise<string> => (await sys.call(method, dest, { arg, payload: Buffer.from(payload) })).toString();
    await call('admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black');
    await call('admin.property.Set', 'dom0', 'default_template', 'tpl');
    for (const n of ['a', 'b', 'dvm']) await call('admin.vm.Create.AppVM', 'dom0', '', `name=${n} label=red`);
    await call('admin.vm.property.Set', 'dvm', 'template_for_dispvms', 'True');
    fs.writeFileSync(path.join(sys.info.policyDir, '30-test.policy'), 'qubes.VMExec +cat a b allow\nqubes.VMExec +cat a @dispvm:dvm allow\n* * @anyvm @anyvm deny\n');
    sys.policyDaemon.store.reload();
    // no socket from here on
    for (const s of ['qubesd.sock', 'qubesd.internal.sock', 'qubesd.misc.sock']) fs.rmSync(path.join(sys.info.runDir, s));
    await call('admin.vm.Start', 'a');
    const a = sys.qubesd.registry.byName('a');
    assert.equal(a?.power, 'Running');
    assert.ok(sys.daemon('a'), 'a has its qrexec daemon in this process');
    const env = { ...process.env, VCHAN_SOCKET_DIR: sys.info.vchanDir, VCHAN_DOMAIN: String(a?.domid) };
    const agent = `--agent-socket=${path.join(data, 'qubes', 'a', 'agent.sock')}`;
    // b is Halted: the policy's autostart starts it through qubesd in this process
    const r = await run(BIN('qrexec-client-vm'), [agent, 'b', 'qubes.VMExec+cat'], env, 'to b\n');
    const pidFile = path.join(data, 'qubes', 'a', 'agent.pid');
    const why = (): string => `${r.stderr}; a is ${a?.power}, agent.pid ${fs.existsSync(pidFile) ? fs.readFileSync(pidFile, 'utf8').split('\n')[0] : 'gone'}, b is ${sys.qubesd.registry.byName('b')?.power}`;
    assert.equal(r.stdout.toString(), 'to b\n', why());
    assert.equal(r.code, 0);
    assert.equal(sys.qubesd.registry.byName('b')?.power, 'Running');
    // a disposable: created, started, called and killed through qubesd in this process
    const d = await run(BIN('qrexec-client-vm'), [agent, '@dispvm:dvm', 'qubes.VMExec+cat'], env, 'to a dispvm\n');
    assert.equal(d.stdout.toString(), 'to a dispvm\n', d.stderr);
    for (let i = 0; i < 200 && sys.qubesd.registry.list().some((q) => q.klass === 'DispVM'); i++) await new Promise((res) => setTimeout(res, 25));
    assert.deepEqual(sys.qubesd.registry.list().filter((q) => q.klass === 'DispVM').map((q) => q.name), [], 'the DispVM was removed after the call');
  } finally {
    await sys.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  assert.equal(sys.qubesd.lifecycle.runningCount, 0);
});
