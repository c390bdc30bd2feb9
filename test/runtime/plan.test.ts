// The sandbox plan (pure) and the per-domain vchan layout: no root needed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { bwrapArgs, commitPendingLayer, launchCommand, planCheck, SANDBOX_CAPS, templateLayers, volumeMounts, ensureTemplate, type MountOp, type SandboxPlan } from '../../src/runtime/sandbox/index.js';
import { vchanConnect, vchanDirFor, vchanEnvFrom, vchanListen } from '../../src/vchan/index.js';

const base: SandboxPlan = {
  name: 'work',
  mounts: [{ op: 'tmpfs', target: '/s' }],
  root: '/s/root',
  binds: [{ source: '/data/work/private', dest: '/rw', readOnly: false }],
  env: { A: 'b' },
  command: ['/bin/true'],
};

void test('bwrap arguments: every namespace, hostname, only the binds asked for, capabilities dropped but the listed ones, no host environment', () => {
  const a = bwrapArgs(base);
  for (const o of ['--die-with-parent', '--new-session', '--unshare-ipc', '--unshare-pid', '--unshare-uts', '--unshare-net', '--clearenv']) assert.ok(a.includes(o), o);
  assert.deepEqual(a.slice(a.indexOf('--hostname'), a.indexOf('--hostname') + 2), ['--hostname', 'work']);
  const binds = a.flatMap((x, i) => (x === '--bind' || x === '--ro-bind' ? [`${a[i + 1]}->${a[i + 2]}`] : []));
  assert.deepEqual(binds, ['/s/root->/', '/data/work/private->/rw']);
  assert.equal(a[a.indexOf('--cap-drop') + 1], 'ALL');
  assert.deepEqual(a.flatMap((x, i) => (x === '--cap-add' ? [a[i + 1]] : [])), [...SANDBOX_CAPS]);
  assert.ok(!SANDBOX_CAPS.includes('CAP_SYS_ADMIN') && !SANDBOX_CAPS.includes('CAP_SYS_PTRACE') && !SANDBOX_CAPS.includes('CAP_NET_ADMIN'));
  assert.deepEqual(a.slice(-2), ['--', '/bin/true']);
  // a prepared network namespace: entered with nsenter, no --unshare-net
  const n = launchCommand({ ...base, netns: '/run/netns/x' }, { bwrap: 'B', unshare: 'U', nsenter: 'N', sh: 'S' });
  assert.equal(n.file, 'U');
  assert.ok(n.args.includes('--net=/run/netns/x'));
  assert.ok(!n.args.includes('--unshare-net'));
  // with native/qrexec-mountstep: one program does the mounts and enters the namespace, then bwrap
  const m = launchCommand({ ...base, netns: '/run/netns/x' }, { bwrap: 'B', unshare: 'U', nsenter: 'N', sh: 'S', mountstep: 'M' });
  assert.equal(m.file, 'M');
  assert.deepEqual(m.args.slice(0, m.args.indexOf('B')), ['T', '/s', '', 'N', '/run/netns/x', '--']);
  assert.ok(!m.args.includes('U') && !m.args.includes('S'));
});

void test('plans the mount step could misread are refused', () => {
  assert.throws(() => planCheck({ ...base, mounts: [{ op: 'overlay', target: '/s/r', lower: ['/a,upperdir=/etc'], upper: { dir: '/u', work: '/w' } }] }), /overlay path/);
  assert.throws(() => planCheck({ ...base, mounts: [{ op: 'overlay', target: '/s/r', lower: ['/a:/b'], upper: { dir: '/u', work: '/w' } }] }), /overlay path/);
  assert.throws(() => planCheck({ ...base, mounts: [{ op: 'overlay', target: '/s/r', lower: ['/a'] }] }), /two lower/);
  assert.throws(() => planCheck({ ...base, name: '../x' }), /bad qube name/);
  assert.throws(() => planCheck({ ...base, binds: [{ source: 'rel', dest: '/x', readOnly: true }] }), /absolute/);
  assert.throws(() => planCheck({ ...base, mounts: [{ op: 'tmpfs', target: '/s', size: '1m,exec' }] }), /size/);
});

void test('AppVM view: template root and layers read-only under throw-away uppers on the scratch tmpfs; TemplateVM: its own root, persistent uppers', { skip: process.geteuid?.() !== 0 ? 'not root: a template hides host files with whiteouts (mknod)' : false }, () => {
  const data = fs.mkdtempSync(path.join(os.tmpdir(), 'qrexec-plan-'));
  try {
    ensureTemplate(data, 'tpl', { kind: 'host' });
    const app = volumeMounts(data, { klass: 'AppVM', name: 'work', template: 'tpl' }, '/s');
    const tq = path.join(data, 'qubes', 'tpl');
    const show = (m: MountOp): string =>
      m.op === 'overlay' ? `${m.target}<${m.lower.join(':')}+${m.upper?.dir.startsWith('/s/') ? 'scratch' : m.upper?.dir}` : m.op === 'bindBeneath' ? `${m.target}<fd:${path.relative(data, m.base)}/${m.rel}` : m.op;
    assert.deepEqual(app.mounts.map(show), [
      'tmpfs', '/s/root<layers/0001/root:base/root+scratch', '/s/root/usr<layers/0001/usr:/usr+scratch', '/s/root/etc<layers/0001/etc:/etc+scratch',
      // the private volume's home and usrlocal: by descriptor, never by a path the host resolves
      '/s/bind/home<fd:qubes/work/private/home', '/s/bind/usrlocal<fd:qubes/work/private/usrlocal',
    ]);
    assert.deepEqual(app.binds.map((b) => `${b.dest}=${b.source.startsWith('/s/') ? b.source : path.relative(data, b.source)}`), ['/rw=qubes/work/private', '/home=/s/bind/home', '/usr/local=/s/bind/usrlocal']);
    const disp = volumeMounts(data, { klass: 'DispVM', name: 'disp1', template: 'tpl', dispvmTemplate: 'work' }, '/s');
    assert.deepEqual(disp.mounts.slice(4).map(show), [
      '/s/private<' + path.join(data, 'qubes/work/private') + '+scratch',
      '/s/lower/home<fd:qubes/work/private/home', '/s/merged/home</s/lower/home+scratch',
      '/s/lower/usrlocal<fd:qubes/work/private/usrlocal', '/s/merged/usrlocal</s/lower/usrlocal+scratch',
    ]);
    assert.deepEqual(disp.binds.map((b) => `${b.dest}=${b.source}`), ['/rw=/s/private', '/rw/home=/s/merged/home', '/home=/s/merged/home', '/rw/usrlocal=/s/merged/usrlocal', '/usr/local=/s/merged/usrlocal']);
    assert.ok(app.mounts.every((m) => m.op !== 'overlay' || m.cwd === tq));
    const t = volumeMounts(data, { klass: 'TemplateVM', name: 'tpl' }, '/s');
    assert.deepEqual(t.mounts.map(show), [
      'tmpfs', `/s/root<layers/0001/root:base/root+${tq}/pending/root`, `/s/root/usr<layers/0001/usr:/usr+${tq}/pending/usr`, `/s/root/etc<layers/0001/etc:/etc+${tq}/pending/etc`,
      '/s/bind/home<fd:qubes/tpl/private/home',
    ]);
    // what the template wrote while running becomes its newest layer at its stop
    fs.mkdirSync(path.join(tq, 'pending', 'etc'), { recursive: true });
    fs.writeFileSync(path.join(tq, 'pending', 'etc', 'x'), 'x');
    assert.equal(commitPendingLayer(data, 'tpl'), true);
    assert.deepEqual(templateLayers(data, 'tpl'), ['layers/0002', 'layers/0001']);
    assert.equal(volumeMounts(data, { klass: 'AppVM', name: 'work', template: 'tpl' }, '/s').mounts.map(show)[3], '/s/root/etc<layers/0002/etc:layers/0001/etc:/etc+scratch');
    const passwd = fs.readFileSync(path.join(tq, 'layers', '0001', 'etc', 'passwd'), 'utf8');
    assert.match(passwd, /^user:x:1000:1000:/m);
    assert.equal(passwd.split('\n').filter((l) => l.split(':')[2] === '1000').length, 1);
    if (fs.existsSync('/etc/shadow')) assert.ok(fs.statSync(path.join(tq, 'layers', '0001', 'etc', 'shadow')).isCharacterDevice(), 'shadow hidden by a whiteout');
  } finally {
    fs.rmSync(data, { recursive: true, force: true });
  }
});

void test('vchan per-domain layout: dom0 puts its sockets with qube N in DIR/N, where the qube (flat) finds them', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qrexec-vlayout-'));
  try {
    fs.mkdirSync(path.join(dir, '5'));
    const dom0 = vchanEnvFrom({ VCHAN_SOCKET_DIR: dir, VCHAN_DOMAIN: '0', VCHAN_SOCKET_LAYOUT: 'per-domain' });
    const qube = vchanEnvFrom({ VCHAN_SOCKET_DIR: path.join(dir, '5'), VCHAN_DOMAIN: '5', VCHAN_SOCKET_LAYOUT: 'per-domain' });
    assert.equal(qube.layout, undefined, 'a qube is always flat');
    assert.equal(vchanDirFor(dom0, 5), path.join(dir, '5'));
    assert.equal(vchanDirFor(vchanEnvFrom({ VCHAN_SOCKET_DIR: dir }), 5), dir);
    const l = await vchanListen(dom0, 5, 777);
    assert.equal(l.path, path.join(dir, '5', 'vchan.0.5.777.sock'));
    const c = await vchanConnect(qube, 0, 777, { timeoutMs: 2000 });
    (await l.accepted).end('x');
    const got = await new Promise<string>((r) => c.on('data', (d) => r(String(d))));
    assert.equal(got, 'x');
    c.destroy();
    // and the other way: the qube serves, dom0 connects in DIR/5
    const l2 = await vchanListen(qube, 0, 512);
    assert.equal(l2.path, path.join(dir, '5', 'vchan.5.0.512.sock'));
    const c2 = await vchanConnect(dom0, 5, 512, { timeoutMs: 2000 });
    (await l2.accepted).destroy();
    c2.destroy();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
