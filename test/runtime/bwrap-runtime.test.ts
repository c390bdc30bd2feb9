/**
 * The `bwrap` backend of qubesd's Runtime interface, with the real host:
 * start (the default template made at first start), ready, a call, pause,
 * shutdown; a DispVM and a netvm chain described by the registry callback;
 * the choice on the command line. Root only (CI).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SandboxWorld, SH_SERVICE, sandboxSkipReason } from './world.js';
import { BwrapRuntime, type QubeDescription } from '../../src/runtime/index.js';
import { runtimeFromOptions } from '../../src/runtime/select.js';
import type { QubeLaunch } from '../../src/runtime/types.js';

const skip = sandboxSkipReason();
const opts = { skip: skip ?? false };
let w: SandboxWorld;
let rt: BwrapRuntime;
const registry: Record<string, QubeDescription> = {
  work: { klass: 'AppVM', template: 'deb', netvm: 'sys-net' },
  'sys-net': { klass: 'AppVM', template: 'deb', netvm: null, providesNetwork: true },
  dvm: { klass: 'AppVM', template: 'deb' },
  disp9: { klass: 'DispVM', template: 'dvm' },
  deb: { klass: 'TemplateVM', template: null },
};
const launch = (name: string, domid: number): QubeLaunch => ({
  name, uuid: `00000000-0000-4000-8000-0000000000${String(domid).padStart(2, '0')}`, domid, klass: registry[name]?.klass ?? 'AppVM',
  template: registry[name]?.template ?? null, defaultUser: 'user', timeoutMs: 20_000,
});

before(async () => {
  if (skip) return;
  w = await SandboxWorld.create(['work', 'sys-net', 'dvm', 'disp9', 'deb'].map((name, i) => ({ name, domid: i + 1, uuid: launch(name, i + 1).uuid })));
  rt = new BwrapRuntime({ dataDir: w.data, runDir: w.dir, describe: (n) => registry[n], defaultLimits: { memoryBytes: 512 * 1024 * 1024, pids: 512 } });
  assert.equal(rt.vchanRoot, w.vchanRoot, 'the host side and the backend share the vchan root');
});

after(async () => {
  if (skip) return;
  await rt?.close();
  await w?.close();
});

void test('start: the default template is made from the host at first start; ready once the agent is up; calls work; pause; shutdown ends it', opts, async () => {
  const tpl = rt.start(launch('deb', 5));
  await tpl.ready;
  tpl.shutdown();
  await tpl.exited;
  assert.ok(fs.existsSync(path.join(w.data, 'qubes', 'deb', 'volume.json')));
  // install the probe service in the template, as a template's root would carry it
  const d = path.join(w.data, 'qubes', 'deb', 'layers', '0001', 'etc', 'qubes-rpc');
  fs.mkdirSync(d, { recursive: true });
  fs.writeFileSync(path.join(d, 'test.Sh'), SH_SERVICE, { mode: 0o755 });
  const net = rt.start(launch('sys-net', 2));
  await net.ready;
  const work = rt.start(launch('work', 1));
  await work.ready;
  const s = await w.sh('work', 'hostname; ip -o -4 addr show dev eth0 | wc -l\n');
  assert.equal(s.out, 'work\n1\n', s.err);
  work.pause();
  await new Promise((r) => setTimeout(r, 100));
  let answered = false;
  const call = w.sh('work', 'echo after-pause\n').then((r) => ((answered = true), r));
  await new Promise((r) => setTimeout(r, 400));
  assert.equal(answered, false);
  work.unpause();
  assert.equal((await call).out, 'after-pause\n');
  work.shutdown();
  const x = await work.exited;
  assert.ok(x.code !== 0 || x.signal !== null || x.code === null);
  net.kill();
  await net.exited;
  assert.deepEqual(fs.readdirSync(w.vchanRoot), [], 'vchan directories removed');
});

void test('a DispVM from its dispvm template (described by the registry): fresh private overlay, gone at shutdown', opts, async () => {
  fs.mkdirSync(path.join(w.privateOf('dvm'), 'home', 'user'), { recursive: true });
  fs.writeFileSync(path.join(w.privateOf('dvm'), 'home', 'user', 'from-dvm'), 'dvm\n');
  const disp = rt.start(launch('disp9', 4));
  await disp.ready;
  assert.equal((await w.sh('disp9', 'cat /home/user/from-dvm; echo x > /home/user/from-dvm\n')).out, 'dvm\n');
  disp.kill();
  await disp.exited;
  assert.equal(fs.readFileSync(path.join(w.privateOf('dvm'), 'home', 'user', 'from-dvm'), 'utf8'), 'dvm\n');
});

void test('a start that cannot work fails with the reason (no template for an AppVM; netvm not running)', opts, async () => {
  registry['dvm'] = { klass: 'AppVM', template: null };
  const bad = rt.start({ ...launch('dvm', 3), template: null, klass: 'AppVM' });
  await assert.rejects(bad.ready, /has no template/);
  registry['dvm'] = { klass: 'AppVM', template: 'deb' };
  const noNet = rt.start(launch('work', 1));
  await assert.rejects(noNet.ready, /netvm sys-net is not running/);
  await noNet.exited;
});

void test('--runtime bwrap picks this backend as root; an unknown name is a usage error', opts, async () => {
  const r = runtimeFromOptions('bwrap', { runDir: path.join(w.dir, 'rt2'), dataDir: path.join(w.dir, 'rt2data') });
  assert.equal(r?.name, 'bwrap');
  await r?.close();
  assert.throws(() => runtimeFromOptions('xen', { runDir: w.dir, dataDir: w.data }), /invalid choice: 'xen' \(choose from 'process', 'bwrap', 'none'\)/);
});
