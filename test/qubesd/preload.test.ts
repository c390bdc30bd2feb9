/**
 * Preloaded disposables (Qubes 4.3's `preload-dispvm-max`, src/qubesd/preload.ts),
 * with the process backend: the template's feature keeps N disposables
 * started and paused, listed in its `preload-dispvm` feature and `internal`;
 * a request gets one of them at once, which becomes an ordinary disposable
 * (not internal, killed and removed after use), and the gap is refilled; a
 * lower maximum kills the excess; dom0's feature applies to default_dispvm;
 * a restart removes the earlier run's; a @dispvm call through the host uses one.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ProcessRuntime } from '../../src/runtime/index.js';
import { startQubesd, type Qubesd } from '../../src/qubesd/index.js';
import { startSystem } from '../../src/host/system.js';
import { silentLogger } from '../../src/policyd/index.js';
import { BIN, run } from '../e2e/harness.js';
import { ok, raw, req, type TestQubesd } from './helpers.js';

async function until(what: string, f: () => boolean, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

interface World {
  readonly dir: string;
  readonly sock: string;
  qd: Qubesd;
  start(): Promise<void>;
  close(): Promise<void>;
}

async function world(): Promise<World> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qubesd-preload-'));
  const w: World = {
    dir,
    sock: path.join(dir, 'run', 'qubesd.sock'),
    qd: undefined as unknown as Qubesd,
    start: async () => {
      const runtime = new ProcessRuntime({ stateDir: path.join(dir, 'state'), vchanDir: path.join(dir, 'vchan'), socketDir: path.join(dir, 'qrexec'), logFd: 'ignore' });
      w.qd = await startQubesd({ dataDir: path.join(dir, 'data'), runDir: path.join(dir, 'run'), runtime, synchronous: 'NORMAL' });
    },
    close: async () => {
      await w.qd.close();
    },
  };
  await w.start();
  return w;
}

/** The helpers' view of this qubesd: they use only its socket. */
const t = (w: World): TestQubesd => ({ sock: w.sock }) as TestQubesd;
const feature = (w: World, vm: string, f: string): string | undefined => w.qd.registry.byName(vm)?.feature(f);
const list = (w: World, vm = 'dvm'): string[] => (feature(w, vm, 'preload-dispvm') ?? '').split(' ').filter((x) => x);
/** Every name on the list is a started, paused disposable marked completed. */
const ready = (w: World, n: number, vm = 'dvm'): boolean =>
  list(w, vm).length === n && list(w, vm).every((d) => w.qd.registry.byName(d)?.power === 'Paused' && feature(w, d, 'preload-dispvm-completed') === '1');
const dispvms = (w: World): string[] => w.qd.registry.list().filter((q) => q.klass === 'DispVM').map((q) => q.name).sort();

async function setup(w: World): Promise<void> {
  await ok(t(w), 'admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black');
  await ok(t(w), 'admin.vm.Create.AppVM', 'dom0', 'tpl', 'name=dvm label=red');
  await ok(t(w), 'admin.vm.property.Set', 'dvm', 'template_for_dispvms', 'True');
  // refill at once after a use (the reference's default is 3 s)
  await ok(t(w), 'admin.vm.feature.Set', 'dvm', 'preload-dispvm-delay', '0');
}

void test('preload-dispvm-max on a disposable template: N started and paused, internal, listed; a request gets one at once, which becomes an ordinary disposable; the gap is refilled', { timeout: 90_000 }, async () => {
  const w = await world();
  try {
    await setup(w);
    const used: string[] = [];
    w.qd.registry.on((s, e, kw) => {
      if (s?.name === 'dvm' && e === 'domain-preload-dispvm-used') used.push(new Map(kw).get('dispvm') ?? '');
    });
    assert.equal(
      (await raw(w.sock, req('admin.vm.feature.Set', 'dvm', 'preload-dispvm-max', 'two'))).data.toString(),
      '2\0QubesValueError\0\0Invalid preload-dispvm-max value: not a digit\0',
    );
    assert.equal(
      (await raw(w.sock, req('admin.vm.feature.Set', 'dvm', 'preload-dispvm', 'disp1'))).data.toString().split('\0')[1],
      'PermissionDenied',
      'the list is qubesd\'s own',
    );
    await ok(t(w), 'admin.vm.feature.Set', 'dvm', 'preload-dispvm-max', '2');
    await until('2 preloaded', () => ready(w, 2));
    const [first, second] = list(w) as [string, string];
    for (const d of [first, second]) {
      assert.match(d, /^disp\d+$/);
      assert.equal(feature(w, d, 'internal'), '1', 'hidden from GUI tools');
      assert.equal(await ok(t(w), 'admin.vm.property.Get', d, 'auto_cleanup'), 'default=False type=bool True');
      assert.match(await ok(t(w), 'admin.vm.CurrentState', d), /power_state=Paused$/);
    }
    // qvm-ls shows them (paused DispVMs); --internal n leaves them out
    const env = { ...process.env, QUBESD_SOCKET: w.sock };
    // (not spawnSync: this process is the qubesd qvm-ls asks)
    const ls = await run(BIN('qvm-ls'), ['--raw-data', '-O', 'name,state,class', '--all'], env);
    assert.match(ls.stdout.toString(), new RegExp(`^${first}\\|Paused\\|DispVM$`, 'm'), ls.stderr);
    const lsn = (await run(BIN('qvm-ls'), ['--raw-list', '--internal', 'n'], env)).stdout.toString();
    assert.ok(!lsn.includes(first) && lsn.includes('dvm'), lsn);

    // a request: the oldest preloaded one, unpaused, no longer internal nor listed
    const got = await ok(t(w), 'admin.vm.CreateDisposable', 'dvm');
    assert.equal(got, first);
    assert.ok(!list(w).includes(first));
    assert.equal(feature(w, first, 'internal'), undefined);
    assert.equal(feature(w, first, 'preload-dispvm-in-progress'), undefined);
    assert.deepEqual(used, [first]);
    await until(`${first} unpaused`, () => w.qd.registry.byName(first)?.power === 'Running');
    assert.equal(await ok(t(w), 'admin.vm.Start', first), '', 'the caller\'s Start of a running qube is no error');
    assert.match(await ok(t(w), 'admin.vm.tag.List', first), /^disp-created-by-dom0$/m);
    // the gap is filled (delay 0), with a new one
    await until('refilled', () => ready(w, 2));
    assert.ok(list(w).includes(second) && !list(w).includes(first));
    // used, it is an ordinary disposable: killed and removed
    await ok(t(w), 'admin.vm.Kill', first);
    assert.equal(w.qd.registry.byName(first), undefined);
    assert.equal(dispvms(w).length, 2);

    // unpaused by hand: used all the same (leaves the list), and refilled
    const byHand = list(w)[0] as string;
    await ok(t(w), 'admin.vm.Unpause', byHand);
    assert.ok(!list(w).includes(byHand));
    assert.equal(feature(w, byHand, 'internal'), undefined);
    await until('refilled after a manual unpause', () => ready(w, 2));
    await ok(t(w), 'admin.vm.Kill', byHand);

    // a lower maximum kills the excess (the newest), removing it
    const keep = list(w)[0] as string;
    await ok(t(w), 'admin.vm.feature.Set', 'dvm', 'preload-dispvm-max', '1');
    await until('excess removed', () => ready(w, 1) && dispvms(w).length === 1);
    assert.deepEqual(list(w), [keep]);
    // the feature removed: none left
    await ok(t(w), 'admin.vm.feature.Remove', 'dvm', 'preload-dispvm-max');
    await until('all removed', () => dispvms(w).length === 0);
    assert.deepEqual(list(w), []);
    // without preloads, a request makes a new disposable, halted until started
    const fresh = await ok(t(w), 'admin.vm.CreateDisposable', 'dvm');
    assert.equal(w.qd.registry.byName(fresh)?.power, 'Halted');
  } finally {
    await w.close();
    fs.rmSync(w.dir, { recursive: true, force: true });
  }
});

void test("a preload needs the memory: none while the template's memory exceeds what is available (less dom0's preload-dispvm-threshold), then they come", { timeout: 90_000 }, async () => {
  const w = await world();
  try {
    await setup(w);
    const availMib = Math.floor(Number(/^MemAvailable:\s+(\d+)/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'))?.[1]) / 1024);
    // more memory than the host has: nothing is started
    await ok(t(w), 'admin.vm.property.Set', 'dvm', 'memory', String(availMib * 4));
    await ok(t(w), 'admin.vm.feature.Set', 'dvm', 'preload-dispvm-max', '2');
    await new Promise((r) => setTimeout(r, 1500));
    assert.deepEqual(list(w), []);
    assert.deepEqual(dispvms(w), []);
    // a small qube, but dom0's threshold keeps all the memory: still none
    await ok(t(w), 'admin.vm.property.Set', 'dvm', 'memory', '100');
    await ok(t(w), 'admin.vm.feature.Set', 'dom0', 'preload-dispvm-threshold', String(availMib * 4));
    await ok(t(w), 'admin.vm.feature.Set', 'dvm', 'preload-dispvm-max', '1');
    await new Promise((r) => setTimeout(r, 1500));
    assert.deepEqual(dispvms(w), []);
    // room again: the next fill preloads
    await ok(t(w), 'admin.vm.feature.Remove', 'dom0', 'preload-dispvm-threshold');
    await ok(t(w), 'admin.vm.feature.Set', 'dvm', 'preload-dispvm-max', '2');
    await until('2 preloaded', () => ready(w, 2));
  } finally {
    await w.close();
    fs.rmSync(w.dir, { recursive: true, force: true });
  }
});

void test("dom0's preload-dispvm-max applies to default_dispvm (over its own); a template stopping replaces its preloaded ones", { timeout: 90_000 }, async () => {
  const w = await world();
  try {
    await setup(w);
    await ok(t(w), 'admin.property.Set', 'dom0', 'default_dispvm', 'dvm');
    await ok(t(w), 'admin.vm.feature.Set', 'dvm', 'preload-dispvm-max', '2');
    await until('2 preloaded', () => ready(w, 2));
    await ok(t(w), 'admin.vm.feature.Set', 'dom0', 'preload-dispvm-max', '1');
    await until('the global maximum wins', () => ready(w, 1) && dispvms(w).length === 1);
    // CreateDisposable to dom0: the caller's default_dispvm, served from the preloaded ones
    const before = list(w)[0];
    assert.equal(await ok(t(w), 'admin.vm.CreateDisposable', 'dom0'), before);
    await until('refilled', () => ready(w, 1));
    await ok(t(w), 'admin.vm.Kill', before as string);

    // the disposable template ran and stopped: its preloaded ones are replaced (their volume is an overlay of its)
    const old = list(w)[0] as string;
    await ok(t(w), 'admin.vm.Start', 'dvm');
    await ok(t(w), 'admin.vm.Shutdown', 'dvm', 'wait');
    await until('replaced', () => ready(w, 1) && !list(w).includes(old) && w.qd.registry.byName(old) === undefined);

  } finally {
    await w.close();
    fs.rmSync(w.dir, { recursive: true, force: true });
  }
});

void test('a @dispvm call through the host (in-process qrexec daemons) is served by a preloaded disposable, which is removed after the call', { timeout: 120_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qhp-'));
  const data = path.join(dir, 'data');
  const sys = await startSystem({ dataDir: data, runDir: path.join(dir, 'run'), runtime: 'process', log: silentLogger });
  try {
    const call = async (method: string, dest: string, arg = '', payload = ''): Promise<string> => (await sys.call(method, dest, { arg, payload: Buffer.from(payload) })).toString();
    await call('admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black');
    await call('admin.property.Set', 'dom0', 'default_template', 'tpl');
    for (const n of ['a', 'dvm']) await call('admin.vm.Create.AppVM', 'dom0', '', `name=${n} label=red`);
    await call('admin.vm.property.Set', 'dvm', 'template_for_dispvms', 'True');
    await call('admin.vm.feature.Set', 'dvm', 'preload-dispvm-delay', '0');
    await sys.autostart();
    await call('admin.vm.feature.Set', 'dvm', 'preload-dispvm-max', '1');
    fs.writeFileSync(path.join(sys.info.policyDir, '30-test.policy'), 'qubes.VMExec +cat a @dispvm:dvm allow\n* * @anyvm @anyvm deny\n');
    sys.policyDaemon.store.reload();
    const reg = sys.qubesd.registry;
    const pre = (): string => reg.byName('dvm')?.feature('preload-dispvm') ?? '';
    await until('preloaded', () => pre() !== '' && reg.byName(pre())?.feature('preload-dispvm-completed') === '1');
    const name = pre();
    await call('admin.vm.Start', 'a');
    const a = reg.byName('a');
    const servedBy: string[] = [];
    reg.on((s, e) => {
      // the qrexec daemon asks qubesd as dom0, as the reference's does
      if (e === 'domain-tag-add:disp-created-by-dom0' && s) servedBy.push(s.name);
    });
    const env = { ...process.env, VCHAN_SOCKET_DIR: sys.info.vchanDir, VCHAN_DOMAIN: String(a?.domid) };
    const agent = `--agent-socket=${path.join(data, 'qubes', 'a', 'agent.sock')}`;
    const d = await run(BIN('qrexec-client-vm'), [agent, '@dispvm:dvm', 'qubes.VMExec+cat'], env, 'to a preloaded dispvm\n');
    assert.equal(d.stdout.toString(), 'to a preloaded dispvm\n', d.stderr);
    assert.deepEqual(servedBy, [name], 'the call got the preloaded disposable');
    await until(`${name} removed after the call`, () => reg.byName(name) === undefined);
    await until('refilled', () => pre() !== '' && pre() !== name);
  } finally {
    await sys.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

void test('kill -9 of qubesd with preloaded disposables: after its restart the old ones are gone (registry, list, processes) and new ones are preloaded', { timeout: 90_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qubesd-preload9-'));
  const sock = path.join(dir, 'run', 'qubesd.sock');
  const q = { sock } as TestQubesd;
  const start = async (): Promise<ChildProcess> => {
    const p = spawn(process.execPath, [BIN('qubesd'), '--data-dir', path.join(dir, 'data'), '--run-dir', path.join(dir, 'run')], { stdio: 'ignore' });
    for (let i = 0; i < 200; i++) {
      const r = await raw(sock, req('admin.vm.List', 'dom0')).catch(() => null);
      if (r && r.data.length) return p;
      await new Promise((res) => setTimeout(res, 50));
    }
    throw new Error('qubesd did not start');
  };
  const preloaded = async (): Promise<string[]> => {
    const r = (await raw(sock, req('admin.vm.feature.Get', 'dvm', 'preload-dispvm'))).data.toString();
    return r.startsWith('0\0') ? r.slice(2).split(' ').filter((x) => x) : [];
  };
  const completed = async (n: string): Promise<boolean> => (await raw(sock, req('admin.vm.feature.Get', n, 'preload-dispvm-completed'))).data.toString() === '0\x001';
  const agentAlive = (n: string): boolean => {
    try {
      const pid = Number(fs.readFileSync(path.join(dir, 'data', 'qubes', n, 'agent.pid'), 'utf8').split('\n')[0]);
      return !/\) Z /.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
    } catch {
      return false;
    }
  };
  const waitPreloaded = async (): Promise<string> => {
    for (let i = 0; i < 600; i++) {
      const l = await preloaded();
      if (l.length === 1 && (await completed(l[0] as string))) return l[0] as string;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error('not preloaded');
  };
  let p = await start();
  try {
    await ok(q, 'admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black');
    await ok(q, 'admin.vm.Create.AppVM', 'dom0', 'tpl', 'name=dvm label=red');
    await ok(q, 'admin.vm.property.Set', 'dvm', 'template_for_dispvms', 'True');
    await ok(q, 'admin.vm.feature.Set', 'dvm', 'preload-dispvm-max', '1');
    const old = await waitPreloaded();
    assert.ok(agentAlive(old));
    p.kill('SIGKILL');
    await new Promise((r) => p.once('exit', r));
    p = await start();
    const fresh = await waitPreloaded();
    assert.notEqual(fresh, old);
    assert.doesNotMatch(await ok(q, 'admin.vm.List', 'dom0'), new RegExp(`^${old} `, 'm'), 'the earlier run\'s preloaded qube was removed');
    for (let i = 0; i < 100 && agentAlive(old); i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(!agentAlive(old), 'and its (paused) agent killed');
  } finally {
    p.kill('SIGTERM');
    await new Promise((r) => p.once('exit', r));
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
