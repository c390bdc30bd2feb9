/**
 * qvm-run in dom0 against a real qubesd (process runtime: real agents and
 * qrexec daemons): autostart through admin.vm.Start, --no-autostart, paused
 * qubes, -p with stdin/stdout and the remote exit status, the reference's
 * messages and exit codes, argument quoting, --service, --dispvm[=T]
 * (admin.vm.CreateDisposable, killed and removed at the end), usage errors.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { encodeForVmexec, shellQuote } from '../../src/qvm/index.js';
import { startSystem, type TestSystem } from './system.js';

let sys: TestSystem;
const qvm = (name: string, ...args: string[]): ReturnType<TestSystem['dom0']> => sys.dom0(name, args);

before(async () => {
  sys = await startSystem();
  for (const args of [
    ['-C', 'TemplateVM', '-l', 'black', 'fedora'],
    ['-l', 'blue', 'work'],
    ['-l', 'green', 'personal'],
    ['-l', 'red', '--prop', 'template_for_dispvms=True', 'default-dvm'],
  ]) {
    const r = await qvm('qvm-create', ...(args[0] === '-C' ? args : ['-t', 'fedora', ...args]));
    assert.equal(r.code, 0, r.err);
  }
  assert.equal((await qvm('qubes-prefs', 'default_dispvm', 'default-dvm')).code, 0);
});
after(() => sys.close());

const state = async (q: string): Promise<string> => (await qvm('qvm-ls', '--raw-data', '--fields', 'state', q)).out.trim();

test('qvm-run -p starts a halted qube (admin.vm.Start), passes stdin and stdout, exits with the remote status', { timeout: 60_000 }, async () => {
  assert.equal(await state('work'), 'Halted');
  const r = await sys.dom0('qvm-run', ['-p', 'work', 'read x; echo "got $x from $QREXEC_REMOTE_DOMAIN"; echo oops >&2; exit 3'], { input: 'hello\n' });
  assert.equal(r.code, 3);
  assert.equal(r.out, 'got hello from dom0\n');
  assert.equal(r.err, 'oops\n');
  assert.equal(await state('work'), 'Running');
});

test('qvm-run without -p: no output passed, "Running ..." and "command failed" messages, exit status kept', { timeout: 60_000 }, async () => {
  const ok = await qvm('qvm-run', 'work', 'echo not-shown');
  assert.deepEqual([ok.code, ok.out, ok.err], [0, '', "Running 'echo not-shown' on work\n"]);
  const bad = await qvm('qvm-run', 'work', 'exit 5');
  assert.deepEqual([bad.code, bad.out, bad.err], [5, '', "Running 'exit 5' on work\nwork: command failed with code: 5\n"]);
  const quiet = await qvm('qvm-run', '-q', 'work', 'exit 4');
  assert.deepEqual([quiet.code, quiet.err], [4, '']);
});

test('qvm-run -p with stdout on a regular file still exits with the remote status (qrexec-client used to end with 13)', { timeout: 60_000 }, async () => {
  const file = path.join(sys.dir, 'out.txt');
  for (let i = 0; i < 4; i++) {
    const r = await sys.dom0('qvm-run', ['-p', 'work', `echo line${i}; exit 7`], { stdoutFile: file });
    assert.equal(r.code, 7, r.err);
    assert.equal(fs.readFileSync(file, 'utf8'), `line${i}\n`);
  }
});

test('qvm-run COMMAND ARG...: arguments quoted for the shell (qubes.VMShell, no vmexec feature)', { timeout: 60_000 }, async () => {
  const r = await qvm('qvm-run', '-p', 'work', 'printf', '%s|', 'a b', "c'd", '$HOME', '-x');
  assert.deepEqual([r.code, r.out], [0, "a b|c'd|$HOME|-x|"]);
  // options after the command are the command's (argparse.REMAINDER)
  const ls = await qvm('qvm-run', '-p', 'work', 'echo', '-p', '--no-autostart');
  assert.deepEqual([ls.code, ls.out], [0, '-p --no-autostart\n']);
});

test('qvm-run --no-autostart: a halted qube is not started (1), a paused one is not unpaused (1); without it, unpaused', { timeout: 60_000 }, async () => {
  const halted = await qvm('qvm-run', '-n', 'personal', 'true');
  assert.deepEqual([halted.code, halted.err], [1, "Qube 'personal' not started\n"]);
  assert.equal(await state('personal'), 'Halted');
  assert.equal((await qvm('qvm-pause', 'work')).code, 0);
  const paused = await qvm('qvm-run', '--no-auto', 'work', 'true');
  assert.deepEqual([paused.code, paused.err], [1, "Qube 'work' is paused\n"]);
  assert.equal(await state('work'), 'Paused');
  const r = await qvm('qvm-run', '-p', 'work', 'echo awake');
  assert.deepEqual([r.code, r.out], [0, 'awake\n']);
  assert.equal(await state('work'), 'Running');
});

test('qvm-run --service: any service of the qube, with its argument', { timeout: 60_000 }, async () => {
  const svc = path.join(sys.rpcDir('work'), 'test.Args');
  fs.writeFileSync(svc, '#!/bin/sh\necho "arg=$1 from=$QREXEC_REMOTE_DOMAIN"; cat\n', { mode: 0o755 });
  const r = await sys.dom0('qvm-run', ['-p', '--service', 'work', 'test.Args+xyz'], { input: 'in\n' });
  assert.deepEqual([r.code, r.out], [0, 'arg=xyz from=dom0\nin\n']);
  const missing = await qvm('qvm-run', '-p', '--service', 'work', 'test.Missing');
  assert.equal(missing.code, 127);
});

test('qvm-run --dispvm=T and --dispvm: a new DispVM runs the command and is gone afterwards', { timeout: 90_000 }, async () => {
  const before = (await qvm('qvm-ls', '--raw-list')).out;
  const r = await qvm('qvm-run', '--dispvm=default-dvm', '-p', 'pwd');
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /\/qubes\/disp\d+\/home\n$/);
  const d = await qvm('qvm-run', '--dispvm', '-p', '--', 'echo', 'from', 'default');
  assert.deepEqual([d.code, d.out], [0, 'from default\n']);
  const failing = await qvm('qvm-run', '--dispvm=default-dvm', '-p', 'exit 9');
  assert.equal(failing.code, 9);
  // killed, and qubesd removes a killed DispVM
  let after = '';
  for (let i = 0; i < 100; i++) {
    after = (await qvm('qvm-ls', '--raw-list')).out;
    if (after === before) break;
    await new Promise((res) => setTimeout(res, 100));
  }
  assert.equal(after, before);
});

test('qvm-run usage errors exit 2; an unknown qube is a usage error', { timeout: 60_000 }, async () => {
  const none = await qvm('qvm-run');
  assert.equal(none.code, 2);
  assert.match(none.err, /^usage: qvm-run /);
  const onlyCmd = await qvm('qvm-run', 'true');
  assert.deepEqual([onlyCmd.code, onlyCmd.err.split('\n').length], [2, 2]);
  const unknown = await qvm('qvm-run', 'nosuch', 'true');
  assert.equal(unknown.code, 2);
  assert.match(unknown.err, /qvm-run: error: no such domain: 'nosuch'\n$/);
  const both = await qvm('qvm-run', '--dispvm', '--all', 'true');
  assert.equal(both.code, 2);
  assert.match(both.err, /argument --all: not allowed with argument --dispvm/);
  const local = await qvm('qvm-run', '--localcmd', 'cat', 'work', 'true');
  assert.equal(local.code, 2);
  assert.match(local.err, /--localcmd have no effect without --pass-io/);
  const multi = await qvm('qvm-run', '--all', '-p', 'true');
  assert.equal(multi.code, 2);
  const help = await qvm('qvm-run', '--help');
  assert.equal(help.code, 0);
  assert.match(help.out, /--dispvm \[DISPOSABLE_TEMPLATE\]/);
});

test('qvm-run --all: every running qube, highest exit status', { timeout: 60_000 }, async () => {
  const r = await qvm('qvm-run', '--all', '--exclude', 'personal', 'test "$(pwd)" != x');
  assert.equal(r.code, 0, r.err);
  assert.match(r.err, /Running 'test "\$\(pwd\)" != x' on work\n/);
  assert.doesNotMatch(r.err, /on (personal|fedora|default-dvm)/);
});

test('shlex.quote and encode_for_vmexec as the reference', () => {
  assert.equal(shellQuote(''), "''");
  assert.equal(shellQuote('a-b_c.d/e:f,g=h+i@j%k'), 'a-b_c.d/e:f,g=h+i@j%k');
  assert.equal(shellQuote("it's"), `'it'"'"'s'`);
  assert.equal(shellQuote('é'), "'é'");
  assert.equal(encodeForVmexec(['test-vm', 'command', '--']), 'test--vm+command+----');
  assert.equal(encodeForVmexec(['a b', 'é']), 'a-20b+-C3-A9');
});
