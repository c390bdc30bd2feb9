/**
 * bin/qrexec-policy-daemon as a process: replies, every bad input and
 * fault the issue lists, ask/notify through a fake agent, reload, audit.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { FakeAgent, req, writeFixture } from './fixture.js';
import { exchange, pool, spawnDaemon, tmpDir, type DaemonProcess } from './helpers.js';
import { queryAudit } from '../../src/audit/index.js';

const ALLOW_WORK_VAULT = 'user=DEFAULT\nresult=allow\ntarget=vault\ntarget_uuid=uuid:22222222-2222-2222-2222-222222222222\nautostart=True\nrequested_target=vault';

/** A request takes well under this even on a loaded machine; used to show nobody waits for a stalled peer. */
const QUICK_MS = 2000;

async function timed<T>(p: Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const v = await p;
  return [v, performance.now() - t0];
}

describe('qrexec-policy-daemon', () => {
  let dir: string;
  let d: DaemonProcess;
  let agent: FakeAgent;
  let fx: ReturnType<typeof writeFixture>;
  const auditDb = (): string => path.join(dir, 'audit.sqlite');

  before(async () => {
    dir = tmpDir();
    fx = writeFixture(dir);
    agent = new FakeAgent(path.join(dir, 'agent.sock'));
    await agent.listen();
    d = await spawnDaemon(dir, [
      '--policy-path', fx.policyDir,
      '--system-info', fx.infoFile,
      '--agent-socket', `dom0=${agent.socketPath}`,
      '--request-timeout', '1',
      '--ask-timeout', '1',
      '--audit-db', auditDb(),
    ]);
  });

  after(async () => {
    await d?.stop();
    await agent?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const good = async (): Promise<void> => {
    const [r, ms] = await timed(exchange(d.socket, req('work', 'vault', 'test.Allow+')));
    assert.equal(r, ALLOW_WORK_VAULT);
    assert.ok(ms < QUICK_MS, `good request took ${ms} ms`);
  };

  test('replies exactly as the reference', async () => {
    assert.equal(await exchange(d.socket, req('work', 'vault', 'test.Allow+')), ALLOW_WORK_VAULT);
    assert.equal(await exchange(d.socket, req('work', 'vault', 'test.Deny')), 'result=deny');
    assert.equal(await exchange(d.socket, req('work', 'vault', 'test.Allow', 'just_evaluate=yes\n')), 'result=allow');
    assert.equal(await exchange(d.socket, req('work', 'vault', 'test.Ask', 'just_evaluate=yes\n')), 'result=deny');
    assert.equal(
      await exchange(d.socket, req('work', 'vault', 'test.Ask', 'assume_yes_for_ask=yes\n')),
      ALLOW_WORK_VAULT,
    );
    assert.equal(
      await exchange(d.socket, req('work', 'dom0', 'test.Allow', 'assume_yes_for_ask=yes\n')),
      'user=DEFAULT\nresult=allow\ntarget=dom0\nautostart=True\nrequested_target=dom0',
    );
    // @dispvm offered by ask + assume_yes: the reference crashes (no reply); we deny.
    fs.writeFileSync(path.join(fx.policyDir, '10-crash.policy'), 'test.Crash * @anyvm @anyvm ask target=@dispvm\n');
    await d.waitForLog('policy loaded');
    assert.equal(await exchange(d.socket, req('work', '@dispvm', 'test.Crash', 'assume_yes_for_ask=yes\n')), 'result=deny');
    fs.unlinkSync(path.join(fx.policyDir, '10-crash.policy'));
  });

  const malformed: [string, string | Buffer, RegExp][] = [
    ['unknown key', 'source=work\nfoo=bar\n\n', /unknown argument foo/],
    ['domain_id', 'domain_id=3\nsource=work\nintended_target=vault\nservice_and_arg=test.Allow\n\n', /unknown argument domain_id/],
    ['process_ident', req('work', 'vault', 'test.Allow', 'process_ident=1\n'), /unknown argument process_ident/],
    ['duplicate key', 'source=work\nsource=work\n\n', /duplicate argument source/],
    ['missing key', 'source=work\nintended_target=vault\n\n', /required argument missing/],
    ['bad boolean', req('work', 'vault', 'test.Allow', 'just_evaluate=1\n'), /invalid bool value 1/],
    ['non-ASCII', Buffer.from(req('wörk', 'vault', 'test.Allow'), 'utf8'), /non-ASCII byte/],
    ['NUL byte (the reference would allow it)', req('work\x00x', 'vault', 'test.Allow'), /non-printable byte 0x00/],
  ];
  for (const [name, input, logRe] of malformed) {
    test(`malformed request closes without a reply: ${name}`, async () => {
      assert.equal(await exchange(d.socket, input), '');
      await d.waitForLog(logRe);
      await good();
    });
  }

  for (const mb of [1, 10]) {
    test(`a ${mb} MB line is cut off and the daemon keeps answering`, async () => {
      const big = Buffer.alloc(mb << 20, 0x61);
      const r = await exchange(d.socket, [Buffer.from('service_and_arg='), big, Buffer.from('\n\n')]);
      assert.equal(r, '');
      await d.waitForLog(/line longer than/);
      await good();
    });
  }

  test('a client that sends half a request and stalls is timed out; others are served meanwhile', async () => {
    const stalled = net.connect(d.socket);
    stalled.on('error', () => {});
    stalled.write('source=work\nintended_target=va');
    const closed = new Promise<number>((resolve) => {
      const t0 = performance.now();
      stalled.on('close', () => resolve(performance.now() - t0));
    });
    for (let i = 0; i < 20; i++) await good();
    const ms = await closed;
    assert.ok(ms >= 500, `closed after ${ms} ms`);
    await d.waitForLog(/no complete request within 1000 ms/);
  });

  test('a client that leaves before the reply does not disturb the daemon', async () => {
    agent.delayMs = 300;
    agent.answer = () => 'allow:vault';
    const s = net.connect(d.socket);
    s.on('error', () => {});
    s.write(req('work', '@default', 'test.Ask'));
    await agent.waitForCalls(agent.calls.length + 1);
    s.destroy();
    await d.waitForLog(/client left before the reply/);
    agent.delayMs = 0;
    await good();
  });

  test('1,000 connections at once all get their reply', async () => {
    const N = 1000;
    const replies = await Promise.all(
      Array.from({ length: N }, (_, i) => exchange(d.socket, req('work', 'vault', i % 2 ? 'test.Allow' : 'test.Deny'), { timeoutMs: 30_000 })),
    );
    replies.forEach((r, i) => assert.equal(r, i % 2 ? ALLOW_WORK_VAULT : 'result=deny'));
    await good();
  });

  test('ask: policy.Ask to the GUI domain with the reference JSON; allow:TARGET and deny', async () => {
    agent.answer = () => 'allow:vault';
    const n = agent.calls.length;
    assert.equal(
      await exchange(d.socket, req('work', '@default', 'test.Ask+arg')),
      ALLOW_WORK_VAULT.replace('requested_target=vault', 'requested_target=@default'),
    );
    // Notifications of earlier tests may still be arriving: pick the ask.
    const call = agent.calls.slice(n).find((c) => c.header.startsWith('policy.Ask'));
    assert.ok(call, 'no policy.Ask call');
    assert.equal(call.header, 'policy.Ask dom0 name dom0');
    assert.deepEqual(
      { ...call.params, icons: undefined },
      {
        source: 'work',
        service: 'test.Ask',
        argument: '+arg',
        targets: call.params['targets'],
        default_target: 'vault',
        icons: undefined,
      },
    );
    const targets = new Set(call.params['targets'] as string[]);
    assert.ok(targets.has('vault') && targets.has('@dispvm:default-dvm') && !targets.has('work'));
    const icons = call.params['icons'] as Record<string, string>;
    assert.equal(icons['work'], 'appvm-red');
    assert.equal(icons['@dispvm:default-dvm'], 'dispvm-red');

    agent.answer = () => 'deny';
    assert.equal(await exchange(d.socket, req('work', '@default', 'test.Ask')), 'result=deny');
    agent.answer = () => 'allow:personal-not-offered';
    assert.equal(await exchange(d.socket, req('work', '@default', 'test.Ask')), 'result=deny');
    agent.answer = () => 'yes please';
    assert.equal(await exchange(d.socket, req('work', '@default', 'test.Ask')), 'result=deny');
    await d.waitForLog(/invalid ask response/);
  });

  test('ask: a silent agent means deny after the timeout, and blocks no one else', async () => {
    agent.delayMs = 5000;
    const slow = timed(exchange(d.socket, req('work', '@default', 'test.Ask')));
    await good();
    const [r, ms] = await slow;
    assert.equal(r, 'result=deny');
    assert.ok(ms >= 900 && ms < 4500, `ask answered after ${ms} ms`);
    agent.delayMs = 0;
    await d.waitForLog(/no answer within 1000 ms/);
  });

  test('ask: no GuiVM means deny', async () => {
    assert.equal(await exchange(d.socket, req('vault', '@default', 'test.Ask')), 'result=deny');
    await d.waitForLog(/source domain has no GuiVM/);
  });

  test('notify: denies notify unless notify=no; allows only with notify=yes; never for just_evaluate', async () => {
    agent.answer = () => '';
    const notes = (): AgentCall[] => agent.calls.filter((c) => c.service === 'policy.Notify');
    type AgentCall = (typeof agent.calls)[number];
    const before = notes().length;
    assert.equal(await exchange(d.socket, req('work', 'vault', 'test.Deny+x')), 'result=deny');
    await agent.waitForCalls(agent.calls.length + 1);
    const n1 = notes()[before];
    assert.deepEqual(n1?.params, { resolution: 'deny', service: 'test.Deny', argument: '+x', source: 'work', target: 'vault' });
    await exchange(d.socket, req('work', 'vault', 'test.DenyQuiet'));
    await exchange(d.socket, req('work', 'vault', 'test.Allow'));
    await exchange(d.socket, req('work', 'vault', 'test.Deny', 'just_evaluate=yes\n'));
    assert.equal(await exchange(d.socket, req('work', 'vault', 'test.AllowNotify')), ALLOW_WORK_VAULT);
    await agent.waitForCalls(agent.calls.length + 1);
    await new Promise((r) => setTimeout(r, 200));
    const got = notes().slice(before).map((c) => `${c.params['resolution'] as string}:${c.params['service'] as string}`);
    assert.deepEqual(got, ['deny:test.Deny', 'allow:test.AllowNotify']);
  });

  test('notify: a dead agent is logged and dropped; the reply is unchanged and prompt', async () => {
    await agent.close();
    const [r, ms] = await timed(exchange(d.socket, req('work', 'vault', 'test.Deny')));
    assert.equal(r, 'result=deny');
    assert.ok(ms < QUICK_MS);
    await d.waitForLog(/error calling qrexec-policy-agent in dom0/);
    assert.equal(await exchange(d.socket, req('work', '@default', 'test.Ask')), 'result=deny');
    agent = new FakeAgent(agent.socketPath);
    fs.rmSync(agent.socketPath, { force: true });
    await agent.listen();
  });

  test('reload: a change is visible promptly; a syntax error denies everything with file:line; a fix recovers', async () => {
    const probe = (): Promise<string> => exchange(d.socket, req('work', 'vault', 'test.Reload', 'just_evaluate=yes\n'));
    const until = async (want: string): Promise<void> => {
      const t0 = Date.now();
      while ((await probe()) !== want) {
        if (Date.now() - t0 > 10_000) assert.fail(`never saw ${want}`);
        await new Promise((r) => setTimeout(r, 5));
      }
    };
    assert.equal(await probe(), 'result=deny');
    fs.writeFileSync(path.join(fx.policyDir, '10-reload.policy'), 'test.Reload * @anyvm @anyvm allow\n');
    await until('result=allow');
    fs.writeFileSync(path.join(fx.policyDir, '10-reload.policy'), 'test.Reload * @anyvm @anyvm allow\nthis is not a rule\n');
    await until('result=deny');
    await d.waitForLog(/10-reload\.policy:2: /);
    assert.equal(await exchange(d.socket, req('work', 'vault', 'test.Allow')), 'result=deny', 'broken policy denies all');
    // an include that is broken counts too
    fs.writeFileSync(path.join(fx.policyDir, '10-reload.policy'), 'test.Reload * @anyvm @anyvm allow\n');
    await until('result=allow');
    assert.equal(await exchange(d.socket, req('work', 'vault', 'test.Allow')), ALLOW_WORK_VAULT);
    fs.writeFileSync(path.join(fx.policyDir, '05-inc.policy'), '!include include/extra\n');
    fs.writeFileSync(path.join(fx.policyDir, 'include', 'extra'), 'test.Reload * @anyvm @anyvm deny\n');
    await until('result=deny');
    fs.writeFileSync(path.join(fx.policyDir, 'include', 'extra'), 'test.Reload * @anyvm @anyvm allow\n');
    await until('result=allow');
    fs.unlinkSync(path.join(fx.policyDir, '05-inc.policy'));
    fs.unlinkSync(path.join(fx.policyDir, 'include', 'extra'));
    fs.unlinkSync(path.join(fx.policyDir, '10-reload.policy'));
    await until('result=deny');
  });

  test('reload: policy directory removed and re-created', async () => {
    const saved = fs.readFileSync(fx.policyFile);
    fs.rmSync(fx.policyDir, { recursive: true });
    const t0 = Date.now();
    while ((await exchange(d.socket, req('work', 'vault', 'test.Allow'))) !== 'result=deny') {
      if (Date.now() - t0 > 10_000) assert.fail('removal never seen');
      await new Promise((r) => setTimeout(r, 10));
    }
    fs.mkdirSync(path.join(fx.policyDir, 'include'), { recursive: true });
    fs.writeFileSync(fx.policyFile + '.tmp', saved);
    fs.renameSync(fx.policyFile + '.tmp', fx.policyFile);
    while ((await exchange(d.socket, req('work', 'vault', 'test.Allow'))) !== ALLOW_WORK_VAULT) {
      if (Date.now() - t0 > 15_000) assert.fail('re-creation never seen');
      await new Promise((r) => setTimeout(r, 10));
    }
  });

  test('policy files replaced while being read: only answers one of the two policies gives, then the last', async () => {
    const f = path.join(fx.policyDir, '10-flip.policy');
    const allowText = 'test.Flip * @anyvm @anyvm allow\n'.repeat(1) + '# padding\n'.repeat(2000);
    const denyText = 'test.Flip * @anyvm @anyvm deny\n' + '# padding\n'.repeat(2000);
    let stop = false;
    const writer = (async () => {
      for (let i = 0; !stop; i++) {
        fs.writeFileSync(f, i % 2 ? allowText : denyText); // not atomic on purpose
        await new Promise((r) => setImmediate(r));
      }
    })();
    const replies = await pool(Array.from({ length: 400 }), 8, () => exchange(d.socket, req('work', 'vault', 'test.Flip')));
    stop = true;
    await writer;
    for (const r of replies) assert.ok(r === 'result=deny' || r === ALLOW_WORK_VAULT, `unexpected reply ${r}`);
    fs.writeFileSync(f, allowText);
    const t0 = Date.now();
    while ((await exchange(d.socket, req('work', 'vault', 'test.Flip'))) !== ALLOW_WORK_VAULT) {
      if (Date.now() - t0 > 10_000) assert.fail('final policy never seen');
      await new Promise((r) => setTimeout(r, 10));
    }
    fs.unlinkSync(f);
  });

  test('every decision is in the audit log (qrexec-audit query)', async () => {
    const marker = `test.Allow+audit${Date.now()}`;
    assert.equal(await exchange(d.socket, req('work', 'vault', marker)), ALLOW_WORK_VAULT);
    assert.equal(await exchange(d.socket, req('personal', 'vault', 'test.Deny+audit')), 'result=deny');
    const rows = queryAudit(auditDb(), { source: 'work', service: 'test.Allow', limit: 0 });
    const row = rows.find((r) => r.argument === marker.slice('test.Allow'.length));
    assert.ok(row, 'allow recorded');
    assert.equal(row.result, 'allow');
    assert.equal(row.target, 'vault');
    assert.equal(row.rule, '50-test.policy:1');
    assert.equal(row.mode, 'exec');
    const denies = queryAudit(auditDb(), { source: 'personal', result: 'deny', limit: 0 });
    assert.ok(denies.some((r) => r.argument === '+audit' && r.rule === '50-test.policy:2'));
    const asks = queryAudit(auditDb(), { service: 'test.Ask', limit: 0 });
    assert.ok(asks.some((r) => r.ask_answer === 'allow:vault' && r.result === 'allow'));
    assert.ok(asks.some((r) => r.ask_answer === 'timeout' && r.result === 'deny'));
  });
});
