/**
 * qubes.Filecopy end to end, with real qubes (qubesd's process runtime, real
 * agents and qrexec daemons, a real policy daemon): dom0's qvm-copy-to-vm,
 * a qube's qvm-copy-to-vm / qvm-move-to-vm to another qube under policy,
 * refusals (policy, receiver), and qubes.GetDate from a qube to dom0.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT, startSystem, type TestSystem } from './system.js';

let sys: TestSystem;

before(async () => {
  sys = await startSystem({
    policy:
      'qubes.Filecopy  *  work  personal  allow\n' +
      'qubes.Filecopy  *  @anyvm  @anyvm  deny\n' +
      'qubes.GetDate   *  @anyvm  @adminvm  allow target=dom0\n',
  });
  for (const args of [['-C', 'TemplateVM', '-l', 'black', 'fedora'], ['-t', 'fedora', '-l', 'blue', 'work'], ['-t', 'fedora', '-l', 'green', 'personal'], ['-t', 'fedora', '-l', 'black', 'vault']]) {
    const r = await sys.dom0('qvm-create', args);
    assert.equal(r.code, 0, r.err);
  }
  for (const q of ['work', 'personal', 'vault']) assert.equal((await sys.dom0('qvm-start', [q])).code, 0);
});
after(() => sys.close());

const inWork = (prog: string, args: string[], input = ''): ReturnType<TestSystem['inQube']> => sys.inQube('work', path.join(ROOT, 'bin', prog), args, { input });

test('dom0 qvm-copy-to-vm: files and a directory land in the qube, in ~/QubesIncoming/dom0/', { timeout: 60_000 }, async () => {
  const src = path.join(sys.dir, 'dom0-files');
  fs.mkdirSync(path.join(src, 'docs'), { recursive: true });
  fs.writeFileSync(path.join(src, 'docs', 'report.txt'), 'quarterly\n');
  fs.writeFileSync(path.join(src, 'note'), 'n');
  const r = await sys.dom0('qvm-copy-to-vm', ['work', path.join(src, 'docs'), path.join(src, 'note')]);
  assert.equal(r.code, 0, r.err);
  const inc = path.join(sys.home('work'), 'QubesIncoming', 'dom0');
  assert.equal(fs.readFileSync(path.join(inc, 'docs', 'report.txt'), 'utf8'), 'quarterly\n');
  assert.equal(fs.readFileSync(path.join(inc, 'note'), 'utf8'), 'n');
  const dom0Copy = await sys.dom0('qvm-copy', [path.join(src, 'note')]);
  assert.deepEqual([dom0Copy.code, dom0Copy.out], [1, 'qvm-copy is not supported in dom0; use qvm-copy-to-vm instead.\n']);
  const usage = await sys.dom0('qvm-copy-to-vm', ['work']);
  assert.equal(usage.code, 2);
});

test('in a qube: qvm-copy-to-vm to another qube under policy; the source keeps its files', { timeout: 60_000 }, async () => {
  const home = sys.home('work');
  fs.mkdirSync(path.join(home, 'project', 'src'), { recursive: true });
  fs.writeFileSync(path.join(home, 'project', 'src', 'main.c'), 'int main(void) { return 0; }\n');
  fs.symlinkSync('src/main.c', path.join(home, 'project', 'entry'));
  const r = await inWork('qvm-copy-to-vm', ['--without-progress', 'personal', 'project']);
  assert.equal(r.code, 0, r.err);
  assert.match(r.err, /use qvm-copy\/qvm-move instead of qvm-copy-to-vm\/qvm-move-to-vm/);
  const inc = path.join(sys.home('personal'), 'QubesIncoming', 'work', 'project');
  assert.equal(fs.readFileSync(path.join(inc, 'src', 'main.c'), 'utf8'), 'int main(void) { return 0; }\n');
  assert.equal(fs.readlinkSync(path.join(inc, 'entry')), 'src/main.c');
  assert.ok(fs.existsSync(path.join(home, 'project', 'src', 'main.c')));
  // the same again: the receiver refuses to replace, the sender says so
  const again = await inWork('qvm-copy-to-vm', ['personal', 'project']);
  assert.notEqual(again.code, 0);
  assert.match(again.err, /A file named "project\/(entry|src\/main\.c)" already exists in QubesIncoming dir/);
});

test('in a qube: qvm-move-to-vm removes the source only after the copy succeeded', { timeout: 60_000 }, async () => {
  const home = sys.home('work');
  fs.writeFileSync(path.join(home, 'moving.txt'), 'bye');
  const r = await inWork('qvm-move-to-vm', ['personal', 'moving.txt']);
  assert.equal(r.code, 0, r.err);
  assert.ok(!fs.existsSync(path.join(home, 'moving.txt')));
  assert.equal(fs.readFileSync(path.join(sys.home('personal'), 'QubesIncoming', 'work', 'moving.txt'), 'utf8'), 'bye');
  fs.writeFileSync(path.join(home, 'stays.txt'), 'kept');
  const denied = await inWork('qvm-move-to-vm', ['vault', 'stays.txt']);
  assert.equal(denied.code, 126);
  assert.match(denied.err, /Request refused/);
  assert.ok(fs.existsSync(path.join(home, 'stays.txt')), 'a refused move keeps the file');
  assert.ok(!fs.existsSync(path.join(sys.home('vault'), 'QubesIncoming')));
});

test('in a qube: a symlink leaving the copied tree is refused before anything is sent; odd names use +allow-all-names', { timeout: 60_000 }, async () => {
  const home = sys.home('work');
  fs.mkdirSync(path.join(home, 'leaky'));
  fs.symlinkSync('/etc/passwd', path.join(home, 'leaky', 'pw'));
  const r = await inWork('qvm-copy-to-vm', ['personal', 'leaky']);
  assert.equal(r.code, 1);
  assert.match(r.err, /Cannot verify that link at "leaky\/pw" would not be broken by copy/);
  assert.ok(!fs.existsSync(path.join(sys.home('personal'), 'QubesIncoming', 'work', 'leaky')));
  const odd = 'tab\there';
  fs.writeFileSync(path.join(home, odd), 'odd');
  const o = await inWork('qvm-copy-to-vm', ['personal', odd]);
  assert.equal(o.code, 0, o.err);
  assert.equal(fs.readFileSync(path.join(sys.home('personal'), 'QubesIncoming', 'work', odd), 'utf8'), 'odd');
});

test('qubes.GetDate: a qube asks dom0 for the time', { timeout: 60_000 }, async () => {
  const r = await sys.inQube('work', path.join(ROOT, 'bin/qrexec-client-vm'), [`--agent-socket=${path.join(sys.dataDir, 'qubes', 'work', 'agent.sock')}`, 'dom0', 'qubes.GetDate']);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00\n$/);
  const t = Date.parse(r.out.trim());
  assert.ok(Math.abs(t - Date.now()) < 60_000);
});
