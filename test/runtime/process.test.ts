/**
 * The process backend through the Admin API: a started qube is Running only
 * once its agent connected; Pause freezes its processes; Shutdown+wait waits
 * for them to end; Kill ends them at once; kill -9 of qubesd leaves no agent
 * and no qrexec daemon running after the next start, and the qube is Halted.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ProcessRuntime } from '../../src/runtime/index.js';
import { ok, raw, req, startTestQubesd } from '../qubesd/helpers.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

function agentPid(stateDir: string, name: string): number {
  return Number(fs.readFileSync(path.join(stateDir, name, 'agent.pid'), 'utf8').split('\n')[0]);
}
/** Wait (briefly) until the process is in / out of the stopped state: signals are delivered asynchronously. */
async function waitStopped(pid: number, stopped: boolean): Promise<string | null> {
  let st = procState(pid);
  for (let i = 0; i < 100 && (st === 'T') !== stopped; i++) {
    await new Promise((r) => setTimeout(r, 10));
    st = procState(pid);
  }
  return st;
}
/** Live (not zombie) qrexec-daemon processes serving `socketDir`. */
function daemonPids(socketDir: string): number[] {
  const out: number[] = [];
  for (const n of fs.readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    let argv: string[];
    try {
      argv = fs.readFileSync(`/proc/${n}/cmdline`, 'latin1').split('\0');
    } catch {
      continue;
    }
    const st = procState(Number(n));
    if (argv[1]?.endsWith('/bin/qrexec-daemon') && argv.includes(`--socket-dir=${socketDir}`) && st !== null && st !== 'Z') out.push(Number(n));
  }
  return out;
}
function procState(pid: number): string | null {
  try {
    return fs.readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '')[0] ?? null;
  } catch {
    return null;
  }
}

test('start, pause, unpause, shutdown --wait, start, kill: states and processes', { timeout: 60000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qubesd-rt-'));
  const stateDir = path.join(dir, 'state');
  const runtime = new ProcessRuntime({ stateDir, vchanDir: path.join(dir, 'vchan'), socketDir: path.join(dir, 'qrexec'), logFd: 'ignore' });
  const t = await startTestQubesd({ runtime });
  try {
    await ok(t, 'admin.vm.Create.StandaloneVM', 'dom0', '', 'name=work label=red');
    const events: string[] = [];
    t.qd.registry.on((s, e) => {
      if (s?.name === 'work' && e.startsWith('domain-')) events.push(`${e}:${s.power}`);
    });
    assert.equal(await ok(t, 'admin.vm.Start', 'work'), '');
    assert.match(await ok(t, 'admin.vm.CurrentState', 'work'), /power_state=Running$/);
    // Running was reached only after domain-spawn (Transient) and the agent's connection
    assert.deepEqual(events, ['domain-pre-start:Halted', 'domain-spawn:Transient', 'domain-start:Running']);
    const pid = agentPid(stateDir, 'work');
    assert.notEqual(procState(pid), null);
    assert.ok(fs.existsSync(path.join(dir, 'qrexec', 'qrexec.work')), 'the qube has its qrexec socket');
    assert.equal(await ok(t, 'admin.vm.Start', 'work'), '', 'starting a running qube is no error');
    await ok(t, 'admin.vm.Pause', 'work');
    assert.equal(await waitStopped(pid, true), 'T');
    assert.equal((await raw(t.sock, req('admin.vm.Pause', 'work'))).data.toString(), "2\0QubesVMNotRunningError\0\0Domain not running (either powered off or paused): 'work'\0");
    assert.equal((await raw(t.sock, req('admin.vm.Shutdown', 'work'))).data.toString(), "2\0QubesVMNotRunningError\0\0Domain not running (either powered off or paused): 'work'\0");
    await ok(t, 'admin.vm.Unpause', 'work');
    assert.notEqual(await waitStopped(pid, false), 'T');
    await ok(t, 'admin.vm.Shutdown', 'work', 'wait');
    assert.match(await ok(t, 'admin.vm.CurrentState', 'work'), /power_state=Halted$/);
    assert.equal(procState(pid), null, 'the agent is gone after Shutdown+wait');
    assert.equal((await raw(t.sock, req('admin.vm.Shutdown', 'work'))).data.toString(), "2\0QubesVMNotStartedError\0\0Domain is powered off: 'work'\0");
    assert.equal((await raw(t.sock, req('admin.vm.Shutdown', 'work', 'bogus'))).data.toString(), '2\0ProtocolError\0\0Argument must match: force, wait\0');
    await ok(t, 'admin.vm.Start', 'work');
    const pid2 = agentPid(stateDir, 'work');
    await ok(t, 'admin.vm.Kill', 'work');
    assert.match(await ok(t, 'admin.vm.CurrentState', 'work'), /power_state=Halted$/);
    assert.equal(procState(pid2), null);
    assert.equal((await raw(t.sock, req('admin.vm.Kill', 'work'))).data.toString(), "2\0QubesVMNotStartedError\0\0Domain is powered off: 'work'\0");
  } finally {
    await t.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a disposable: CreateDisposable, Start, Kill removes it (auto_cleanup)', { timeout: 60000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qubesd-rt-'));
  const runtime = new ProcessRuntime({ stateDir: path.join(dir, 'state'), vchanDir: path.join(dir, 'vchan'), socketDir: path.join(dir, 'qrexec'), logFd: 'ignore' });
  const t = await startTestQubesd({ runtime });
  try {
    await ok(t, 'admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black');
    await ok(t, 'admin.vm.Create.AppVM', 'dom0', 'tpl', 'name=dvm label=red');
    assert.equal(
      (await raw(t.sock, req('admin.vm.CreateDisposable', 'dvm'))).data.toString(),
      '2\0QubesException\0\0Refusing to create DispVM out of this AppVM, because template_for_dispvms=False\0',
    );
    await ok(t, 'admin.vm.property.Set', 'dvm', 'template_for_dispvms', 'True');
    const name = await ok(t, 'admin.vm.CreateDisposable', 'dvm');
    assert.match(name, /^disp\d+$/);
    assert.equal(await ok(t, 'admin.vm.tag.List', name), `audiovm-dom0\ncreated-by-dom0\ndisp-created-by-dom0\nguivm-dom0\n`);
    assert.equal(await ok(t, 'admin.vm.property.Get', name, 'template'), 'default=False type=vm dvm');
    await ok(t, 'admin.vm.Start', name);
    await ok(t, 'admin.vm.Kill', name);
    assert.equal(t.qd.registry.byName(name), undefined, 'removed when it stopped');
  } finally {
    await t.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('kill -9 of qubesd with a running qube: after restart it is Halted and no agent is left', { timeout: 60000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qubesd-rt9-'));
  const sock = path.join(dir, 'run', 'qubesd.sock');
  const start = async (): Promise<ReturnType<typeof spawn>> => {
    const p = spawn(process.execPath, [path.join(ROOT, 'bin/qubesd'), '--data-dir', path.join(dir, 'data'), '--run-dir', path.join(dir, 'run')], { stdio: 'ignore' });
    for (let i = 0; i < 200; i++) {
      const r = await raw(sock, req('admin.vm.List', 'dom0')).catch(() => null);
      if (r && r.data.length) return p;
      await new Promise((res) => setTimeout(res, 50));
    }
    throw new Error('qubesd did not start');
  };
  let p = await start();
  try {
    assert.equal((await raw(sock, req('admin.vm.Create.StandaloneVM', 'dom0', '', 'name=work label=red'))).data.toString(), '0\0');
    assert.equal((await raw(sock, req('admin.vm.Start', 'work'), { timeoutMs: 30000 })).data.toString(), '0\0');
    const pid = agentPid(path.join(dir, 'data', 'qubes'), 'work');
    assert.notEqual(procState(pid), null);
    p.kill('SIGKILL');
    await new Promise((r) => p.once('exit', r));
    assert.notEqual(procState(pid), null, 'the agent outlived qubesd');
    p = await start();
    assert.match((await raw(sock, req('admin.vm.List', 'work'))).data.toString(), /state=Halted/);
    for (let i = 0; i < 50 && procState(pid) !== null && procState(pid) !== 'Z'; i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(procState(pid) === null || procState(pid) === 'Z', 'the leftover agent was killed');
    // and the qrexec daemon the first qubesd started for it (it would wait for its agent forever)
    for (let i = 0; i < 50 && daemonPids(path.join(dir, 'run', 'qrexec')).length; i++) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(daemonPids(path.join(dir, 'run', 'qrexec')), [], 'no qrexec-daemon of the killed qubesd is left');
  } finally {
    p.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
