/**
 * Root inside a qube tries to make host code follow names it controls (issue
 * #11 §4): its vchan directory and its private volume are writable from
 * inside, and every host operation on them must not follow a symlink the qube
 * put there. Root only (CI).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { SandboxWorld, SH_SERVICE, sandboxSkipReason } from './world.js';
import { Sandbox } from '../../src/runtime/sandbox/index.js';
import { waitFor } from '../e2e/harness.js';

const skip = sandboxSkipReason();
const opts = { skip: skip ?? false };
let w: SandboxWorld;
/** Host things: a socket like qubesd's and a directory, both outside every qube. */
let decoy: net.Server;
let decoyPath: string;
let decoyHits = 0;
let hostDir: string;

const Q = {
  work: { name: 'work', domid: 1, uuid: '11111111-1111-4111-8111-111111111111' },
  evil: { name: 'evil', domid: 3, uuid: '33333333-3333-4333-8333-333333333333' },
  rwq: { name: 'rwq', domid: 4, uuid: '44444444-4444-4444-8444-444444444444' },
  dvm: { name: 'dvm', domid: 5, uuid: '55555555-5555-4555-8555-555555555555' },
  disp: { name: 'disp9', domid: 6, uuid: '66666666-6666-4666-8666-666666666666' },
};

/** Names and modes of everything in `dir`, to see that the host touched nothing there. */
function snapshot(dir: string): string {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = path.join(d, e.name);
      const st = fs.lstatSync(p);
      out.push(`${path.relative(dir, p)} ${st.mode.toString(8)} ${st.uid}`);
      if (e.isDirectory()) walk(p);
    }
  };
  const st = fs.lstatSync(dir);
  out.push(`. ${st.mode.toString(8)} ${st.uid}`);
  walk(dir);
  return out.join('\n');
}

before(async () => {
  if (skip) return;
  w = await SandboxWorld.create(Object.values(Q));
  for (const q of ['work', 'rwq', 'dvm']) w.service(q, 'test.Sh', SH_SERVICE);
  decoyPath = path.join(w.dir, 'qubesd-like.sock');
  decoy = net.createServer((s) => {
    decoyHits++;
    s.end('host socket\n');
  }).listen(decoyPath);
  hostDir = path.join(w.dir, 'host-dir');
  fs.mkdirSync(hostDir, { mode: 0o700 });
  fs.writeFileSync(path.join(hostDir, 'secret'), 'host secret\n', { mode: 0o600 });
  await w.start('work');
  await w.hostReady();
});

after(async () => {
  if (skip) return;
  decoy?.close();
  await w?.close();
});

void test("the host's daemon does not follow a symlink the qube puts at its control vchan socket (to a host socket)", opts, async () => {
  // root in the qube, instead of its agent: the name the host connects to points at a host socket
  const link = path.join(w.links.dirOf(Q.evil.domid), `vchan.${Q.evil.domid}.0.512.sock`);
  const sb = await Sandbox.start({
    name: 'evil',
    domid: Q.evil.domid,
    volumes: { klass: 'AppVM', name: 'evil', template: 'tpl' },
    dataDir: w.data,
    runDir: path.join(w.dir, 'run', 'evil'),
    vchanDir: w.links.add(Q.evil.domid),
    command: ['/bin/sh', '-c', `ln -s ${decoyPath} /run/vchan/vchan.${Q.evil.domid}.0.512.sock && exec sleep 60`],
  });
  try {
    await waitFor(async () => fs.lstatSync(link, { throwIfNoEntry: false })?.isSymbolicLink() === true, 10_000, 'the qube made its symlink');
    // qrexec-host's daemon for evil has been waiting for that name (inotify): give it time to connect
    await new Promise((r) => setTimeout(r, 2000));
    assert.equal(decoyHits, 0, 'the host connected to the socket the symlink points to');
  } finally {
    await sb.stop();
  }
  // the host is still serving the other qubes
  assert.match((await w.sh('work', 'hostname\n')).out, /^work$/m);
});

void test("a private volume whose /rw/home or /rw/usrlocal is a symlink to a host directory: the host creates, changes and binds nothing there", opts, async () => {
  await w.start('rwq');
  const before1 = snapshot(hostDir);
  // root in rwq: its home and usrlocal now name a host directory (meaningless inside, a host path outside)
  const r = await w.sh('rwq', `mv /rw/home /rw/home.orig && ln -s ${hostDir} /rw/home && mv /rw/usrlocal /rw/usrlocal.orig && ln -s ${hostDir}/sub /rw/usrlocal && echo ok\n`, 'root');
  assert.equal(r.out, 'ok\n', r.err);
  await w.stop('rwq');
  let started: Sandbox | undefined;
  await assert.rejects(
    (async () => {
      started = await w.start('rwq');
    })(),
    /is a symlink/,
  );
  if (started) {
    // the old code started it with the host directory as /home: show what leaked
    const leak = await w.sh('rwq', 'cat /home/secret 2>&1; ls -la /home /usr/local 2>&1\n', 'root');
    assert.fail(`rwq started with a symlinked home: ${leak.out}`);
  }
  assert.equal(snapshot(hostDir), before1, 'the host directory was changed (mkdir/chmod/chown through the symlink)');
  // undone by the host (the qube is down): it starts again with its own home
  for (const d of ['home', 'usrlocal']) {
    fs.unlinkSync(path.join(w.privateOf('rwq'), d));
    fs.renameSync(path.join(w.privateOf('rwq'), `${d}.orig`), path.join(w.privateOf('rwq'), d));
  }
  await w.start('rwq');
  assert.equal((await w.sh('rwq', 'ls /home\n')).out, 'user\n');
  await w.stop('rwq');
});

void test("a running dispvm template that points its /rw/home at a host directory (fixed, then flipping in a loop) never gives a DispVM that directory", opts, async () => {
  await w.start('dvm');
  const disp = { volumes: { klass: 'DispVM' as const, name: Q.disp.name, template: 'tpl', dispvmTemplate: 'dvm' } };
  const before1 = snapshot(hostDir);
  const r = await w.sh('dvm', `echo mine > /home/user/mark && mv /rw/home /rw/home.orig && ln -s ${hostDir} /rw/home && echo ok\n`, 'root');
  assert.equal(r.out, 'ok\n', r.err);
  await assert.rejects(w.start(Q.disp.name, disp), /is a symlink|not the directory/);
  await w.stop(Q.disp.name);
  // flipping: the name is a symlink to the host directory, then the real home again, as fast as it goes
  const f = await w.sh('dvm', `rm /rw/home && (while :; do mv -T /rw/home.orig /rw/home; mv -T /rw/home /rw/home.orig; ln -s ${hostDir} /rw/home.x; mv -T /rw/home.x /rw/home; rm /rw/home; done) >/dev/null 2>&1 </dev/null & echo ok\n`, 'root');
  assert.equal(f.out, 'ok\n', f.err);
  let ok = 0;
  for (let i = 0; i < 5; i++) {
    try {
      await w.start(Q.disp.name, disp);
    } catch (e) {
      assert.match((e as Error).message, /is a symlink|is missing|not the directory|exited/);
      await w.stop(Q.disp.name);
      continue;
    }
    const s = await w.sh(Q.disp.name, 'cat /home/secret /rw/home/secret 2>/dev/null; ls /home/user 2>/dev/null\n', 'root');
    assert.doesNotMatch(s.out, /host secret/, 'a DispVM saw the host directory');
    if (/mark/.test(s.out)) ok++;
    await w.stop(Q.disp.name);
  }
  await w.stop('dvm');
  assert.equal(snapshot(hostDir), before1, 'the host directory was changed');
  process.stderr.write(`# DispVM starts during the flips that got the real home: ${ok}/5\n`);
});

void test("cleaning a stopped qube's vchan directory does not follow the symlinks it left there", opts, async () => {
  await w.start('rwq');
  const before1 = snapshot(hostDir);
  const r = await w.sh('rwq', `ln -s ${hostDir} /run/vchan/lnk && mkdir /run/vchan/d && ln -s ${hostDir}/secret /run/vchan/d/s && ln -s ${hostDir} /run/vchan/d/dir && echo ok\n`, 'root');
  assert.equal(r.out, 'ok\n', r.err);
  await w.stop('rwq');
  w.links.remove(Q.rwq.domid);
  assert.ok(!fs.existsSync(w.links.dirOf(Q.rwq.domid)));
  assert.equal(snapshot(hostDir), before1);
  assert.equal(fs.readFileSync(path.join(hostDir, 'secret'), 'utf8'), 'host secret\n');
});
