/**
 * The qubesd Admin API client (src/qubesd-client/call.ts) and what the qrexec
 * daemon does with it (reference daemon/qrexec-daemon-common.c
 * qrexec_execute_vm): autostart through admin.vm.Start, `@dispvm:` targets
 * through admin.vm.CreateDisposable + Start + Kill at the call's end, and
 * every qubesd failure refusing only that call, with a logged reason. A fake
 * qubesd records the exact request bytes; fake agents speak for the qubes.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { QubeDaemon, QubeHost, type PolicyOutcome, type QubeDaemonOptions } from '../../src/daemon/index.js';
import { formatQubesdRequest, qubesdCall, QubesdCallError, QubesdError } from '../../src/qubesd-client/call.js';
import { T, u32, msg, pad, trigger4, Reader, fakeAgentListen } from './peer.js';
import { FakeQubesd, ok, exc } from './fake-qubesd.js';

let dir: string;
const logs: string[] = [];
const daemons: QubeDaemon[] = [];
const fakes: FakeQubesd[] = [];
const uuid = (n: number): string => `00000000-0000-4000-8000-0000000000${String(n).padStart(2, '0')}`;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qrexecd-qubesd-'));
});
after(async () => {
  for (const d of daemons) await d.stop();
  for (const f of fakes) f.close();
  await rm(dir, { recursive: true, force: true });
});

async function area(name: string): Promise<string> {
  const d = join(dir, name);
  await mkdir(d);
  return d;
}

async function fakeQubesd(sub: string): Promise<FakeQubesd> {
  const q = await FakeQubesd.listen(join(sub, 'qubesd.sock'));
  fakes.push(q);
  return q;
}

function makeDaemon(sub: string, domid: number, name: string, extra: Partial<QubeDaemonOptions> = {}): QubeDaemon {
  const d = new QubeDaemon({
    domid,
    name,
    uuid: uuid(domid),
    defaultUser: 'user',
    socketDir: sub,
    vchan: { dir: sub, ownDomain: 0 },
    policySocket: '/nonexistent',
    policyProgram: '/nonexistent',
    servicePath: [],
    startupTimeoutMs: 30_000,
    log: (l, m) => logs.push(`${l}: ${m}`),
    ...extra,
  });
  daemons.push(d);
  return d;
}

/** The fake agent of `domid` connected and handshaken (its daemon's start() runs meanwhile). */
async function agentFor(sub: string, domid: number): Promise<Reader> {
  const fa = await fakeAgentListen(sub, domid);
  const a = await fa.accepted;
  fa.close();
  a.sock.write(u32(T.HELLO, 4, 4));
  assert.ok((await a.bytes(12)).equals(u32(T.HELLO, 4, 4)));
  return a;
}

/** A daemon and its agent, up. */
async function qube(sub: string, domid: number, name: string, extra: Partial<QubeDaemonOptions> = {}): Promise<{ d: QubeDaemon; agent: Reader }> {
  const d = makeDaemon(sub, domid, name, extra);
  const started = d.start();
  const agent = await agentFor(sub, domid);
  await started;
  return { d, agent };
}

const allow = (target: string, extra: { targetUuid?: string; autostart?: boolean } = {}): PolicyOutcome => ({
  result: 'allow',
  user: 'DEFAULT',
  target,
  requestedTarget: target,
  autostart: extra.autostart ?? true,
  ...(extra.targetUuid !== undefined ? { targetUuid: extra.targetUuid } : {}),
});

const execBody = (connectDomain: number, port: number, cmd: string): Buffer => Buffer.concat([u32(connectDomain, port), Buffer.from(`${cmd}\0`)]);

async function until(f: () => boolean, what: string, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) assert.fail(`timeout waiting for ${what}`);
    await sleep(20);
  }
}

// ---------------------------------------------------------------- the client

void test('qubesd client: request line (name and keyword destinations, argument), payload, success data', async () => {
  assert.equal(formatQubesdRequest('admin.vm.Start', 'vault'), 'admin.vm.Start+ dom0 name vault\0');
  assert.equal(formatQubesdRequest('admin.vm.Start', 'uuid:' + uuid(1)), `admin.vm.Start+ dom0 name uuid:${uuid(1)}\0`);
  // the Python tools send every destination as a name; the C daemon and client send @X as keyword X
  assert.equal(formatQubesdRequest('admin.vm.CreateDisposable', '@dispvm:uuid:' + uuid(1)), `admin.vm.CreateDisposable+ dom0 name @dispvm:uuid:${uuid(1)}\0`);
  assert.equal(formatQubesdRequest('admin.vm.CreateDisposable', '@default', 'preload', true), 'admin.vm.CreateDisposable+preload dom0 keyword default\0');
  const q = await fakeQubesd(await area('client'));
  q.handler = (r) => ok(`you said ${r.payload}`);
  const data = await qubesdCall(q.path, 'admin.vm.CreateDisposable', 'dvm', { payload: Buffer.from('uuid') });
  assert.equal(data.toString(), 'you said uuid');
  assert.deepEqual(q.requests, ['admin.vm.CreateDisposable+ dom0 name dvm\0uuid']);
});

void test('qubesd client: typed errors for an exception, a bad or oversized reply, a timeout, no qubesd', async () => {
  const sub = await area('client-errors');
  const q = await fakeQubesd(sub);
  q.handler = () => exc('QubesVMError', 'Cannot start qube: not enough memory');
  const e1 = await qubesdCall(q.path, 'admin.vm.Start', 'vault').then(() => assert.fail('resolved'), (e: unknown) => e);
  assert.ok(e1 instanceof QubesdError);
  assert.equal(e1.excType, 'QubesVMError');
  assert.equal(e1.excMessage, 'Cannot start qube: not enough memory');
  assert.equal(e1.message, 'qubesd admin.vm.Start vault: QubesVMError: Cannot start qube: not enough memory');
  // a qubesd of --debug sends a traceback between type and message
  q.handler = () => '2\0QubesException\0Traceback (most recent call last):\n  ...\n\0boom\0';
  await assert.rejects(qubesdCall(q.path, 'admin.vm.Kill', 'x'), (e: unknown) => e instanceof QubesdError && e.excType === 'QubesException' && e.excMessage === 'boom');
  for (const [reply, code, opts] of [
    ['1\0vault\0domain-start\0\0', 'BAD_REPLY', {}],
    ['', 'BAD_REPLY', {}],
    ['0', 'BAD_REPLY', {}],
    [ok('x'.repeat(100)), 'TOO_LARGE', { maxReply: 64 }],
  ] as const) {
    q.handler = () => reply;
    await assert.rejects(qubesdCall(q.path, 'admin.vm.Start', 'vault', opts), (e: unknown) => e instanceof QubesdCallError && e.code === code, JSON.stringify(reply.slice(0, 10)));
  }
  q.handler = () => new Promise<string>(() => undefined);
  await assert.rejects(qubesdCall(q.path, 'admin.vm.Start', 'vault', { timeoutMs: 200 }), (e: unknown) => e instanceof QubesdCallError && e.code === 'TIMEOUT');
  await assert.rejects(qubesdCall(join(sub, 'nothing.sock'), 'admin.vm.Start', 'vault'), (e: unknown) => e instanceof QubesdCallError && e.code === 'CONNECT' && /nothing\.sock does not exist/.test(e.message));
});

// ---------------------------------------------------------------- autostart

void test('autostart: a stopped target is started through qubesd; the call waits for its daemon and agent, then runs', async () => {
  const sub = await area('autostart');
  const q = await fakeQubesd(sub);
  let vaultAgent: Promise<Reader> | undefined;
  q.handler = (r) => {
    if (r.method === 'admin.vm.Start') {
      // qubesd answers at once; the qube's daemon and agent come up a little later
      vaultAgent = (async () => {
        await sleep(300);
        return (await qube(sub, 31, 'avault')).agent;
      })();
    }
    return ok();
  };
  const work = await qube(sub, 30, 'awork', { qubesdSocket: q.path, policy: () => Promise.resolve(allow('avault', { targetUuid: `uuid:${uuid(31)}` })) });
  work.agent.sock.write(trigger4('avault', 'SOCK1', 'my.Service+arg'));
  const sc = await work.agent.message(20_000);
  assert.equal(sc.type, T.SERVICE_CONNECT);
  assert.ok(sc.data.equals(Buffer.concat([u32(31, 513), pad('SOCK1', 32)])));
  assert.ok(vaultAgent);
  const e = await (await vaultAgent).message();
  assert.equal(e.type, T.EXEC_CMDLINE);
  assert.ok(e.data.equals(execBody(30, 513, 'user:QUBESRPC my.Service+arg awork')), e.data.toString());
  assert.deepEqual(q.requests, [`admin.vm.Start+ dom0 name uuid:${uuid(31)}\0`]);
  // running now: the next call goes straight there
  work.agent.sock.write(trigger4('avault', 'SOCK2', 'my.Service'));
  assert.equal((await work.agent.message()).type, T.SERVICE_CONNECT);
  assert.equal(q.requests.length, 1);
});

void test('autostart in one host process: the target daemon waits for its agent; QubesVMNotHaltedError counts as started', async () => {
  const sub = await area('autostart-host');
  const q = await fakeQubesd(sub);
  const host = new QubeHost();
  const policy = (): Promise<PolicyOutcome> => Promise.resolve(allow('hvault', { targetUuid: `uuid:${uuid(33)}` }));
  // the target's client sockets live elsewhere: the call can only be set up in-process
  const vault = makeDaemon(sub, 33, 'hvault', { host, socketDir: await area('autostart-host-vault') });
  host.add(vault);
  const vaultStarted = vault.start();
  let vaultAgent: Promise<Reader> | undefined;
  q.handler = () => {
    vaultAgent = agentFor(sub, 33);
    return exc('QubesVMNotHaltedError', 'Domain is running: hvault');
  };
  const work = await qube(sub, 32, 'hwork', { host, policy, qubesdSocket: q.path });
  host.add(work.d);
  work.agent.sock.write(trigger4('hvault', 'SOCK3', 'my.Service'));
  const sc = await work.agent.message(20_000);
  assert.equal(sc.type, T.SERVICE_CONNECT);
  assert.ok(sc.data.equals(Buffer.concat([u32(33, 513), pad('SOCK3', 32)])));
  await vaultStarted;
  assert.ok(vaultAgent);
  const e = await (await vaultAgent).message();
  assert.ok(e.data.equals(execBody(32, 513, 'user:QUBESRPC my.Service+ hwork')), e.data.toString());
  assert.deepEqual(q.requests, [`admin.vm.Start+ dom0 name uuid:${uuid(33)}\0`]);
});

// ---------------------------------------------------------------- DispVMs

void test('@dispvm: CreateDisposable (uuid), Start, the call, and admin.vm.Kill only once the call ended', async () => {
  const sub = await area('dispvm');
  const q = await fakeQubesd(sub);
  const DISP = uuid(41);
  let dispAgent: Promise<Reader> | undefined;
  q.handler = (r) => {
    if (r.method === 'admin.vm.CreateDisposable') return ok(`uuid:${DISP}`);
    // qubesd starts the DispVM's qrexec daemon, which waits for the agent, before it answers
    if (r.method === 'admin.vm.Start') dispAgent = qube(sub, 41, 'disp4141').then((x) => x.agent);
    return r.method === 'admin.vm.Start' ? dispAgent!.then(() => ok()) : ok();
  };
  const policy = (): Promise<PolicyOutcome> => Promise.resolve(allow('@dispvm:dvm', { targetUuid: `@dispvm:uuid:${uuid(49)}` }));
  const work = await qube(sub, 40, 'dwork', { qubesdSocket: q.path, policy });
  const before = logs.length;
  work.agent.sock.write(trigger4('@dispvm:dvm', 'SOCK4', 'my.Service+arg'));
  const sc = await work.agent.message(20_000);
  assert.equal(sc.type, T.SERVICE_CONNECT);
  assert.ok(sc.data.equals(Buffer.concat([u32(41, 513), pad('SOCK4', 32)])));
  const agent = await dispAgent!;
  const e = await agent.message();
  assert.equal(e.type, T.EXEC_CMDLINE);
  assert.ok(e.data.equals(execBody(40, 513, 'user:QUBESRPC my.Service+arg dwork')), e.data.toString());
  assert.deepEqual(q.requests, [`admin.vm.CreateDisposable+ dom0 name uuid:${uuid(49)}\0uuid`, `admin.vm.Start+ dom0 name uuid:${DISP}\0`]);
  assert.ok(logs.slice(before).some((l) => l === `info: dwork: created disposable VM uuid:${DISP} from uuid:${uuid(49)}`), logs.slice(before).join('\n'));
  await sleep(300);
  assert.equal(q.requests.length, 2, 'no kill while the call runs');
  // the DispVM's agent reports the call's end
  agent.sock.write(msg(T.CONNECTION_TERMINATED, u32(40, 513)));
  await until(() => q.requests.length === 3, 'admin.vm.Kill');
  assert.equal(q.requests[2], `admin.vm.Kill+ dom0 name uuid:${DISP}\0`);
});

void test('@dispvm in one host process, names instead of uuids: Kill at the data port\'s CONNECTION_TERMINATED', async () => {
  const sub = await area('dispvm-host');
  const q = await fakeQubesd(sub);
  const host = new QubeHost();
  const disp = makeDaemon(sub, 51, 'disp51', { host, socketDir: await area('dispvm-host-disp') });
  host.add(disp);
  const dispStarted = disp.start();
  let dispAgent: Promise<Reader> | undefined;
  q.handler = (r) => {
    if (r.method === 'admin.vm.CreateDisposable') return ok('disp51');
    if (r.method === 'admin.vm.Start') dispAgent = agentFor(sub, 51);
    return ok();
  };
  const work = await qube(sub, 50, 'hdwork', { host, qubesdSocket: q.path, policy: () => Promise.resolve(allow('@dispvm:dvm')) });
  host.add(work.d);
  work.agent.sock.write(trigger4('@dispvm:dvm', 'SOCK5', 'my.Service'));
  const sc = await work.agent.message(20_000);
  assert.ok(sc.data.equals(Buffer.concat([u32(51, 513), pad('SOCK5', 32)])));
  await dispStarted;
  const agent = await dispAgent!;
  assert.equal((await agent.message()).type, T.EXEC_CMDLINE);
  assert.deepEqual(q.requests, ['admin.vm.CreateDisposable+ dom0 name dvm\0', 'admin.vm.Start+ dom0 name disp51\0']);
  // another call's end (another port, another domain) does not end this one
  agent.sock.write(msg(T.CONNECTION_TERMINATED, u32(99, 515)));
  await sleep(300);
  assert.equal(q.requests.length, 2);
  agent.sock.write(msg(T.CONNECTION_TERMINATED, u32(50, 513)));
  await until(() => q.requests.length === 3, 'admin.vm.Kill');
  assert.equal(q.requests[2], 'admin.vm.Kill+ dom0 name disp51\0');
});

// ---------------------------------------------------------------- failures

void test('qubesd failures refuse only that call, with the reason logged; the qube goes on', async () => {
  const sub = await area('failures');
  const q = await fakeQubesd(sub);
  const D = uuid(69);
  const cases: {
    service: string;
    decision: PolicyOutcome;
    qubesd: (method: string) => string | Promise<string>;
    requests: string[];
    log: RegExp;
  }[] = [
    {
      service: 'f.Start',
      decision: allow('fvault'),
      qubesd: () => exc('QubesVMError', 'Cannot start qube fvault: not enough memory'),
      requests: ['admin.vm.Start+ dom0 name fvault\0'],
      log: /^error: fwork: call f\.Start to fvault failed: qubesd could not start VM fvault: qubesd admin\.vm\.Start fvault: QubesVMError: Cannot start qube fvault: not enough memory$/,
    },
    {
      service: 'f.Garbage',
      decision: allow('fvault'),
      qubesd: () => 'garbage',
      requests: ['admin.vm.Start+ dom0 name fvault\0'],
      log: /qubesd could not start VM fvault: qubesd admin\.vm\.Start: invalid reply garbage$/,
    },
    { service: 'f.NoAuto', decision: allow('fvault', { autostart: false }), qubesd: () => ok(), requests: [], log: /call f\.NoAuto to fvault failed: qube fvault is not running$/ },
    {
      service: 'f.Create',
      decision: allow('@dispvm:dvm', { targetUuid: `@dispvm:uuid:${uuid(68)}` }),
      qubesd: () => exc('QubesException', 'template for disposable (dvm) needs to have template_for_dispvms=True'),
      requests: [`admin.vm.CreateDisposable+ dom0 name uuid:${uuid(68)}\0uuid`],
      log: /qubesd could not create disposable VM: qubesd admin\.vm\.CreateDisposable uuid:\S+: QubesException: template for disposable \(dvm\) needs to have template_for_dispvms=True$/,
    },
    {
      service: 'f.BadUuid',
      decision: allow('@dispvm:dvm', { targetUuid: `@dispvm:uuid:${uuid(68)}` }),
      qubesd: () => ok('disp1234'),
      requests: [`admin.vm.CreateDisposable+ dom0 name uuid:${uuid(68)}\0uuid`],
      log: /invalid response to admin\.vm\.CreateDisposable: "disp1234"$/,
    },
    {
      service: 'f.DispStart',
      decision: allow('@dispvm:dvm', { targetUuid: `@dispvm:uuid:${uuid(68)}` }),
      qubesd: (m) => (m === 'admin.vm.CreateDisposable' ? ok(`uuid:${D}`) : exc('QubesVMError', 'no memory')),
      // qubesd removes a DispVM that failed to start: no Kill
      requests: [`admin.vm.CreateDisposable+ dom0 name uuid:${uuid(68)}\0uuid`, `admin.vm.Start+ dom0 name uuid:${D}\0`],
      log: /qubesd could not start VM uuid:\S+: qubesd admin\.vm\.Start uuid:\S+: QubesVMError: no memory$/,
    },
    {
      service: 'f.NoAgent',
      decision: allow('@dispvm:dvm', { targetUuid: `@dispvm:uuid:${uuid(68)}` }),
      qubesd: (m) => (m === 'admin.vm.CreateDisposable' ? ok(`uuid:${D}`) : ok()),
      requests: [`admin.vm.CreateDisposable+ dom0 name uuid:${uuid(68)}\0uuid`, `admin.vm.Start+ dom0 name uuid:${D}\0`, `admin.vm.Kill+ dom0 name uuid:${D}\0`],
      log: /qube uuid:\S+ was started but its qrexec agent did not connect within 1 s$/,
    },
    { service: 'f.DispNoAuto', decision: allow('@dispvm:dvm', { autostart: false }), qubesd: () => ok(), requests: [], log: /Target @dispvm:dvm with autostart=False makes no sense$/ },
  ];
  const byService = new Map(cases.map((c) => [c.service, c]));
  const work = await qube(sub, 60, 'fwork', {
    qubesdSocket: q.path,
    autostartTimeoutMs: 1000,
    policy: (qq) => Promise.resolve(byService.get(qq.serviceAndArg)?.decision ?? { result: 'deny' }),
  });
  for (const c of cases) {
    q.requests.length = 0;
    q.handler = (r) => c.qubesd(r.method);
    const before = logs.length;
    work.agent.sock.write(trigger4('fvault', `I${c.service}`, c.service));
    const m = await work.agent.message(20_000);
    assert.equal(m.type, T.SERVICE_REFUSED, c.service);
    assert.ok(m.data.equals(pad(`I${c.service}`, 32)), c.service);
    await until(() => q.requests.length >= c.requests.length, `${c.service}: qubesd requests`);
    await sleep(50);
    assert.deepEqual(q.requests, c.requests, c.service);
    assert.ok(logs.slice(before).some((l) => c.log.test(l)), `${c.service}: ${logs.slice(before).join('\n')}`);
  }
  // the qube's channel is fine
  work.agent.sock.write(trigger4('x', 'LAST', 'other.Service'));
  assert.equal((await work.agent.message()).type, T.SERVICE_REFUSED);
});

void test('without qubesd (--qubesd-socket=none) or with qubesd unreachable: autostart and DispVM calls refused with a clear reason', async () => {
  const sub = await area('none');
  const decisions = new Map<string, PolicyOutcome>([
    ['n.Auto', allow('nvault')],
    ['n.Disp', allow('@dispvm:dvm', { targetUuid: `@dispvm:uuid:${uuid(78)}` })],
  ]);
  const policy = (qq: { serviceAndArg: string }): Promise<PolicyOutcome> => Promise.resolve(decisions.get(qq.serviceAndArg) ?? { result: 'deny' });
  const none = await qube(sub, 70, 'nwork', { policy });
  const gone = await qube(sub, 71, 'gwork', { policy, qubesdSocket: join(sub, 'no-qubesd.sock') });
  const expect: [Reader, string, RegExp][] = [
    [none.agent, 'n.Auto', /^error: nwork: call n\.Auto to nvault failed: qube nvault is not running and autostart needs qubesd, which this daemon does not use \(--qubesd-socket=none\)$/],
    [none.agent, 'n.Disp', /^error: nwork: call n\.Disp to \S+ failed: Target @dispvm:uuid:\S+: a disposable VM needs qubesd, which this daemon does not use \(--qubesd-socket=none\)$/],
    [gone.agent, 'n.Auto', /^error: gwork: call n\.Auto to nvault failed: qubesd could not start VM nvault: qubesd admin\.vm\.Start: cannot connect to qubesd: \S+no-qubesd\.sock does not exist$/],
    [gone.agent, 'n.Disp', /qubesd could not create disposable VM: qubesd admin\.vm\.CreateDisposable: cannot connect to qubesd: \S+ does not exist/],
  ];
  for (const [agent, service, log] of expect) {
    const before = logs.length;
    agent.sock.write(trigger4('nvault', `I${service}`, service));
    assert.equal((await agent.message()).type, T.SERVICE_REFUSED, service);
    assert.ok(logs.slice(before).some((l) => log.test(l)), `${service}: ${logs.slice(before).join('\n')}`);
  }
});
