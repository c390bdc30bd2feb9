/**
 * The host process (`npm start`, bin/qubes-host): the real qubesd, policy
 * daemon and qrexec daemons in one process, the demo system, the tour run
 * exactly as printed, a second start finding the same qubes, SIGTERM and
 * kill -9 leaving nothing running. As root the qubes are bwrap sandboxes;
 * elsewhere the host falls back (loudly) to the process backend.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BIN, ROOT, waitFor } from '../e2e/harness.js';
import { sandboxSupport } from '../../src/runtime/sandbox/index.js';

const bwrap = sandboxSupport().ok;
const HOST = path.join(ROOT, 'bin', 'qubes-host');

function tmp(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-'));
  fs.chmodSync(d, 0o755);
  return d;
}

/** Pids of processes whose command line mentions `dir` (the host's sandboxes, agents, daemons). */
function processesUsing(dir: string): number[] {
  const out: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      if (fs.readFileSync(`/proc/${e}/cmdline`, 'latin1').includes(dir)) out.push(Number(e));
    } catch {
      // exited
    }
  }
  return out;
}

function once(data: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [HOST, '--data-dir', data, '--once'], { encoding: 'utf8', timeout: 110_000, env: { ...process.env, QREXEC_HOST_DIR: '' } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const noWarnings = (text: string): void => {
  const lines = text.split('\n').filter((l) => /warning|error|WARNING/.test(l) && !/expected \d+ and output/.test(l));
  if (bwrap) assert.deepEqual(lines, [], 'no warnings');
};

void test('npm start --once: the demo system at first start, the tour as printed (ask answered, policy edit), a second start finds the same qubes', { timeout: 240_000 }, () => {
  const dir = tmp();
  const data = path.join(dir, 'data');
  try {
    const a = once(data);
    assert.equal(a.status, 0, a.stdout + a.stderr);
    noWarnings(a.stdout + a.stderr);
    assert.match(a.stdout, /demo system created/);
    // the services' default policy, as shipped, and recorded as installed
    assert.equal(fs.readFileSync(path.join(data, 'policy.d', '80-services-default.policy'), 'utf8'), fs.readFileSync(path.join(ROOT, 'policy', '80-services-default.policy'), 'utf8'));
    assert.equal(fs.readFileSync(path.join(data, 'policy.d', '.qrexec-ts-installed-defaults'), 'utf8'), '80-services-default.policy\n');
    assert.match(a.stdout, bwrap ? /runtime bwrap: each qube is a bubblewrap sandbox/ : /WARNING: the bwrap runtime cannot run here/);
    assert.match(a.stdout, /running: sys-audio, sys-gui, sys-net, work/);
    // the GUI domain's web app, through the proxy on loopback, with its login token
    assert.match(a.stdout, /^qubes-host: sys-gui: open http:\/\/127\.0\.0\.1:\d+\/\?token=[0-9a-f]{48}$/m);
    assert.match(a.stdout, /^\$ bin\/qvm-ls/m);
    for (const q of ['sys-net', 'work', 'personal', 'vault', 'default-dvm']) assert.match(a.stdout, new RegExp(`^${q} `, 'm'));
    if (bwrap) assert.match(a.stdout, /cat \/etc\/hostname'.*\nwork\n\[exit status 0\]/);
    // the ask at the host's terminal, answered; the call (a file copy, with qvm-copy) went through
    assert.match(a.stdout, /work wants to call (qubes\.Filecopy|qubes\.VMExec\+cat)\. Allow it[^]*Allowed to personal\.\n(.*\n)?\[exit status 0\]/);
    assert.match(a.stdout, /^hello from work$/m);
    assert.match(a.stdout, /"rule": "30-user\.policy:1"/, 'the edited policy decides');
    assert.match(a.stdout, /"rule": "30-user\.policy:1"/);
    assert.match(a.stdout, /every tour step worked/);
    // stopped: nothing of it runs, its host.json and qrexec sockets are gone
    assert.deepEqual(processesUsing(data), []);
    assert.equal(fs.existsSync(path.join(data, 'run', 'host.json')), false);
    assert.deepEqual(fs.readdirSync(path.join(data, 'run', 'qrexec')), []);
    const qubesOf = (out: string): string[] => out.split('\n').filter((l) => /^(dom0|sys-net|work|personal|vault|default-dvm|[a-z]+-\d+) +(Running|Halted)/.test(l)).map((l) => l.split(/ +/)[0] as string);

    const b = once(data);
    assert.equal(b.status, 0, b.stdout + b.stderr);
    noWarnings(b.stdout + b.stderr);
    assert.doesNotMatch(b.stdout, /demo system created/);
    assert.deepEqual(qubesOf(b.stdout), qubesOf(a.stdout), 'the same qubes');
    // the policy edit of the first run was kept: no question this time
    assert.doesNotMatch(b.stdout, /wants to call/);
    assert.deepEqual(processesUsing(data), []);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

function startHost(data: string): { proc: ReturnType<typeof spawn>; out: () => string } {
  const proc = spawn(process.execPath, [HOST, '--data-dir', data], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, QREXEC_HOST_DIR: '' } });
  let out = '';
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  return { proc, out: () => out };
}

void test('SIGTERM shuts every qube down; kill -9 leaves nothing running and the next start cleans up', { timeout: 240_000 }, async () => {
  const dir = tmp();
  const data = path.join(dir, 'data');
  try {
    const h = startHost(data);
    const exited = new Promise<number | null>((r) => h.proc.once('exit', (c) => r(c)));
    await waitFor(() => Promise.resolve(/Ctrl-C stops every qube/.test(h.out())), 100_000, 'the host up');
    assert.ok(processesUsing(data).length > 0, 'its qubes run');
    // the tour's first command, exactly as printed, against this host
    const line = h.out().split('\n').find((l) => l.trim().startsWith('export QREXEC_HOST_DIR='));
    assert.ok(line, h.out());
    const ls = spawnSync('/bin/sh', ['-c', `${line.trim()}; bin/qvm-ls --running --raw-list`], { cwd: ROOT, encoding: 'utf8' });
    assert.equal(ls.stdout, 'dom0\nsys-audio\nsys-gui\nsys-net\nwork\n', ls.stderr);
    // sys-gui's web app answers through the proxy: the login page without the token, the app with it
    const url = /sys-gui: open (http:\/\/127\.0\.0\.1:\d+)\/\?token=(\w+)/.exec(h.out());
    assert.ok(url, h.out());
    assert.equal((await fetch(`${url[1]}/`)).status, 401);
    const app = await fetch(`${url[1]}/?token=${url[2]}`, { redirect: 'manual' });
    assert.ok(app.status === 200 || app.status === 303, `status ${app.status}`);
    assert.match(h.out(), /the policy asks, answer in the browser/);
    // a service running as the qube's user keeps the vchan transport's settings (for the agent library's calls)
    const env = spawnSync('/bin/sh', ['-c', `${line.trim()}; bin/qvm-run -p work 'echo "$VCHAN_DOMAIN $VCHAN_SOCKET_DIR"'`], { cwd: ROOT, encoding: 'utf8' });
    assert.match(env.stdout, bwrap ? /^\d+ \/run\/vchan\n$/ : /^\d+ \/\S+\n$/, env.stderr);
    h.proc.kill('SIGTERM');
    assert.equal(await exited, 0, h.out());
    assert.match(h.out(), /shutting every qube down/);
    noWarnings(h.out());
    assert.deepEqual(processesUsing(data), []);

    const k = startHost(data);
    await waitFor(() => Promise.resolve(/Ctrl-C stops every qube/.test(k.out())), 100_000, 'the host up again');
    const before = processesUsing(data);
    assert.ok(before.length > 0);
    k.proc.kill('SIGKILL');
    // the sandboxes (their lifeline) and the agents die with the host
    await waitFor(() => Promise.resolve(processesUsing(data).length === 0), 20_000, `no process of the killed host left (${processesUsing(data).join(' ')})`);
    assert.ok(fs.existsSync(path.join(data, 'run', 'host.json')), 'a stale host.json is left');
    const again = once(data);
    assert.equal(again.status, 0, again.stdout + again.stderr);
    noWarnings(again.stdout + again.stderr);
    assert.match(again.stdout, /every tour step worked/);
    assert.deepEqual(processesUsing(data), []);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

void test('qubes-host: --help, usage errors exit 2, a second host on the same run dir is refused', { timeout: 60_000 }, async () => {
  const help = spawnSync(HOST, ['--help'], { encoding: 'utf8' });
  assert.equal(help.status, 0);
  assert.match(help.stdout, /^usage: qubes-host/);
  const bad = spawnSync(HOST, ['--runtime', 'xen'], { encoding: 'utf8' });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /invalid choice: 'xen'/);
  const dir = tmp();
  const data = path.join(dir, 'data');
  try {
    const h = startHost(data);
    const exited = new Promise<number | null>((r) => h.proc.once('exit', (c) => r(c)));
    await waitFor(() => Promise.resolve(/Ctrl-C stops every qube/.test(h.out())), 100_000, 'the host up');
    const second = spawnSync(HOST, ['--data-dir', data, '--once'], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(second.status, 1);
    assert.match(second.stderr, /^qubes-host: error: another host \(pid \d+\) runs with /m);
    assert.doesNotMatch(second.stderr, /\n\s+at /, 'no stack trace');
    h.proc.kill('SIGTERM');
    assert.equal(await exited, 0);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

void BIN;
