/**
 * The qvm-* commands' blocking socket transport (SocketTransport with the
 * native addon's system calls): against bin/qubesd in its own process (in
 * this process it would wait for itself), calls made together are all in
 * flight and each gets its own reply, exceptions and transport errors are
 * what the event-loop transport reports, and bin/qvm-ls prints the same
 * with and without it.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { AdminError, AdminTransportError, SocketTransport } from '../../src/qubesd-client/client.js';
import { loadNative } from '../../src/native/addon.js';
import { startQubesdProcess } from './helpers.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const native = loadNative();
const opts = { skip: native ? false : 'the native addon is not built', timeout: 60_000 };

let dir: string;
let sock: string;
let qd: ChildProcess;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qubesd-blocking-'));
  sock = path.join(dir, 'run', 'qubesd.sock');
  qd = await startQubesdProcess(dir);
  const t = new SocketTransport(sock);
  await t.call('dom0', 'admin.vm.Create.TemplateVM', '', 'name=tpl label=black');
  await t.call('dom0', 'admin.property.Set', 'default_template', 'tpl');
  for (let i = 0; i < 30; i++) await t.call('dom0', 'admin.vm.Create.AppVM', '', `name=q${i} label=${i % 2 ? 'red' : 'blue'}`);
});

after(async () => {
  qd.kill('SIGTERM');
  if (qd.exitCode === null) await new Promise((r) => qd.once('exit', r));
  fs.rmSync(dir, { recursive: true, force: true });
});

const outcome = (p: Promise<string>): Promise<string> =>
  p.then(
    (v) => `ok ${v}`,
    (e: unknown) => (e instanceof AdminError ? `exc ${e.excType} ${e.message}` : e instanceof AdminTransportError ? `transport ${e.message}` : `other ${String(e)}`),
  );

test('calls made together (sent together, replies read in order) each get their own reply, as over net.Socket', opts, async () => {
  const blocking = new SocketTransport(sock, 'dom0', native ?? undefined);
  const plain = new SocketTransport(sock);
  const calls: [string, string, string?, string?][] = [];
  for (let i = 0; i < 30; i++) {
    calls.push([`q${i}`, 'admin.vm.property.GetAll']);
    calls.push([`q${i}`, 'admin.vm.property.Get', 'label']);
  }
  calls.push(['nosuch', 'admin.vm.property.Get', 'label']);
  calls.push(['q1', 'admin.vm.property.Get', 'no_such_property']);
  // a payload over one read's worth, and a reply of many reads (admin.vm.List of 33 qubes is small, GetAll several KiB)
  calls.push(['dom0', 'admin.vm.feature.Set', 'big', 'x'.repeat(60000)]);
  const want = await Promise.all(calls.map(([d, m, a, p]) => outcome(plain.call(d, m, a, p))));
  const got = await Promise.all(calls.map(([d, m, a, p]) => outcome(blocking.call(d, m, a, p))));
  // (only calls whose answer does not depend on the order they run in)
  assert.deepEqual(got, want);
  assert.match(got[0] as string, /^ok .*\nlabel default=False type=label blue\n/s);
  assert.equal(got[60], "exc QubesVMNotFoundError No such domain: 'nosuch'");
  assert.match(got[61] as string, /^exc QubesNoSuchPropertyError /);
});

test('no qubesd: the same error as over net.Socket', opts, async () => {
  const gone = path.join(dir, 'run', 'gone.sock');
  const a = await outcome(new SocketTransport(gone, 'dom0', native ?? undefined).call('dom0', 'admin.vm.List'));
  const b = await outcome(new SocketTransport(gone).call('dom0', 'admin.vm.List'));
  assert.equal(a, b);
  assert.match(a, /^transport Failed to connect to qubesd service: /);
});

test('bin/qvm-ls (blocking calls) prints what it prints without the addon', opts, () => {
  const run = (extra: Record<string, string>): string => {
    const r = spawnSync(process.execPath, [path.join(ROOT, 'bin/qvm-ls'), '--format', 'full'], { env: { ...process.env, QUBESD_SOCKET: sock, ...extra }, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    return r.stdout;
  };
  const withAddon = run({});
  assert.equal(withAddon.split('\n').length, 34);
  assert.equal(withAddon, run({ QREXEC_TS_NO_NATIVE: '1' }));
});
