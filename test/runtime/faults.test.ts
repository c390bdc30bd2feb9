/**
 * Faults (issue #11 §4), as root with bwrap sandboxes:
 * - the host (bin/qubes-host) killed with -9 while a qube is starting, then
 *   started again: the registry is intact, and nothing of the killed run is
 *   left (processes, mounts, cgroups, network namespaces and veths, sockets);
 * - a qube that crashes in the middle of a call: that call fails, calls to
 *   the others go on;
 * - a DispVM whose call hangs is destroyed when its caller gives up.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BIN, ROOT, waitFor } from '../e2e/harness.js';
import { SandboxWorld, sandboxSkipReason } from './world.js';
import { detectCgroups } from '../../src/runtime/sandbox/index.js';
import { resourcePrefix } from '../../src/runtime/index.js';

const skip = sandboxSkipReason();
const HOST = path.join(ROOT, 'bin', 'qubes-host');

/** Pids of live processes whose command line mentions `dir`. */
function processesUsing(dir: string): number[] {
  const out: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      if (fs.readFileSync(`/proc/${e}/cmdline`, 'latin1').includes(dir) && !/\) Z /.test(fs.readFileSync(`/proc/${e}/stat`, 'utf8'))) out.push(Number(e));
    } catch {
      // exited
    }
  }
  return out;
}

/** What a run directory's host left on the machine, by its resource prefix and its directory. */
function leftovers(data: string, runDir: string): Record<string, string[]> {
  const prefix = resourcePrefix(runDir);
  const ip = (args: string[]): string => spawnSync('ip', args, { encoding: 'utf8' }).stdout ?? '';
  const cg = detectCgroups();
  const bases = cg.kind === 'v2' ? [cg.base] : cg.kind === 'v1' ? [...cg.bases.values()] : [];
  const sockets = (d: string): string[] => (fs.existsSync(d) ? (fs.readdirSync(d, { recursive: true }) as string[]).filter((f) => fs.lstatSync(path.join(d, f)).isSocket()) : []);
  return {
    processes: processesUsing(data).map(String),
    netns: ip(['netns', 'list']).split('\n').filter((l) => l.startsWith(prefix)),
    links: [...ip(['-o', 'link']).matchAll(/^\d+: ([^:@]+)[@:]/gm)].map((m) => m[1] as string).filter((l) => l.startsWith(prefix)),
    cgroups: bases.flatMap((b) => fs.readdirSync(b).filter((e) => e.startsWith(prefix)).map((e) => path.join(b, e))),
    mounts: fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(data)),
    sockets: [...sockets(path.join(runDir, 'qrexec')), ...sockets(path.join(runDir, 'vchan'))],
  };
}

const NOTHING = { processes: [], netns: [], links: [], cgroups: [], mounts: [], sockets: [] };

interface Host {
  readonly proc: ChildProcess;
  readonly exited: Promise<number | null>;
  out(): string;
  env: NodeJS.ProcessEnv;
}

async function startHost(data: string): Promise<Host> {
  const proc = spawn(process.execPath, [HOST, '--data-dir', data, '--no-demo-system'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, QREXEC_HOST_DIR: '' } });
  let out = '';
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => proc.once('exit', (c) => r(c)));
  await waitFor(() => Promise.resolve(/Ctrl-C stops every qube/.test(out) || proc.exitCode !== null), 100_000, 'the host up');
  assert.equal(proc.exitCode, null, out);
  return { proc, exited, out: () => out, env: { ...process.env, QREXEC_HOST_DIR: path.join(data, 'run') } };
}

function tool(h: Host, name: string, ...args: string[]): string {
  const r = spawnSync(BIN(name), args, { env: h.env, encoding: 'utf8', timeout: 90_000 });
  assert.equal(r.status, 0, `${name} ${args.join(' ')}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** SIGTERM: the host exits 0 and leaves nothing. */
async function stopCleanly(h: Host, data: string, runDir: string): Promise<void> {
  h.proc.kill('SIGTERM');
  assert.equal(await h.exited, 0, h.out());
  assert.deepEqual(leftovers(data, runDir), NOTHING);
}

async function killHost(h: Host): Promise<void> {
  if (h.proc.exitCode !== null) return;
  h.proc.kill('SIGKILL');
  await h.exited;
}

/** A fresh data dir (in a world-readable temp dir: the sandboxes bind parts of it) and a host on it with template `tpl`. */
async function hostWithTemplate(prefix: string): Promise<{ dir: string; data: string; runDir: string; h: Host }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.chmodSync(dir, 0o755);
  const data = path.join(dir, 'data');
  const h = await startHost(data);
  tool(h, 'qvm-create', '-C', 'TemplateVM', '-l', 'black', 'tpl');
  tool(h, 'qubes-prefs', 'default_template', 'tpl');
  return { dir, data, runDir: path.join(data, 'run'), h };
}

void test('the host killed (-9) while a qube starts, then started again: the registry is intact and nothing is leaked', { skip: skip ?? false, timeout: 300_000 }, async () => {
  const w = await hostWithTemplate('qhf-');
  const { dir, data, runDir } = w;
  let h = w.h;
  try {
    tool(h, 'qvm-create', '-l', 'red', '--prop', 'provides_network=True', 'sys-net');
    tool(h, 'qvm-prefs', 'sys-net', 'netvm', 'none');
    tool(h, 'qubes-prefs', 'default_netvm', 'sys-net');
    tool(h, 'qvm-create', '-l', 'blue', 'work');
    tool(h, 'qvm-prefs', 'work', 'maxmem', '400');
    tool(h, 'qvm-features', 'work', 'my-feature', 'kept');
    const listing = (x: Host): string => tool(x, 'qvm-ls', '--raw-data', '-O', 'name,class,label,template,netvm,ip', '--all');
    const before = listing(h);
    // qvm-start work: sys-net first, then work's sandbox; the host is killed once work's sandbox exists
    const starting = spawn(BIN('qvm-start'), ['work'], { env: h.env, stdio: 'ignore' });
    const startEnded = new Promise((r) => starting.once('exit', r));
    const sandboxOf = (name: string): boolean => processesUsing(path.join(runDir, 'sandboxes', name)).length > 0;
    await waitFor(() => Promise.resolve(sandboxOf('work')), 60_000, "work's sandbox");
    assert.match(tool(h, 'qvm-ls', '--raw-data', '-O', 'name,state', 'work'), /^work\|(Transient|Running)$/m);
    h.proc.kill('SIGKILL');
    await h.exited;
    await startEnded;
    // the sandboxes die with the host (their lifeline)
    await waitFor(() => Promise.resolve(processesUsing(data).length === 0), 20_000, `no process of the killed host (${processesUsing(data).join(' ')})`);

    h = await startHost(data);
    assert.equal(listing(h), before, 'the registry is intact');
    assert.equal(tool(h, 'qvm-features', 'work', 'my-feature'), 'kept\n');
    assert.equal(tool(h, 'qvm-ls', '--running', '--raw-list'), 'dom0\n', 'every qube is Halted after the restart');
    // the killed run's network namespaces, veths, cgroups and sockets are gone
    assert.deepEqual(leftovers(data, runDir), { ...NOTHING, processes: leftovers(data, runDir).processes });
    // and the qube starts and answers
    tool(h, 'qvm-start', 'work');
    assert.equal(tool(h, 'qvm-run', '-p', 'work', 'hostname'), 'work\n');
    await stopCleanly(h, data, runDir);
  } finally {
    await killHost(h);
    await waitFor(() => Promise.resolve(processesUsing(data).length === 0), 20_000, 'nothing left').catch(() => undefined);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

const SLOW = '#!/bin/sh\necho started\nexec sleep 1000\n';
const ECHO = '#!/bin/sh\nread x; echo "got $x from $(hostname)"\n';

void test('a qube that crashes in the middle of a call: that call fails at once, calls to the other qubes go on', { skip: skip ?? false, timeout: 120_000 }, async () => {
  const w = await SandboxWorld.create(
    [
      { name: 'work', domid: 1, uuid: '11111111-1111-4111-8111-111111111111' },
      { name: 'other', domid: 2, uuid: '22222222-2222-4222-8222-222222222222' },
    ],
    'test.Slow * @anyvm @anyvm allow\ntest.Echo * @anyvm @anyvm allow\n* * @anyvm @anyvm deny\n',
  );
  try {
    w.templateService('test.Slow', SLOW);
    w.templateService('test.Echo', ECHO);
    const work = await w.start('work');
    await w.start('other');
    await w.hostReady();
    const env = w.hostEnv();
    const slow = spawn(BIN('qrexec-client'), [`--socket-dir=${w.sockDir}`, '-d', 'work', 'DEFAULT:QUBESRPC test.Slow+ dom0'], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    slow.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const slowDone = new Promise<number | null>((r) => slow.once('exit', (c) => r(c)));
    // a call to the other qube, under way while work crashes
    const other = w.call('other', 'DEFAULT:QUBESRPC test.Echo+ dom0', 'before\n');
    await waitFor(() => Promise.resolve(out === 'started\n'), 30_000, 'the call under way');
    // the crash: every process of work's sandbox killed at once
    for (const p of work.pids()) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // gone
      }
    }
    const t0 = Date.now();
    let timer: NodeJS.Timeout | undefined;
    const code = await Promise.race([slowDone, new Promise<string>((r) => (timer = setTimeout(() => r('hung'), 20_000)))]);
    clearTimeout(timer);
    assert.notEqual(code, 'hung', 'the call to the crashed qube ends');
    assert.notEqual(code, 0, 'and fails');
    assert.ok(Date.now() - t0 < 20_000);
    assert.equal((await other).stdout.toString(), 'got before from other\n');
    const after = await w.call('other', 'DEFAULT:QUBESRPC test.Echo+ dom0', 'after\n');
    assert.equal(after.stdout.toString(), 'got after from other\n', after.stderr);
    // work can start again and serve calls
    await w.stop('work');
    await w.start('work');
    const again = await w.call('work', 'DEFAULT:QUBESRPC test.Echo+ dom0', 'again\n');
    assert.equal(again.stdout.toString(), 'got again from work\n', again.stderr);
    if (slow.exitCode === null) slow.kill('SIGKILL');
  } finally {
    await w.close();
  }
});

void test('a DispVM whose call hangs is destroyed when its caller gives up (killed at its timeout): no DispVM, sandbox or process left', { skip: skip ?? false, timeout: 300_000 }, async () => {
  const { dir, data, runDir, h } = await hostWithTemplate('qhd-');
  try {
    tool(h, 'qubes-prefs', 'default_netvm', '');
    tool(h, 'qvm-create', '-l', 'blue', 'work');
    tool(h, 'qvm-create', '-l', 'red', 'dvm');
    tool(h, 'qvm-prefs', 'dvm', 'template_for_dispvms', 'True');
    // the hanging service, in the disposable template's /usr/local (its DispVMs see a copy)
    const rpc = path.join(data, 'qubes', 'dvm', 'private', 'usrlocal', 'etc', 'qubes-rpc');
    tool(h, 'qvm-start', 'dvm');
    tool(h, 'qvm-shutdown', '--wait', 'dvm');
    fs.mkdirSync(rpc, { recursive: true });
    fs.writeFileSync(path.join(rpc, 'test.Hang'), SLOW, { mode: 0o755 });
    fs.writeFileSync(path.join(data, 'policy.d', '20-hang.policy'), 'test.Hang * work @dispvm:dvm allow\n');
    tool(h, 'qvm-start', 'work');
    const t0 = Date.now();
    // the caller in work gives up after 3 s (timeout kills its qrexec-client-vm)
    const r = spawnSync(BIN('qvm-run'), ['-p', 'work', 'timeout -s KILL 3 qrexec-client-vm @dispvm:dvm test.Hang; echo "caller: $?"'], { env: h.env, encoding: 'utf8', timeout: 90_000 });
    assert.match(r.stdout, /^started\ncaller: 137$/m, r.stdout + r.stderr);
    const dispvms = (): string[] => tool(h, 'qvm-ls', '--raw-data', '-O', 'name,class', '--all').split('\n').filter((l) => l.endsWith('|DispVM'));
    await waitFor(() => Promise.resolve(dispvms().length === 0), 30_000, `the DispVM destroyed (${dispvms().join(' ')})`);
    assert.ok(Date.now() - t0 < 60_000);
    assert.deepEqual(fs.readdirSync(path.join(runDir, 'sandboxes')).filter((n) => n.startsWith('disp')), [], 'its sandbox is gone');
    assert.deepEqual(processesUsing(path.join(runDir, 'sandboxes', 'disp')), []);
    await stopCleanly(h, data, runDir);
  } finally {
    await killHost(h);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
