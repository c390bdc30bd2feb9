// The real binaries with a fake qubesd that, like the real one, starts a
// qube's agent (and, for a DispVM, its qrexec-daemon) on admin.vm.Start and
// stops them on admin.vm.Kill: bin/qrexec-host autostarting a target and
// running a call in a new DispVM, bin/qrexec-client -k, and the refusals
// when qubesd is switched off.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdir, writeFile, access } from 'node:fs/promises';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { World, BIN, run, waitFor } from './harness.js';
import { qubeCall } from './caller.js';
import { FakeQubesd, ok, exc } from '../daemon/fake-qubesd.js';
import { fakePolicyDaemon } from '../daemon/peer.js';

let w: World;
let q: FakeQubesd;
let hostLog = '';
const uuid = (id: number): string => `00000000-0000-4000-8000-0000000000${String(id).padStart(2, '0')}`;
const DVM = uuid(9);
const DISP = uuid(5);
const exists = (p: string): Promise<boolean> => access(p).then(() => true, () => false);
/** The DispVM's agent and daemon, while it runs. */
let dispProcs: ChildProcess[] = [];

before(async () => {
  w = await World.create();
  const policyDir = join(w.dir, 'policy.d');
  await mkdir(policyDir);
  await writeFile(join(policyDir, '30-test.policy'), 'test.Echo * work vault allow\ntest.Echo * work @dispvm:dvm allow\ntest.NoStart * work halted allow\n');
  const dom = (type: string, u: string, extra: object = {}): object => ({ tags: [], type, template_for_dispvms: false, default_dispvm: null, icon: 'x', label: 'red', guivm: null, relayvm: null, transport_rpc: null, internal: null, power_state: 'Halted', uuid: u, ...extra });
  await writeFile(
    join(w.dir, 'system-info.json'),
    JSON.stringify({ domains: { dom0: dom('AdminVM', '00000000-0000-0000-0000-000000000000'), work: dom('AppVM', uuid(1)), vault: dom('AppVM', uuid(2)), halted: dom('AppVM', uuid(3)), dvm: dom('AppVM', DVM, { template_for_dispvms: true }) } }),
  );
  await w.service('vault', 'test.Echo', '#!/bin/sh\necho "vault from=$QREXEC_REMOTE_DOMAIN arg=$1"\ncat\n');
  await w.service('disp5', 'test.Echo', '#!/bin/sh\necho "disposable from=$QREXEC_REMOTE_DOMAIN arg=$1"\ncat\n');
  q = await FakeQubesd.listen(join(w.dir, 'qubesd.sock'), async (r) => {
    if (r.method === 'admin.vm.Start' && r.dest === `uuid:${uuid(2)}`) {
      await w.agent(2, 'vault');
      return ok();
    }
    if (r.method === 'admin.vm.Start' && r.dest === `uuid:${uuid(3)}`) return exc('QubesVMError', 'halted cannot start');
    if (r.method === 'admin.vm.CreateDisposable' && r.dest === `uuid:${DVM}` && r.payload === 'uuid') return ok(`uuid:${DISP}`);
    if (r.method === 'admin.vm.Start' && r.dest === `uuid:${DISP}`) {
      // as qubesd: the DispVM's qrexec daemon is started, and the answer waits until it has the agent
      const n = w.procs.length;
      await w.agent(5, 'disp5');
      w.start(BIN('qrexec-daemon'), ['--direct', `--uuid=${DISP}`, `--socket-dir=${w.sockDir}`, '--qubesd-socket=none', '--policy-socket=/nonexistent', '5', 'disp5', 'root'], w.env({ VCHAN_DOMAIN: '0' }));
      dispProcs = w.procs.slice(n);
      await waitFor(() => exists(join(w.sockDir, `qrexec.uuid:${DISP}`)), 15000, 'the DispVM daemon');
      return ok();
    }
    if (r.method === 'admin.vm.Kill') {
      for (const p of dispProcs) p.kill('SIGTERM');
      return ok();
    }
    return exc('QubesException', `unexpected ${r.method}`);
  });
  await w.agent(1, 'work');
  const host = w.start(
    BIN('qrexec-host'),
    [
      '--policy-path', policyDir, '--socket-path', join(w.dir, 'policy.sock'), '--system-info', join(w.dir, 'system-info.json'),
      '--eval-socket-path', 'none', '--gui-socket-path', 'none', '--qubesd-events-socket', 'none', '--audit-db', join(w.dir, 'audit.sqlite'),
      `--qrexec-socket-dir=${w.sockDir}`, `--qube=1:work:${uuid(1)}:root`, `--qube=2:vault:${uuid(2)}:root`, `--qube=3:halted:${uuid(3)}:root`,
      '--qubesd-admin-socket', q.path,
    ],
    w.env({ VCHAN_DOMAIN: '0' }),
  );
  host.stderr?.on('data', (d: Buffer) => (hostLog += d.toString()));
  await waitFor(() => exists(join(w.sockDir, 'qrexec.work')), 15000, 'qrexec.work');
});
after(async () => {
  q.close();
  await w.close();
});

const call = (target: string, service: string, input = ''): ReturnType<typeof qubeCall> => qubeCall(join(w.dir, 'agent-work.sock'), w.dir, 1, target, service, input);

void test('qrexec-host: a call to a stopped qube starts it through qubesd (admin.vm.Start), then runs', async () => {
  q.requests.length = 0;
  assert.ok(!(await exists(join(w.sockDir, 'qrexec.vault'))), 'vault is not running yet');
  const r = await call('vault', 'test.Echo+a', 'ping\n');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.toString(), 'vault from=work arg=a\nping\n');
  assert.deepEqual(q.requests, [`admin.vm.Start+ dom0 name uuid:${uuid(2)}\0`]);
  // running now: no second start
  assert.equal((await call('vault', 'test.Echo+b')).stdout.toString(), 'vault from=work arg=b\n');
  assert.equal(q.requests.length, 1);
});

void test('qrexec-host: a call to @dispvm:dvm runs in a new DispVM, which is killed when the call is over', async () => {
  q.requests.length = 0;
  const r = await call('@dispvm:dvm', 'test.Echo+d', 'hello\n');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.toString(), 'disposable from=work arg=d\nhello\n');
  await waitFor(async () => q.requests.length >= 3, 15000, 'admin.vm.Kill');
  assert.deepEqual(q.requests, [`admin.vm.CreateDisposable+ dom0 name uuid:${DVM}\0uuid`, `admin.vm.Start+ dom0 name uuid:${DISP}\0`, `admin.vm.Kill+ dom0 name uuid:${DISP}\0`]);
  await waitFor(async () => dispProcs.every((p) => p.exitCode !== null || p.signalCode !== null), 10000, 'the DispVM processes to end');
});

void test('qrexec-host: qubesd refusing to start the target refuses the call, with the reason in the log', async () => {
  q.requests.length = 0;
  const r = await call('halted', 'test.NoStart');
  assert.ok(r.refused);
  assert.deepEqual(q.requests, [`admin.vm.Start+ dom0 name uuid:${uuid(3)}\0`]);
  await waitFor(async () => /call test\.NoStart to halted failed: qubesd could not start VM uuid:\S+: qubesd admin\.vm\.Start uuid:\S+: QubesVMError: halted cannot start/.test(hostLog), 5000, `the logged reason in:\n${hostLog}`);
  // the caller's qube goes on
  assert.equal((await call('vault', 'test.Echo+c')).code, 0);
});

void test('qrexec-client -k: admin.vm.Kill of the target after the call, also when the call fails; --qubesd-socket=none', async () => {
  await w.service('kq', 'test.Cat', '#!/bin/sh\nexec cat\n');
  await w.qube(7, 'kq', ['--qubesd-socket=none']);
  const client = (args: string[], input = ''): ReturnType<typeof run> => run(BIN('qrexec-client'), [`--socket-dir=${w.sockDir}`, ...args], w.env(), input);
  q.requests.length = 0;
  const r = await client([`--qubesd-socket=${q.path}`, '-k', '-d', 'kq', 'root:QUBESRPC test.Cat+ dom0'], 'data\n');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.toString(), 'data\n');
  assert.deepEqual(q.requests, ['admin.vm.Kill+ dom0 name kq\0']);
  // no such qube: the call fails (as the reference, the kill is still sent)
  q.requests.length = 0;
  const bad = await client([`--qubesd-socket=${q.path}`, '-k', '-d', 'nosuch', 'root:true']);
  assert.notEqual(bad.code, 0);
  assert.deepEqual(q.requests, ['admin.vm.Kill+ dom0 name nosuch\0']);
  // qubesd's exception is reported, the call's status kept
  const handler = q.handler;
  q.handler = () => exc('QubesVMNotStartedError', 'Domain is powered off: kq');
  const off = await client([`--qubesd-socket=${q.path}`, '-k', '-d', 'kq', 'root:exit 3']);
  q.handler = handler;
  assert.equal(off.code, 3);
  assert.match(off.stderr, /qrexec-client: -k: qubesd admin\.vm\.Kill kq: QubesVMNotStartedError: Domain is powered off: kq/);
  q.requests.length = 0;
  const none = await client(['--qubesd-socket=none', '-k', '-d', 'kq', 'root:true']);
  assert.equal(none.code, 0);
  assert.match(none.stderr, /-k: not killing kq: no qubesd \(--qubesd-socket=none\)/);
  assert.deepEqual(q.requests, []);
  // without the option: $QREXEC_QUBESD_SOCKET (what qrexec-policy-exec sets for it)
  const viaEnv = await run(BIN('qrexec-client'), [`--socket-dir=${w.sockDir}`, '-k', '-d', 'kq', 'root:true'], w.env({ QREXEC_QUBESD_SOCKET: q.path }), '');
  assert.equal(viaEnv.code, 0, viaEnv.stderr);
  assert.deepEqual(q.requests, ['admin.vm.Kill+ dom0 name kq\0']);
});

void test('qrexec-daemon --qubesd-socket=none: autostart is refused with a clear reason; --help of the three commands', async () => {
  const policy = await fakePolicyDaemon(join(w.dir, 'policy-n.sock'), () => 'user=root\nresult=allow\ntarget=stopped\nautostart=True\nrequested_target=stopped\n');
  try {
    await w.agent(8, 'nq');
    let log = '';
    const d = w.start(BIN('qrexec-daemon'), ['--direct', `--uuid=${uuid(8)}`, `--socket-dir=${w.sockDir}`, '--qubesd-socket=none', `--policy-socket=${join(w.dir, 'policy-n.sock')}`, '8', 'nq', 'root'], w.env({ VCHAN_DOMAIN: '0' }));
    d.stderr?.on('data', (b: Buffer) => (log += b.toString()));
    await waitFor(() => exists(join(w.sockDir, 'qrexec.nq')), 15000, 'qrexec.nq');
    const r = await qubeCall(join(w.dir, 'agent-nq.sock'), w.dir, 8, 'stopped', 'test.Echo');
    assert.ok(r.refused);
    await waitFor(async () => log.includes('call test.Echo to stopped failed: qube stopped is not running and autostart needs qubesd, which this daemon does not use (--qubesd-socket=none)'), 5000, `the reason in:\n${log}`);
  } finally {
    policy.close();
  }
  const help = (cmd: string, arg: string): string => {
    const r = spawnSync(BIN(cmd), [arg], { encoding: 'utf8' });
    return r.stdout + r.stderr;
  };
  assert.match(help('qrexec-daemon', '--help'), /--qubesd-socket=PATH .*\n.*\n.*default: \/var\/run\/qubesd\.sock; "none": refuse such calls/);
  assert.match(help('qrexec-client', '--help'), /--qubesd-socket=PATH - qubesd Admin API socket for -k, default: \$QREXEC_QUBESD_SOCKET or \/var\/run\/qubesd\.sock/);
  assert.match(help('qrexec-host', '--help'), /--qubesd-admin-socket PATH qubesd Admin API socket/);
});
