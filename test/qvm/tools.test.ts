/**
 * Our qvm-* tools against an in-process qubesd. The expected outputs are
 * what the reference tools (qubes-core-admin-client) printed against the
 * same registry (recorded in docs/QUBESD.md); exit codes likewise.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { SocketTransport } from '../../src/qubesd-client/client.js';
import { runTool, QVM_LS, QVM_PREFS, QUBES_PREFS, QVM_TAGS, QVM_FEATURES, QVM_CHECK, QVM_CREATE, QVM_REMOVE, QVM_CLONE, QVM_START, QVM_KILL, type ToolSpec } from '../../src/qvm/index.js';
import { startTestQubesd, type TestQubesd } from '../qubesd/helpers.js';

let t: TestQubesd;
async function run(spec: ToolSpec, ...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await runTool(spec, argv, { out: (s) => (out += s), err: (s) => (err += s) }, new SocketTransport(t.sock));
  return { code, out, err };
}

before(async () => {
  t = await startTestQubesd();
  assert.equal((await run(QVM_CREATE, '-C', 'TemplateVM', '-l', 'black', 'fedora-41')).code, 0);
  assert.equal((await run(QUBES_PREFS, 'default_template', 'fedora-41')).code, 0);
  assert.equal((await run(QVM_CREATE, '-l', 'red', '--prop', 'provides_network=True', 'sys-net')).code, 0);
  assert.equal((await run(QVM_CREATE, '-l', 'blue', 'work')).code, 0);
  assert.equal((await run(QVM_PREFS, 'work', 'netvm', 'sys-net')).code, 0);
  assert.equal((await run(QVM_TAGS, 'work', 'add', 'proj-x')).code, 0);
});
after(() => t.close());

test('qvm-ls: the simple format, as the reference prints it', async () => {
  const r = await run(QVM_LS);
  assert.equal(r.code, 0);
  assert.equal(
    r.out,
    'NAME       STATE    CLASS       LABEL  TEMPLATE   NETVM\n' +
      'dom0       Running  AdminVM     black  -          -\n' +
      'fedora-41  Halted   TemplateVM  black  -          -\n' +
      'sys-net    Halted   AppVM       red    fedora-41  -\n' +
      'work       Halted   AppVM       blue   fedora-41  sys-net\n',
  );
});

test('qvm-ls: network format, raw data, raw list, tags and state filters, --exclude without --all', async () => {
  assert.equal(
    (await run(QVM_LS, '--format', 'network')).out,
    'NAME       STATE    NETVM    IP          IPBACK  GATEWAY\n' +
      'dom0       Running  -        -           -       -\n' +
      'fedora-41  Halted   -        -           -       -\n' +
      'sys-net    Halted   -        10.137.0.2  -       -\n' +
      'work       Halted   sys-net  10.137.0.3  -       10.137.0.2\n',
  );
  assert.equal((await run(QVM_LS, '--raw-data', '--fields', 'name,state,label')).out, 'dom0|Running|black\nfedora-41|Halted|black\nsys-net|Halted|red\nwork|Halted|blue\n');
  assert.equal((await run(QVM_LS, '--raw-list')).out, 'dom0\nfedora-41\nsys-net\nwork\n');
  assert.equal((await run(QVM_LS, '--raw-list', '--tags', 'proj-x')).out, 'work\n');
  assert.equal((await run(QVM_LS, '--raw-list', '--running')).out, 'dom0\n');
  assert.equal((await run(QVM_LS, '--raw-list', '--all', '--exclude', 'work')).out, 'dom0\nfedora-41\nsys-net\n');
  assert.equal((await run(QVM_LS, '--raw-data', '--fields', 'name,flags')).out, 'dom0|0rU-----\nfedora-41|t-U-----\nsys-net|a--N----\nwork|a-------\n');
  const ex = await run(QVM_LS, '--exclude', 'work');
  assert.equal(ex.code, 2);
  assert.match(ex.err, /qvm-ls: error: --exclude can only be used with --all\n$/);
  const nosuch = await run(QVM_LS, 'nosuch');
  assert.equal(nosuch.code, 2);
  assert.match(nosuch.err, /qvm-ls: error: no such domain: 'nosuch'\n$/);
});

test('qvm-prefs: listing, one property, set, reset, errors', async () => {
  const all = (await run(QVM_PREFS, 'work')).out.split('\n');
  assert.ok(all.includes('label                 -  blue'));
  assert.ok(all.includes('netvm                 -  sys-net'));
  assert.ok(all.includes('autostart             D  False'));
  assert.ok(all.includes('backup_timestamp      U'));
  assert.ok(all.includes('default_dispvm        D  None'));
  assert.equal((await run(QVM_PREFS, 'work', 'netvm')).out, 'sys-net\n');
  assert.equal((await run(QVM_PREFS, 'work', 'netvm', 'none')).code, 0);
  assert.equal((await run(QVM_PREFS, 'work', 'netvm')).out, '');
  assert.equal((await run(QVM_PREFS, '-D', 'work', 'netvm')).code, 0);
  const bad = await run(QVM_PREFS, 'work', 'vcpus', 'zero');
  assert.deepEqual([bad.code, bad.err], [1, 'qvm-prefs: error: Failed to parse property value as int\n']);
  const nope = await run(QVM_PREFS, 'work', 'nosuchprop');
  assert.equal(nope.code, 2);
  assert.match(nope.err, /qvm-prefs: error: no such property: 'nosuchprop'\n$/);
  assert.equal((await run(QUBES_PREFS, 'default_template')).out, 'fedora-41\n');
  assert.equal((await run(QVM_PREFS, 'work', 'netvm', 'sys-net')).code, 0);
});

test('qvm-tags, qvm-features, qvm-check exit codes', async () => {
  assert.equal((await run(QVM_TAGS, 'work')).out, 'audiovm-dom0\ncreated-by-dom0\nguivm-dom0\nproj-x\n');
  assert.deepEqual(await run(QVM_TAGS, 'work', 'list', 'proj-x'), { code: 0, out: 'proj-x\n', err: '' });
  assert.equal((await run(QVM_TAGS, 'work', 'list', 'absent')).code, 1);
  assert.equal((await run(QVM_TAGS, 'work', 'del', 'absent')).code, 0);
  assert.deepEqual(await run(QVM_TAGS, 'work', 'add', 'bad.tag'), { code: 1, out: '', err: 'qvm-tags: error: disallowed characters\n' });
  assert.equal((await run(QVM_FEATURES, 'fedora-41', 'os', 'Linux')).code, 0);
  assert.equal((await run(QVM_FEATURES, 'fedora-41', 'qrexec', '1')).code, 0);
  assert.equal((await run(QVM_FEATURES, 'fedora-41')).out, 'os      Linux\nqrexec  1\n');
  assert.deepEqual(await run(QVM_FEATURES, 'fedora-41', 'absent'), { code: 1, out: '', err: '' });
  assert.deepEqual(await run(QVM_CHECK, 'work'), { code: 0, out: '', err: 'qvm-check: work: exists\n' });
  assert.deepEqual(await run(QVM_CHECK, 'work', 'nosuch'), { code: 1, out: '', err: 'qvm-check: work: exists\nqvm-check: nosuch: non-existent!\n' });
  assert.equal((await run(QVM_CHECK, '--running', 'work')).code, 1);
  assert.equal((await run(QVM_CHECK, '--template', 'fedora-41', 'work')).code, 3);
  assert.equal((await run(QVM_CHECK, '-q', '--networked', 'work')).code, 0);
});

test('qvm-create errors, qvm-clone, qvm-remove of a qube in use', async () => {
  const pink = await run(QVM_CREATE, '-l', 'pink', 'x1');
  assert.equal(pink.code, 2);
  assert.match(pink.err, /qvm-create: error: no such label: 'pink'; available: red, orange, yellow, green, gray, blue, purple, black\n$/);
  assert.deepEqual(await run(QVM_CREATE, '-l', 'red', 'work'), { code: 1, out: '', err: 'app: Error creating VM: Qube already exists: work\n' });
  assert.equal((await run(QVM_CLONE, 'work', 'work2')).code, 0);
  assert.equal((await run(QVM_PREFS, 'work2', 'netvm')).out, 'sys-net\n');
  assert.equal((await run(QVM_TAGS, 'work2', 'list', 'proj-x')).code, 0);
  const inUse = await run(QVM_REMOVE, '-f', 'sys-net');
  assert.equal(inUse.code, 1);
  assert.equal(
    inUse.err,
    "VM sys-net cannot be removed. It is in use as:\n - netvm for work\n - netvm for work2\nqvm-remove: error: Domain is in use: 'sys-net';  see 'journalctl -u qubesd -e' in dom0 for details\n",
  );
  assert.equal((await run(QVM_REMOVE, '-f', 'work2')).code, 0);
  assert.equal((await run(QVM_LS, '--raw-list')).out, 'dom0\nfedora-41\nsys-net\nwork\n');
});

test('qvm-start without a runtime fails with the reference message; qvm-kill of a halted qube is not an error', async () => {
  const r = await run(QVM_START, 'work');
  assert.equal(r.code, 1);
  assert.equal(r.err, 'Error: Starting qube failed: work: Start failed: qubesd runs without a runtime backend (--runtime none)\n');
  assert.equal((await run(QVM_KILL, 'work')).code, 0);
  assert.equal((await run(QVM_START)).code, 2);
});
