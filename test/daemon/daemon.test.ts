import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { mkdtemp, rm, readlink, writeFile, chmod, mkdir, access } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QubeDaemon, QubeHost, type PolicyOutcome, type QubeDaemonOptions } from '../../src/daemon/index.js';
import { T, u32, msg, pad, trigger4, Reader, fakeAgentListen, fakePolicyDaemon, daemonClient } from './peer.js';

let dir: string;
const logs: string[] = [];
const daemons: QubeDaemon[] = [];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qrexecd-'));
});
after(async () => {
  for (const d of daemons) await d.stop();
  await rm(dir, { recursive: true, force: true });
});

async function startDaemon(domid: number, name: string, extra: Partial<QubeDaemonOptions> = {}): Promise<{ d: QubeDaemon; agent: Reader; sub: string }> {
  const sub = join(dir, `${name}-${Math.random().toString(36).slice(2, 8)}`);
  await mkdir(sub);
  const fa = await fakeAgentListen(sub, domid);
  const d = new QubeDaemon({
    domid,
    name,
    uuid: '00000000-1111-2222-3333-4444444444' + String(domid).padStart(2, '0'),
    defaultUser: 'user',
    socketDir: sub,
    vchan: { dir: sub, ownDomain: 0 },
    policySocket: join(sub, 'policy.sock'),
    policyProgram: join(sub, 'no-such-policy-program'),
    servicePath: [join(sub, 'rpc')],
    startupTimeoutMs: 10000,
    log: (l, m) => logs.push(`${l}: ${m}`),
    ...extra,
  });
  daemons.push(d);
  const started = d.start();
  const agent = await fa.accepted;
  fa.close();
  agent.sock.write(u32(T.HELLO, 4, 4));
  assert.ok((await agent.bytes(12)).equals(u32(T.HELLO, 4, 4)), 'daemon answers HELLO v4');
  await started;
  return { d, agent, sub };
}

void test('handshake, sockets qrexec.<domid>, qrexec.<name>, qrexec.uuid:<uuid>', async () => {
  const { sub } = await startDaemon(42, 'domain_name');
  assert.equal(await readlink(join(sub, 'qrexec.domain_name')), 'qrexec.42');
  assert.equal(await readlink(join(sub, 'qrexec.uuid:00000000-1111-2222-3333-444444444442')), 'qrexec.42');
  const c = await daemonClient(join(sub, 'qrexec.domain_name'));
  c.sock.destroy();
});

void test('handshake version negotiation: v2 agent gets 2, v1 agent is refused', async () => {
  const sub = join(dir, 'v2');
  await mkdir(sub);
  for (const [sent, ok] of [[2, true], [1, false]] as const) {
    const fa = await fakeAgentListen(sub, 50 + sent);
    const d = new QubeDaemon({ domid: 50 + sent, name: `v${sent}`, defaultUser: 'user', socketDir: sub, vchan: { dir: sub, ownDomain: 0 }, policySocket: '/nonexistent', policyProgram: '/nonexistent', servicePath: [], log: (_l, m) => logs.push(m) });
    daemons.push(d);
    const st = d.start();
    const a = await fa.accepted;
    fa.close();
    a.sock.write(u32(T.HELLO, 4, sent));
    if (ok) {
      assert.ok((await a.bytes(12)).equals(u32(T.HELLO, 4, 2)));
      await st;
      // v2: TRIGGER_SERVICE3 is not allowed → channel closed
      a.sock.write(trigger4('x', 'i', 's'));
      assert.ok(await a.waitClosed());
    } else {
      await assert.rejects(st, /Incompatible agent protocol version \(remote 1, local 4\); minimum supported version is 2/);
      assert.ok(await a.waitClosed());
    }
  }
});

void test('trigger: source is the channel owner; exact policy request; deny → MSG_SERVICE_REFUSED', async () => {
  const { agent, sub } = await startDaemon(43, 'work');
  const pd = await fakePolicyDaemon(join(sub, 'policy.sock'), () => 'result=deny\n');
  agent.sock.write(trigger4('vault', 'SOCKET42', 'qubes.Forbidden+arg', 'dom0'));
  const m = await agent.message();
  assert.equal(m.type, T.SERVICE_REFUSED);
  assert.ok(m.data.equals(pad('SOCKET42', 32)));
  assert.deepEqual(pd.requests, ['source=work\nrequested_source=dom0\nintended_target=vault\nservice_and_arg=qubes.Forbidden+arg\n\n']);
  pd.close();
});

void test('bad triggers are refused without asking the policy; the raw ident is echoed', async () => {
  const { agent, sub } = await startDaemon(44, 'bad');
  const pd = await fakePolicyDaemon(join(sub, 'policy.sock'), () => 'result=deny\n');
  const cases: Buffer[] = [
    msg(T.TRIGGER_SERVICE4, Buffer.concat([pad('', 64), pad('t', 64), pad('ab', 32), Buffer.from('a')])),
    ...['\0', 'a\0', '\0a', '\0+a', '+', '+a', 'a\0a'].map((s) => trigger4('t', 'ab', Buffer.from(`${s}\0`, 'latin1'))),
    trigger4('t', Buffer.from([1, 2, 3]), 'qubes.Service'),
  ];
  for (const c of cases) {
    agent.sock.write(c);
    const m = await agent.message();
    assert.equal(m.type, T.SERVICE_REFUSED);
    assert.equal(m.data.length, 32);
  }
  agent.sock.write(trigger4('t', Buffer.from('a\0b'), 'qubes.Service'));
  const m = await agent.message();
  assert.ok(m.data.equals(pad(Buffer.from('a\0b'), 32)));
  assert.deepEqual(pd.requests, []);
  pd.close();
});

void test('policy program fallback: reference argument convention and reply', async () => {
  const sub0 = join(dir, 'prog');
  await mkdir(sub0);
  const prog = join(sub0, 'qrexec-policy-exec');
  await writeFile(prog, `#!/bin/sh\necho "$@" > ${sub0}/params\necho result=deny\nexit 0\n`);
  await chmod(prog, 0o755);
  const { agent } = await startDaemon(45, 'progq', { policyProgram: prog });
  agent.sock.write(trigger4('@default', 'SOCKET1', 'a.B+c'));
  const m = await agent.message();
  assert.equal(m.type, T.SERVICE_REFUSED);
  const { readFile } = await import('node:fs/promises');
  assert.equal((await readFile(join(sub0, 'params'), 'utf8')).trim(), '-- progq @default a.B+c');
});

void test('client exec: port allocation, DEFAULT: user, forwarded bytes, CONNECTION_TERMINATED releases and closes the client', async () => {
  const { agent, sub } = await startDaemon(46, 'execq', { defaultUser: 'alice' });
  const c1 = await daemonClient(join(sub, 'qrexec.46'));
  c1.sock.write(msg(T.JUST_EXEC, Buffer.concat([u32(47, 0), Buffer.from('DEFAULT:echo hi\0')])));
  const r1 = await c1.message();
  assert.equal(r1.type, T.JUST_EXEC);
  assert.ok(r1.data.equals(u32(46, 514)), r1.data.toString('hex'));
  const f1 = await agent.message();
  assert.equal(f1.type, T.JUST_EXEC);
  assert.ok(f1.data.equals(Buffer.concat([u32(47, 514), Buffer.from('alice:echo hi\0')])));
  const c2 = await daemonClient(join(sub, 'qrexec.46'));
  c2.sock.write(msg(T.EXEC_CMDLINE, Buffer.concat([u32(48, 0), Buffer.from('user:id\0')])));
  assert.ok((await c2.message()).data.equals(u32(46, 516)));
  assert.ok((await agent.message()).data.equals(Buffer.concat([u32(48, 516), Buffer.from('user:id\0')])));
  // dom0 peer: any port (513 first)
  const c3 = await daemonClient(join(sub, 'qrexec.46'));
  c3.sock.write(msg(T.EXEC_CMDLINE, Buffer.concat([u32(0, 0), Buffer.from('user:id\0')])));
  assert.ok((await c3.message()).data.equals(u32(46, 513)));
  await agent.message();
  // release 514 for domain 47: c1 is closed, the port is reused
  agent.sock.write(msg(T.CONNECTION_TERMINATED, u32(47, 514)));
  assert.ok(await c1.waitClosed());
  const c4 = await daemonClient(join(sub, 'qrexec.46'));
  c4.sock.write(msg(T.EXEC_CMDLINE, Buffer.concat([u32(49, 0), Buffer.from('user:id\0')])));
  assert.ok((await c4.message()).data.equals(u32(46, 514)));
  await agent.message();
  // a wrong domain does not release
  agent.sock.write(msg(T.CONNECTION_TERMINATED, u32(1, 516)));
  assert.equal(await c2.waitClosed(300), false);
  for (const c of [c2, c3, c4]) c.sock.destroy();
});

void test('client misbehaviour closes only that client', async () => {
  const { agent, sub } = await startDaemon(60, 'clientsq');
  const path = join(sub, 'qrexec.60');
  const bad: Buffer[] = [
    msg(T.TRIGGER_SERVICE3, Buffer.alloc(100)), // wrong type for a client
    u32(T.EXEC_CMDLINE, 0x40000000), // 1 GB
    msg(T.EXEC_CMDLINE, Buffer.concat([u32(0, 0), Buffer.from('no-nul')])),
    msg(T.SERVICE_CONNECT, Buffer.concat([u32(61, 513), Buffer.from('SOCKET11\0')])), // not requested
    msg(T.EXEC_CMDLINE, Buffer.concat([u32(61, 99999), Buffer.from('user:x\0')])), // bad port
  ];
  for (const b of bad) {
    const c = await daemonClient(path);
    c.sock.write(b);
    assert.ok(await c.waitClosed(), b.subarray(0, 8).toString('hex'));
  }
  // bad hello version
  const s = net.createConnection(path);
  const r = new Reader(s);
  await r.bytes(12);
  s.write(u32(T.HELLO, 4, 2));
  assert.ok(await r.waitClosed());
  // the agent got nothing, and a good client still works
  assert.equal(agent.pending, 0);
  const ok = await daemonClient(path);
  ok.sock.write(msg(T.EXEC_CMDLINE, Buffer.concat([u32(0, 0), Buffer.from('user:true\0')])));
  assert.equal((await ok.message()).type, T.EXEC_CMDLINE);
  assert.equal((await agent.message()).type, T.EXEC_CMDLINE);
  ok.sock.destroy();
});

void test('VM→VM call: target daemon gets EXEC_CMDLINE, caller gets SERVICE_CONNECT; a pending ident can be connected once', async () => {
  const shared = join(dir, 'pair');
  await mkdir(shared);
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const policy = async (q: { source: string; intendedTarget: string; serviceAndArg: string }): Promise<never | { result: 'allow'; user: string; target: string; requestedTarget: string; autostart: boolean }> => {
    if (q.serviceAndArg === 'slow.Service') await gate;
    return { result: 'allow', user: 'user', target: 'vaultq', requestedTarget: q.intendedTarget, autostart: false };
  };
  const mk = async (domid: number, name: string): Promise<Reader> => {
    const fa = await fakeAgentListen(shared, domid);
    const d = new QubeDaemon({ domid, name, defaultUser: 'user', socketDir: shared, vchan: { dir: shared, ownDomain: 0 }, policySocket: '/nonexistent', policyProgram: '/nonexistent', servicePath: [], log: (_l, m) => logs.push(m), policy });
    daemons.push(d);
    const st = d.start();
    const a = await fa.accepted;
    fa.close();
    a.sock.write(u32(T.HELLO, 4, 4));
    await a.bytes(12);
    await st;
    return a;
  };
  const work = await mk(10, 'workq');
  const vault = await mk(11, 'vaultq');
  work.sock.write(trigger4('vaultq', 'SOCKET7', 'my.Service+arg'));
  const e = await vault.message();
  assert.equal(e.type, T.EXEC_CMDLINE);
  assert.ok(e.data.equals(Buffer.concat([u32(10, 513), Buffer.from('user:QUBESRPC my.Service+arg workq\0')])), e.data.toString());
  const sc = await work.message();
  assert.equal(sc.type, T.SERVICE_CONNECT);
  assert.ok(sc.data.equals(Buffer.concat([u32(11, 513), pad('SOCKET7', 32)])));
  // a pending call connected by a local client (reference test_client_service_connect)
  work.sock.write(trigger4('vaultq', 'SOCKET11', 'slow.Service'));
  await new Promise((r) => setTimeout(r, 100));
  const data = Buffer.concat([u32(11, 513), Buffer.from('SOCKET11\0')]);
  const c = await daemonClient(join(shared, 'qrexec.10'));
  c.sock.write(msg(T.SERVICE_CONNECT, data));
  const fwd = await work.message();
  assert.equal(fwd.type, T.SERVICE_CONNECT);
  assert.ok(fwd.data.equals(data));
  const c2 = await daemonClient(join(shared, 'qrexec.10'));
  c2.sock.write(msg(T.SERVICE_CONNECT, data));
  assert.ok(await c2.waitClosed());
  release();
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(work.pending, 0, 'no second SERVICE_CONNECT after the policy answered');
  assert.equal(vault.pending, 0, 'the target service was not started for an already-handled call');
  c.sock.destroy();
});

void test('bad agent input closes only that channel; other qubes go on; the daemon waits for the agent to come back', async () => {
  const other = await startDaemon(71, 'otherq');
  const pd = await fakePolicyDaemon(join(other.sub, 'policy.sock'), () => 'result=deny\n');
  const garbage: [string, Buffer][] = [
    ['garbage', Buffer.from('this is not qrexec at all, just garbage bytes')],
    ['1 GB length', u32(T.TRIGGER_SERVICE4, 0x40000000)],
    ['over-limit service name', u32(T.TRIGGER_SERVICE4, 160 + 65001)],
    ['short trigger (qsb-089)', msg(T.TRIGGER_SERVICE4, Buffer.concat([pad('t', 64), pad('ab', 32)]))],
    ['wrong type for the state', msg(T.EXEC_CMDLINE, Buffer.concat([u32(0, 0), Buffer.from('x\0')]))],
    ['HELLO again', u32(T.HELLO, 4, 4)],
    ['bad port in CONNECTION_TERMINATED', msg(T.CONNECTION_TERMINATED, u32(0, 9999))],
  ];
  for (const [name, bytes] of garbage) {
    const { agent, sub, d } = await startDaemon(70, 'victim');
    const before = logs.length;
    agent.sock.write(bytes);
    assert.ok(await agent.waitClosed(), name);
    assert.ok(logs.slice(before).some((l) => l.includes('closing control vchan')), `${name}: logged`);
    // the daemon is waiting for the agent: the sockets are gone, a new agent is accepted
    const fa = await fakeAgentListen(sub, 70);
    const again = await fa.accepted;
    fa.close();
    again.sock.write(u32(T.HELLO, 4, 4));
    assert.ok((await again.bytes(12)).equals(u32(T.HELLO, 4, 4)), `${name}: reconnected`);
    again.sock.destroy();
    await d.stop();
    // the other qube still works
    other.agent.sock.write(trigger4('x', `S${name.length}`, 'a.B'));
    assert.equal((await other.agent.message()).type, T.SERVICE_REFUSED, `${name}: other qube unaffected`);
  }
  pd.close();
});

void test('trigger flood: bounded pending calls, excess refused; memory bounded when the agent never reads', async () => {
  const never = (): Promise<never> => new Promise<never>(() => undefined);
  const { agent } = await startDaemon(80, 'floodq', { policy: never });
  const n = 2000;
  const batch: Buffer[] = [];
  for (let i = 0; i < n; i++) batch.push(trigger4('t', `S${i}`, 'a.B'));
  agent.sock.write(Buffer.concat(batch));
  let refused = 0;
  for (let i = 0; i < n - 256; i++) {
    const m = await agent.message();
    if (m.type === T.SERVICE_REFUSED) refused++;
  }
  assert.equal(refused, n - 256);
  // now flood without reading: the daemon stops reading us once its writes back up
  agent.sock.pause();
  const big = Buffer.concat(Array.from({ length: 5000 }, (_, i) => trigger4('t', `F${i}`, 'a.B')));
  let writes = 0;
  for (let k = 0; k < 200 && agent.sock.write(big); k++) writes++;
  await new Promise((r) => setTimeout(r, 500));
  const rss = process.memoryUsage().rss / 1e6;
  assert.ok(writes < 200, 'socket backpressure reached the flooding agent');
  assert.ok(rss < 1000, `rss ${rss} MB`);
  agent.sock.destroy();
});

void test('agent that disconnects right after HELLO (reference test_restart_agent): sockets removed, new agent accepted, clients served', async () => {
  const sub = join(dir, 'restart');
  await mkdir(sub);
  const fa = await fakeAgentListen(sub, 90);
  const d = new QubeDaemon({ domid: 90, name: 'restartq', uuid: 'u90', defaultUser: 'user', socketDir: sub, vchan: { dir: sub, ownDomain: 0 }, policySocket: '/nonexistent', policyProgram: '/nonexistent', servicePath: [], log: (l, m) => logs.push(`${l}: ${m}`) });
  daemons.push(d);
  const started = d.start();
  const a = await fa.accepted;
  fa.close();
  // HELLO and EOF in one go: the close arrives while the daemon is still creating its sockets
  a.sock.end(u32(T.HELLO, 4, 4));
  assert.ok((await a.bytes(12)).equals(u32(T.HELLO, 4, 4)));
  await started;
  const sockPath = join(sub, 'qrexec.90');
  const exists = (): Promise<boolean> => access(sockPath).then(() => true, () => false);
  const waitFor = async (want: boolean): Promise<boolean> => {
    for (let i = 0; i < 200; i++) {
      if ((await exists()) === want) return true;
      await new Promise((r) => setTimeout(r, 25));
    }
    return false;
  };
  assert.ok(await waitFor(false), 'qrexec.90 removed once the agent left');
  const fa2 = await fakeAgentListen(sub, 90);
  const b = await fa2.accepted;
  fa2.close();
  b.sock.write(u32(T.HELLO, 4, 4));
  assert.ok((await b.bytes(12)).equals(u32(T.HELLO, 4, 4)), 'reconnected');
  assert.ok(await waitFor(true), 'qrexec.90 back');
  const c = await daemonClient(sockPath);
  c.sock.destroy();
  b.sock.destroy();
  await d.stop();
});

void test('an agent gone for good: the daemon waits for it only as long as the startup timeout, then terminates', async () => {
  const sub = join(dir, 'gone');
  await mkdir(sub);
  const fa = await fakeAgentListen(sub, 91);
  const d = new QubeDaemon({ domid: 91, name: 'goneq', uuid: 'u91', defaultUser: 'user', socketDir: sub, vchan: { dir: sub, ownDomain: 0 }, policySocket: '/nonexistent', policyProgram: '/nonexistent', servicePath: [], startupTimeoutMs: 400, log: (l, m) => logs.push(`${l}: ${m}`) });
  daemons.push(d);
  const started = d.start();
  const a = await fa.accepted;
  fa.close();
  a.sock.write(u32(T.HELLO, 4, 4));
  assert.ok((await a.bytes(12)).equals(u32(T.HELLO, 4, 4)));
  await started;
  const before = Date.now();
  a.sock.destroy(); // and no agent ever listens again
  const code = await Promise.race([d.done, new Promise<string>((r) => setTimeout(() => r('still waiting'), 10_000))]);
  assert.equal(code, 1, 'the daemon terminated');
  assert.ok(Date.now() - before >= 300, 'it waited for a reconnection first');
  assert.ok(logs.some((l) => l.includes('goneq: Failed to reconnect to qrexec-agent, terminating')), logs.join('\n'));
});

void test('one host process, several qubes (QubeHost): a call between them is set up in-process, with the same bytes to both agents', async () => {
  const host = new QubeHost();
  const policy = (q: { intendedTarget: string }): Promise<PolicyOutcome> =>
    Promise.resolve({ result: 'allow', user: 'DEFAULT', target: 'hvault', targetUuid: 'uuid:00000000-1111-2222-3333-444444444493', requestedTarget: q.intendedTarget, autostart: false });
  // separate socket directories: a call through the target's socket would fail
  const work = await startDaemon(92, 'hwork', { host, policy });
  const vault = await startDaemon(93, 'hvault', { host, policy, defaultUser: 'vaultuser' });
  host.add(work.d);
  host.add(vault.d);
  assert.equal(host.size, 2);
  assert.throws(() => host.add(vault.d), /served twice/);
  work.agent.sock.write(trigger4('hvault', 'SOCKET9', 'my.Service+arg'));
  const e = await vault.agent.message();
  assert.equal(e.type, T.EXEC_CMDLINE);
  assert.ok(e.data.equals(Buffer.concat([u32(92, 513), Buffer.from('vaultuser:QUBESRPC my.Service+arg hwork\0')])), e.data.toString());
  const sc = await work.agent.message();
  assert.equal(sc.type, T.SERVICE_CONNECT);
  assert.ok(sc.data.equals(Buffer.concat([u32(93, 513), pad('SOCKET9', 32)])));
  // the port is released by the target agent's MSG_CONNECTION_TERMINATED, as for socket clients
  vault.agent.sock.write(msg(T.CONNECTION_TERMINATED, u32(92, 513)));
  await new Promise((r) => setTimeout(r, 50));
  work.agent.sock.write(trigger4('hvault', 'SOCKET10', 'my.Service'));
  const e2 = await vault.agent.message();
  assert.ok(e2.data.subarray(0, 8).equals(u32(92, 513)), 'port 513 free again');
  await work.agent.message();
  // a target whose agent is gone: the call is refused, not sent anywhere
  vault.agent.sock.destroy();
  await new Promise((r) => setTimeout(r, 100));
  work.agent.sock.write(trigger4('hvault', 'SOCKET11', 'my.Service'));
  assert.equal((await work.agent.message()).type, T.SERVICE_REFUSED);
});
