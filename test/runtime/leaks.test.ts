/**
 * 100 sandboxes started and stopped leave nothing behind (issue #11 §4):
 * processes, mounts (host and private namespaces), veths and network
 * namespaces, cgroups, vchan sockets, run directories, counted before and
 * after. And a sandbox dies with its host (bwrap's --die-with-parent). Root only (CI).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { SandboxWorld, SH_SERVICE, sandboxSkipReason } from './world.js';
import { Sandbox, cleanStaleCgroups, connectUplink, createNetns, destroyNetwork, detectCgroups, makeNetvm, type NetworkOptions } from '../../src/runtime/sandbox/index.js';

const skip = sandboxSkipReason();
const opts = { skip: skip ?? false };
let w: SandboxWorld;
const netOpts: NetworkOptions = { prefix: `ql${process.pid % 100000}-`, poolOctet: 150 + (process.pid % 40) };

before(async () => {
  if (skip) return;
  w = await SandboxWorld.create([{ name: 'work', domid: 1, uuid: '11111111-1111-4111-8111-111111111111' }]);
  w.templateService('test.Sh', SH_SERVICE);
  w.templateService('test.Echo', '#!/bin/sh\necho "up $(hostname)"\n');
});

after(async () => {
  if (skip) return;
  await w?.close();
});

/** Our own cgroups' names start with this (those of the world's qubes with its own prefix). */
const CG_PREFIX = `ql${process.pid}-`;

/** Pids of this process's descendants. */
function descendants(): Set<number> {
  const parent = new Map<number, number>();
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const st = fs.readFileSync(`/proc/${e}/stat`, 'utf8');
      parent.set(Number(e), Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      /* exited */
    }
  }
  const out = new Set<number>();
  let grew = true;
  while (grew) {
    grew = false;
    for (const [p, pp] of parent) if (!out.has(p) && (pp === process.pid || out.has(pp))) {
      out.add(p);
      grew = true;
    }
  }
  return out;
}

/**
 * Everything a sandbox of this test could leave behind, counted: only what
 * this test makes (its processes, its own cgroup, netns and veth names, its
 * directory), so that other sandboxes on the machine do not change the counts.
 */
function census() {
  const kids = descendants();
  const children = spawnSync('ps', ['-o', 'pid=', '--ppid', String(process.pid)], { encoding: 'utf8' }).stdout.split('\n').filter((l) => l.trim()).length;
  const mntNs = new Set<string>();
  let sandboxProcs = 0;
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      // ours: a descendant, or a process of our directory (an orphan reparented to init)
      const mine = fs.readFileSync(`/proc/${e}/cmdline`, 'utf8').includes(w.dir);
      if (mine) sandboxProcs++;
      if (mine || kids.has(Number(e))) mntNs.add(fs.readlinkSync(`/proc/${e}/ns/mnt`));
    } catch {
      /* exited */
    }
  }
  const cg = detectCgroups();
  const bases = cg.kind === 'v2' ? [cg.base] : cg.kind === 'v1' ? [...cg.bases.values()] : [];
  const ours = (n: string): boolean => n.startsWith(CG_PREFIX) || n.startsWith(w.cgroupPrefix);
  const groups = (d: string): number => fs.readdirSync(d, { withFileTypes: true }).filter((x) => x.isDirectory() && ours(x.name)).length;
  const ip = (args: string[]): string => spawnSync('ip', args, { encoding: 'utf8' }).stdout;
  const files = (d: string): number => (fs.existsSync(d) ? fs.readdirSync(d, { recursive: true }).length : 0);
  return {
    children,
    sandboxProcs,
    mountNamespaces: mntNs.size,
    hostMounts: fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(w.dir)).length,
    cgroups: bases.reduce((n, b) => n + groups(b), 0),
    links: [...ip(['-o', 'link']).matchAll(/^\d+: ([^:@]+)[@:]/gm)].filter((m) => (m[1] as string).startsWith(netOpts.prefix)).length,
    netns: ip(['netns', 'list']).split('\n').filter((l) => l.startsWith(netOpts.prefix)).length,
    vchanFiles: files(w.vchanRoot),
    runFiles: files(path.join(w.dir, 'run')),
  };
}

void test('100 sandboxes (overlay root, cgroup, every 4th with a netvm and veth) started and stopped leak nothing', opts, async () => {
  const sysnet = connectUplink(netOpts, createNetns(netOpts, 90), 90, 'host');
  makeNetvm(sysnet);
  const before = census();
  // the census sees this test's resources (or it would prove nothing)
  assert.equal(before.netns, 1, 'our sys-net namespace is counted');
  assert.equal(before.links, 1, "our sys-net's host veth is counted");
  for (let i = 0; i < 100; i++) {
    const domid = 100 + i;
    const net = i % 4 === 0 ? connectUplink(netOpts, createNetns(netOpts, domid), domid, sysnet) : undefined;
    const sb = await Sandbox.start({
      name: `q${i}`,
      domid,
      volumes: { klass: 'AppVM', name: `q${i}`, template: 'tpl' },
      dataDir: w.data,
      runDir: path.join(w.dir, 'run', `q${i}`),
      vchanDir: w.links.add(domid),
      cgroupName: `${CG_PREFIX}q${i}`,
      command: ['/bin/sh', '-c', 'echo x > /etc/x; sleep 1000 & sleep 1000'],
      limits: { pids: 100, memoryBytes: 64 * 1024 * 1024 },
      ...(net ? { network: net } : {}),
    });
    assert.ok(sb.pids().length >= 2);
    if (i === 0) {
      const during = census();
      assert.ok(during.cgroups > before.cgroups && during.netns === before.netns + 1 && during.sandboxProcs > before.sandboxProcs, `a running sandbox is counted: ${JSON.stringify(during)}`);
    }
    await sb.stop();
    if (net) destroyNetwork(netOpts, net, domid);
    w.links.remove(domid);
    fs.rmSync(path.join(w.data, 'qubes', `q${i}`), { recursive: true, force: true });
  }
  const afterCount = census();
  destroyNetwork(netOpts, sysnet, 90);
  assert.deepEqual(afterCount, before);
});

void test('10 real qubes (agent, host, a call each) started and stopped leak nothing', opts, async () => {
  await w.start('work');
  await w.stop('work');
  const before = census();
  for (let i = 0; i < 10; i++) {
    await w.start('work');
    const r = await w.call('work', 'DEFAULT:QUBESRPC test.Echo+ dom0');
    assert.equal(r.stdout.toString(), 'up work\n', r.stderr);
    await w.stop('work');
  }
  assert.deepEqual(census(), before);
});

for (const paused of [false, true]) {
void test(`a sandbox dies with its host${paused ? ', even paused (a preloaded disposable)' : ''}: kill -9 of the process that started it leaves no sandbox process`, opts, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qrexec-orphan-'));
  const script = path.join(dir, 'start.mjs');
  const mod = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/runtime/sandbox/index.js');
  fs.writeFileSync(script, `import { Sandbox } from ${JSON.stringify(mod)};
const sb = await Sandbox.start({ name: 'orphan', domid: 77, volumes: { klass: 'AppVM', name: 'orphan', template: 'tpl' }, dataDir: ${JSON.stringify(w.data)},
  runDir: ${JSON.stringify(path.join(dir, 'run'))}, vchanDir: ${JSON.stringify(path.join(dir, 'vchan'))}, command: ['/bin/sh', '-c', 'sleep 1000 & sleep 1000'],
  limits: { pids: 100 }, cgroupName: ${JSON.stringify(`${CG_PREFIX}orphan${paused ? 'p' : ''}`)} });
if (${String(paused)}) await sb.pause();
console.log(sb.initPid);
`);
  const p = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const initPid = await new Promise<number>((r) => p.stdout.once('data', (d: Buffer) => r(Number(String(d).trim()))));
  assert.ok(fs.existsSync(`/proc/${initPid}`));
  const ns = fs.readlinkSync(`/proc/${initPid}/ns/pid`);
  p.kill('SIGKILL');
  const left = (): string[] => fs.readdirSync('/proc').flatMap((e) => {
    try {
      if (!/^\d+$/.test(e) || fs.readlinkSync(`/proc/${e}/ns/pid`) !== ns) return [];
      const stat = fs.readFileSync(`/proc/${e}/stat`, 'utf8');
      // zombies (being reaped) do not count
      return /\) Z /.test(stat) ? [] : [`${stat.slice(0, 80)} wchan=${fs.readFileSync(`/proc/${e}/wchan`, 'utf8')}`];
    } catch {
      return [];
    }
  });
  for (let i = 0; i < 500 && left().length > 0; i++) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(left(), [], 'every process of the sandbox is gone');
  // its (empty) cgroup is what a host's next start removes
  cleanStaleCgroups(`${CG_PREFIX}orphan`);
  fs.rmSync(dir, { recursive: true, force: true });
});
}

void test('a sandbox ends when its command does, even with a process left in the background', opts, async () => {
  const sb = await Sandbox.start({
    name: 'brief', domid: 78, volumes: { klass: 'AppVM', name: 'brief', template: 'tpl' }, dataDir: w.data,
    runDir: path.join(w.dir, 'run', 'brief'), vchanDir: w.links.add(78), command: ['/bin/sh', '-c', 'sleep 1000 </dev/null >/dev/null 2>&1 & exit 3'],
  });
  const x = await sb.exited;
  assert.equal(x.code, 3);
  // the namespace's init is reaped just after bwrap exits: under load, give it a moment (bounded)
  const initGone = (): boolean => !fs.existsSync(`/proc/${sb.initPid}/stat`) || /\) [ZX] /.test(fs.readFileSync(`/proc/${sb.initPid}/stat`, 'utf8'));
  for (let i = 0; i < 100 && !initGone(); i++) await new Promise((r) => setTimeout(r, 20));
  assert.ok(initGone());
  await sb.stop();
  w.links.remove(78);
});
