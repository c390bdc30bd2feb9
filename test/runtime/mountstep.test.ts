/**
 * The host-side mount step two ways: native/qrexec-mountstep (one exec) and
 * the shell script it replaces (QREXEC_TS_SHELL_MOUNTSTEP=1, used when the
 * native one is not built) give a qube the same view: an AppVM's throw-away
 * root and its own home, a DispVM's overlay of its dispvm template's home
 * (bound by descriptor), and both refuse a home that is a symlink. Root only.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SandboxWorld, SH_SERVICE, sandboxSkipReason } from './world.js';
import { MOUNTSTEP_PATH } from '../../src/runtime/sandbox/sandbox.js';

const skip = sandboxSkipReason() ?? (fs.existsSync(MOUNTSTEP_PATH) ? undefined : 'native/build/qrexec-mountstep not built');
const opts = { skip: skip ?? false };
let w: SandboxWorld;
const Q = [
  { name: 'work', domid: 1, uuid: '11111111-1111-4111-8111-111111111111' },
  { name: 'disp1', domid: 2, uuid: '22222222-2222-4222-8222-222222222222' },
];

before(async () => {
  if (skip) return;
  w = await SandboxWorld.create(Q);
  w.service('work', 'test.Sh', SH_SERVICE);
});

after(async () => {
  delete process.env['QREXEC_TS_SHELL_MOUNTSTEP'];
  await w?.close();
});

/** What a qube sees of its filesystems, and what it can write. */
const VIEW = [
  'cat /etc/hostname',
  'echo root-$(touch /etc/mark 2>/dev/null && echo w || echo ro)',
  'cat /etc/mark-kept 2>/dev/null || echo no-old-root-write',
  'echo x > /etc/mark-kept',
  'cat /home/user/kept 2>/dev/null || echo no-home-file',
  'echo kept > /home/user/kept',
  'ls -d /usr/local/etc/qubes-rpc',
  'grep -c " /run/vchan " /proc/self/mountinfo',
].join('\n') + '\n';

void test('the native mount step and the shell script give an AppVM and a DispVM the same view', opts, async () => {
  const seen: Record<string, string[]> = {};
  for (const mode of ['native', 'shell']) {
    if (mode === 'shell') process.env['QREXEC_TS_SHELL_MOUNTSTEP'] = '1';
    else delete process.env['QREXEC_TS_SHELL_MOUNTSTEP'];
    fs.rmSync(path.join(w.privateOf('work'), 'home', 'user', 'kept'), { force: true });
    const out: string[] = [];
    for (let i = 0; i < 2; i++) {
      await w.start('work');
      await w.hostReady();
      const r = await w.sh('work', VIEW, 'root');
      assert.equal(r.code, 0, r.err);
      out.push(r.out);
      await w.stop('work');
    }
    // a DispVM of work: work's home, and what it writes there is gone with it
    for (let i = 0; i < 2; i++) {
      await w.start('disp1', { volumes: { klass: 'DispVM', name: 'disp1', template: 'tpl', dispvmTemplate: 'work' } });
      await w.hostReady();
      const r = await w.sh('disp1', 'cat /home/user/kept; cat /home/user/d 2>/dev/null || echo no-d; echo d > /home/user/d; cat /etc/hostname\n');
      assert.equal(r.code, 0, r.err);
      out.push(r.out);
      await w.stop('disp1');
    }
    seen[mode] = out;
  }
  assert.deepEqual(seen['native'], [
    'work\nroot-w\nno-old-root-write\nno-home-file\n/usr/local/etc/qubes-rpc\n1\n',
    'work\nroot-w\nno-old-root-write\nkept\n/usr/local/etc/qubes-rpc\n1\n',
    'kept\nno-d\ndisp1\n',
    'kept\nno-d\ndisp1\n',
  ]);
  assert.deepEqual(seen['shell'], seen['native']);
  assert.ok(!fs.existsSync(path.join(w.privateOf('work'), 'home', 'user', 'd')), "the DispVM's write reached its template's volume");
});

void test('the native mount step: a failed step says which and runs nothing; a directory by descriptor is bound (in its own mount namespace only)', opts, () => {
  const t = fs.mkdtempSync(path.join(w.dir, 'ms-'));
  try {
    const bad = spawnSync(MOUNTSTEP_PATH, ['B', path.join(t, 'missing'), path.join(t, 'b'), 'rw', '--', '/bin/echo', 'ran'], { encoding: 'utf8' });
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /^mount step: mount .*missing on .*\/b: No such file or directory/);
    assert.equal(bad.stdout, '');
    const op = spawnSync(MOUNTSTEP_PATH, ['X', '--', '/bin/echo', 'ran'], { encoding: 'utf8' });
    assert.equal(op.status, 1);
    assert.match(op.stderr, /bad operation X/);
    fs.mkdirSync(path.join(t, 'src'));
    fs.writeFileSync(path.join(t, 'src', 'f'), 'by fd\n');
    const fd = fs.openSync(path.join(t, 'src'), 'r');
    try {
      // the descriptor is closed before the command runs
      const ok = spawnSync(MOUNTSTEP_PATH, ['F', '5', path.join(t, 'at'), 'ro', '--', '/bin/sh', '-c', `cat ${t}/at/f; touch ${t}/at/g 2>/dev/null || echo read-only; [ -e /proc/$$/fd/5 ] && echo fd-open || echo fd-closed`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe', 'ignore', 'ignore', fd] });
      assert.equal(ok.stderr, '');
      assert.equal(ok.stdout, 'by fd\nread-only\nfd-closed\n');
    } finally {
      fs.closeSync(fd);
    }
    // the bind was in the step's own namespace: nothing on the host
    assert.deepEqual(fs.readdirSync(path.join(t, 'at')), []);
  } finally {
    fs.rmSync(t, { recursive: true, force: true });
  }
});
