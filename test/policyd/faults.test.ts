/**
 * The daemon against a fake qubesd (system info cached, refreshed on
 * events), policy.EvalSimple/EvalGUI, and the audit log surviving kill -9.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { req, systemInfo, writeFixture } from './fixture.js';
import { exchange, pool, spawnDaemon, tmpDirs } from './helpers.js';
import { queryAudit } from '../../src/audit/index.js';

const newDir = tmpDirs();

/** A fake qubesd: internal.GetSystemInfo on one socket, admin.Events on another. */
class FakeQubesd {
  info: unknown = systemInfo();
  getCalls = 0;
  headers: string[] = [];
  private readonly eventClients = new Set<net.Socket>();
  private readonly servers: net.Server[] = [];

  constructor(
    readonly internalSock: string,
    readonly adminSock: string,
  ) {}

  async start(): Promise<void> {
    const internal = net.createServer({ allowHalfOpen: true }, (s) => {
      let data = '';
      s.setEncoding('latin1');
      s.on('data', (c: string) => (data += c));
      s.on('end', () => {
        this.headers.push(data);
        this.getCalls++;
        s.end(Buffer.concat([Buffer.from('0\0'), Buffer.from(JSON.stringify(this.info))]));
      });
      s.on('error', () => {});
    });
    const admin = net.createServer({ allowHalfOpen: true }, (s) => {
      s.on('error', () => {});
      s.once('data', () => {
        this.eventClients.add(s);
        s.write('1\0\0connection-established\0\0');
      });
      s.on('close', () => this.eventClients.delete(s));
    });
    this.servers.push(internal, admin);
    await Promise.all([
      new Promise<void>((r) => internal.listen(this.internalSock, r)),
      new Promise<void>((r) => admin.listen(this.adminSock, r)),
    ]);
  }

  event(subject: string, name: string): void {
    for (const s of this.eventClients) s.write(`1\0${subject}\0${name}\0\0`);
  }

  get subscribers(): number {
    return this.eventClients.size;
  }

  close(): void {
    for (const s of this.eventClients) s.destroy();
    for (const s of this.servers) s.close();
  }
}

test('system info from qubesd: fetched once, cached, refreshed when qubesd reports an event', async () => {
  const dir = newDir();
  const fx = writeFixture(dir);
  const q = new FakeQubesd(path.join(dir, 'qubesd.internal.sock'), path.join(dir, 'qubesd.sock'));
  await q.start();
  const d = await spawnDaemon(dir, [
    '--policy-path', fx.policyDir,
    '--qubesd-socket', q.internalSock,
    '--qubesd-events-socket', q.adminSock,
    '--no-audit',
  ]);
  try {
    const t0 = Date.now();
    while (q.subscribers === 0) {
      if (Date.now() - t0 > 10_000) assert.fail('daemon never subscribed to admin.Events');
      await new Promise((r) => setTimeout(r, 10));
    }
    await new Promise((r) => setTimeout(r, 100));
    const ALLOW = 'user=DEFAULT\nresult=allow\ntarget=vault\ntarget_uuid=uuid:22222222-2222-2222-2222-222222222222\nautostart=True\nrequested_target=vault';
    assert.equal(await exchange(d.socket, req('work', 'vault', 'test.Allow')), ALLOW);
    const after1 = q.getCalls;
    for (let i = 0; i < 20; i++) assert.equal(await exchange(d.socket, req('work', 'vault', 'test.Allow')), ALLOW);
    assert.equal(q.getCalls, after1, 'served from the cache');
    assert.equal(q.headers[0], 'internal.GetSystemInfo+ dom0 name dom0\0');
    // vault gets a new uuid; qubesd says something changed
    q.info = systemInfo({
      vault: { ...(systemInfo() as { domains: Record<string, object> }).domains['vault'], uuid: '99999999-2222-2222-2222-222222222222' },
    });
    q.event('vault', 'property-set:uuid');
    const t1 = Date.now();
    while (!(await exchange(d.socket, req('work', 'vault', 'test.Allow'))).includes('99999999')) {
      if (Date.now() - t1 > 10_000) assert.fail('new system info never used');
      await new Promise((r) => setTimeout(r, 10));
    }
    // qubesd gone: requests are denied, not allowed with stale data... once the cache is known stale
    q.close();
    fs.rmSync(q.internalSock, { force: true });
    const t2 = Date.now();
    while ((await exchange(d.socket, req('work', 'vault', 'test.Allow'))) !== 'result=deny') {
      if (Date.now() - t2 > 10_000) assert.fail('never denied without qubesd');
      await new Promise((r) => setTimeout(r, 20));
    }
    await d.waitForLog(/error getting system info/);
  } finally {
    await d.stop();
    q.close();
  }
});

/** Write a socket-service request as the qrexec daemon would, read the reply. */
function evalCall(sock: string, header: string, payload: string): Promise<string> {
  return exchange(sock, [Buffer.from(header + '\0', 'latin1'), Buffer.from(payload, 'latin1')], { halfClose: true });
}

test('policy.EvalSimple and policy.EvalGUI', async () => {
  const dir = newDir();
  const fx = writeFixture(dir);
  const simple = path.join(dir, 'policy.EvalSimple');
  const gui = path.join(dir, 'policy.EvalGUI');
  const d = await spawnDaemon(dir, [
    '--policy-path', fx.policyDir,
    '--system-info', fx.infoFile,
    '--eval-socket-path', simple,
    '--gui-socket-path', gui,
    '--no-audit',
  ]);
  try {
    assert.equal(await evalCall(simple, 'policy.EvalSimple+test.Allow personal', 'work\0vault'), 'result=allow\n');
    assert.equal(await evalCall(simple, 'policy.EvalSimple+test.Deny personal', 'work\0vault'), 'result=deny\n');
    // ask counts as yes for the intended target
    assert.equal(await evalCall(simple, 'policy.EvalSimple+test.Ask personal', 'work\0vault'), 'result=allow\n');
    // bad inputs: no reply
    assert.equal(await evalCall(simple, 'policy.EvalSimple personal', 'work\0vault'), '');
    assert.equal(await evalCall(simple, 'policy.EvalSimple++x personal', 'work\0vault'), '');
    assert.equal(await evalCall(simple, 'policy.EvalGUI+test.Allow personal', 'work\0vault'), '');
    assert.equal(await evalCall(simple, 'policy.EvalSimple+test.Allow personal', 'work vault'), '');
    assert.equal(await evalCall(simple, 'policy.EvalSimple+test.Allow personal', 'wo:rk\0vault'), '');
    assert.equal(await evalCall(simple, 'policy.EvalSimple+test.Allow personal', `${'a'.repeat(32)}\0vault`), '');
    // EvalGUI: only the GUI domain of both qubes (tag guivm-sys-gui on work and vault)
    assert.equal(await evalCall(gui, 'policy.EvalGUI+test.Allow sys-gui', 'work\0vault'), 'result=allow\n');
    assert.equal(await evalCall(gui, 'policy.EvalGUI+test.Allow personal', 'work\0vault'), '');
    assert.equal(await evalCall(gui, 'policy.EvalGUI+test.Allow sys-gui', 'work\0personal'), '');
    await d.waitForLog(/can only be invoked by a domain that provides GUI/);
  } finally {
    await d.stop();
  }
});

test('audit: kill -9 during a burst, restart: every acknowledged decision is in the log', async () => {
  const dir = newDir();
  const fx = writeFixture(dir);
  const db = path.join(dir, 'audit.sqlite');
  const args = ['--policy-path', fx.policyDir, '--system-info', fx.infoFile, '--audit-db', db, '--log-level', 'error'];
  const d = await spawnDaemon(dir, args);
  const acked: number[] = [];
  let killed = false;
  const N = 3000;
  await pool(Array.from({ length: N }, (_, i) => i), 16, async (i) => {
    if (killed) return;
    if (i === 1500) {
      killed = true;
      d.proc.kill('SIGKILL');
      return;
    }
    let r = '';
    try {
      r = await exchange(d.socket, req('work', 'vault', `test.Allow+n${i}`), { timeoutMs: 10_000 });
    } catch {
      return;
    }
    if (r.includes('result=allow')) acked.push(i);
  });
  await d.stop('SIGKILL');
  assert.ok(acked.length > 500, `${acked.length} acknowledged before the kill`);
  // restart: the journal left behind is ingested
  const d2 = await spawnDaemon(dir, args);
  try {
    const rows = queryAudit(db, { service: 'test.Allow', limit: 0 });
    const have = new Set(rows.map((r) => r.argument));
    const missing = acked.filter((i) => !have.has(`+n${i}`));
    assert.deepEqual(missing, [], `${missing.length} acknowledged decisions missing`);
    assert.equal(new Set(rows.map((r) => r.id)).size, rows.length, 'no duplicates');
  } finally {
    await d2.stop();
  }
});
