/** qrexec-policy-agent (terminal front end), qrexec-policy-exec, qrexec-audit. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { PolicyAgent, TtyFrontend, type AskRequest } from '../../src/policyd/agent.js';
import { callSocketService } from '../../src/policyd/gui-caller.js';
import { silentLogger } from '../../src/policyd/log.js';
import { AuditLog, queryAudit } from '../../src/audit/index.js';
import { writeFixture } from './fixture.js';
import { BIN, spawnDaemon, tmpDirs, waitForSocket } from './helpers.js';

const newDir = tmpDirs();

const ASK: AskRequest = { source: 'work', service: 'qubes.Filecopy', argument: '+', targets: ['vault', '@dispvm:default-dvm'], defaultTarget: 'vault' };

/** A terminal: answers each question (after it is shown) with the next line. */
function terminal(answers: (string | null)[], timeoutMs = 5000): { fe: TtyFrontend; out: () => string } {
  const input = new PassThrough();
  const output = new PassThrough();
  let text = '';
  let asked = 0;
  output.setEncoding('utf8');
  output.on('data', (c: string) => {
    text += c;
    const prompts = text.split('Target number or name').length - 1;
    while (asked < prompts) {
      const a = answers[asked++];
      if (a === null) input.end();
      else if (a !== undefined) setImmediate(() => input.write(a + '\n'));
    }
  });
  return { fe: new TtyFrontend(input, output, timeoutMs), out: () => text };
}

test('tty front end: number or exact name of an offered target; anything else never allows', async () => {
  assert.equal(await terminal(['2']).fe.ask(ASK), '@dispvm:default-dvm');
  assert.equal(await terminal(['vault']).fe.ask(ASK), 'vault');
  assert.equal(await terminal(['']).fe.ask(ASK), null, 'Enter denies, even with a suggested target');
  assert.equal(await terminal(['deny']).fe.ask(ASK), null);
  const t = terminal(['personal', '7', 'vault']);
  assert.equal(await t.fe.ask(ASK), 'vault');
  assert.match(t.out(), /"personal" is not one of the offered targets/);
  assert.equal(await terminal(['x', 'y', 'z', 'vault']).fe.ask(ASK), null, 'three wrong answers deny');
  assert.equal(await terminal([null]).fe.ask(ASK), null, 'end of input denies');
  assert.equal(await terminal([], 200).fe.ask(ASK), null, 'no answer in time denies');
});

test('tty front end: type-ahead does not answer a later question', async () => {
  const input = new PassThrough();
  const output = new PassThrough();
  output.resume();
  const fe = new TtyFrontend(input, output, 300);
  input.write('1\n'); // typed before any question
  assert.equal(await fe.ask(ASK), null);
});

test('agent socket: policy.Ask and policy.Notify as the daemon calls them; bad params deny', async () => {
  const dir = newDir();
  const sock = path.join(dir, 'agent.sock');
  const notes: string[] = [];
  const agent = new PolicyAgent(
    {
      ask: (r) => Promise.resolve(r.targets.includes('vault') ? 'vault' : 'not-offered'),
      notify: (n) => notes.push(`${n.resolution} ${n.service}`),
    },
    silentLogger,
  );
  await agent.listen(sock);
  try {
    const params = { source: 'work', service: 'qubes.Filecopy', argument: '+', targets: ['vault'], default_target: '', icons: {} };
    assert.equal(await callSocketService(sock, 'policy.Ask', params, 5000), 'allow:vault');
    assert.equal(await callSocketService(sock, 'policy.Ask', { ...params, targets: ['other'] }, 5000), 'deny', 'frontend cannot pick outside the list');
    assert.equal(await callSocketService(sock, 'policy.Ask', { ...params, targets: 'vault' }, 5000), 'deny');
    assert.equal(await callSocketService(sock, 'policy.Ask', { ...params, source: 'a\x1b[2Jb' }, 5000), 'deny');
    assert.equal(
      await callSocketService(sock, 'policy.Notify', { resolution: 'deny', service: 's', argument: '+', source: 'a', target: 'b' }, 5000),
      '',
    );
    assert.deepEqual(notes, ['deny s']);
  } finally {
    await agent.close();
  }
});

test('bin/qrexec-policy-agent --tty end to end with the daemon', async () => {
  const dir = newDir();
  const fx = writeFixture(dir);
  const sock = path.join(dir, 'agent.sock');
  const agentProc = spawn(process.execPath, [BIN('qrexec-policy-agent'), '--tty', '-s', sock], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  agentProc.stdout.setEncoding('utf8');
  agentProc.stdout.on('data', (c: string) => {
    out += c;
    if (c.includes('Target number or name')) agentProc.stdin.write('1\n');
  });
  await waitForSocket(sock);
  const d = await spawnDaemon(dir, ['--policy-path', fx.policyDir, '--system-info', fx.infoFile, '--agent-socket', `dom0=${sock}`, '--no-audit']);
  try {
    const { exchange } = await import('./helpers.js');
    const { req } = await import('./fixture.js');
    const r = await exchange(d.socket, req('work', '@default', 'test.Ask'));
    assert.match(r, /^user=DEFAULT\nresult=allow\ntarget=/);
    assert.match(out, /work wants to call test\.Ask/);
  } finally {
    await d.stop();
    agentProc.kill();
  }
  const help = spawnSync(process.execPath, [BIN('qrexec-policy-agent')], { encoding: 'utf8' });
  assert.equal(help.status, 2);
  assert.match(help.stderr, /use --tty/);
});

test('qrexec-policy-exec: asks the daemon; falls back in-process, saying so', async () => {
  const dir = newDir();
  const fx = writeFixture(dir);
  const d = await spawnDaemon(dir, ['--policy-path', fx.policyDir, '--system-info', fx.infoFile, '--no-audit']);
  const run = (args: string[]): ReturnType<typeof spawnSync> =>
    spawnSync(process.execPath, [BIN('qrexec-policy-exec'), ...args], { encoding: 'utf8' });
  try {
    let r = run(['--socket-path', d.socket, 'work', 'vault', 'test.Allow']);
    assert.equal(r.status, 0);
    assert.equal(r.stdout, 'user=DEFAULT\nresult=allow\ntarget=vault\ntarget_uuid=uuid:22222222-2222-2222-2222-222222222222\nautostart=True\nrequested_target=vault\n');
    assert.equal(r.stderr, '');
    r = run(['--socket-path', d.socket, '--just-evaluate', 'work', 'vault', 'test.Deny']);
    assert.equal(r.status, 1);
    assert.equal(r.stdout, 'result=deny\n');
    r = run(['--socket-path', d.socket, '--just-evaluate', '--assume-yes-for-ask', 'work', 'vault', 'test.Ask']);
    assert.equal(r.stdout, 'result=allow\n');
    assert.equal(r.status, 0);
    // 5-argument form with --just-evaluate: exit status only
    r = run(['--socket-path', d.socket, '--just-evaluate', '3', 'work', 'vault', 'test.Allow', 'ident']);
    assert.equal(r.status, 0);
    assert.equal(r.stdout, '');
  } finally {
    await d.stop();
  }
  const r = run(['--socket-path', path.join(dir, 'gone.sock'), '--system-info', fx.infoFile, '--path', fx.policyDir, 'work', 'vault', 'test.Allow']);
  assert.equal(r.status, 0);
  const fb = run(['--socket-path', path.join(dir, 'gone.sock'), '--system-info', fx.infoFile, 'work', 'vault', 'test.Allow']);
  assert.match(fb.stderr as string, /policy daemon not reachable at .*gone\.sock \(ENOENT\); evaluating the policy in-process/);
  const bad = run(['a', 'b']);
  assert.equal(bad.status, 2);
  assert.match(bad.stderr as string, /Must have 3 or 5 positional arguments, not 2/);
});

test('audit log: retention by row count; qrexec-audit filters', async () => {
  const dir = newDir();
  const db = path.join(dir, 'a.sqlite');
  const log = new AuditLog({ path: db, maxRows: 50, pruneIntervalMs: 100 });
  const base = {
    timeMs: Date.now(),
    client: 'qrexec-daemon',
    mode: 'exec',
    requestedSource: null,
    intendedTarget: 'vault',
    argument: '+',
    action: 'allow' as const,
    rule: 'x.policy:1',
    askAnswer: null,
    reason: null,
    durationUs: 5,
  };
  for (let i = 0; i < 200; i++) {
    log.append(
      { ...base, source: i % 2 ? 'work' : 'personal', target: i % 3 ? 'vault' : null, service: `svc${i % 4}`, result: i % 3 ? 'allow' : 'deny' },
      () => {},
    );
  }
  await log.settled();
  await new Promise((r) => setTimeout(r, 400));
  await log.close();
  const all = queryAudit(db, { limit: 0 });
  assert.ok(all.length <= 50, `${all.length} rows kept`);
  const cli = spawnSync(process.execPath, [BIN('qrexec-audit'), '--db', db, '--source', 'work', '--service', 'svc1', '--result', 'allow', '--since', '1h', '--json'], {
    encoding: 'utf8',
  });
  assert.equal(cli.status, 0, cli.stderr);
  const rows = cli.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { source: string; service: string; result: string });
  assert.ok(rows.length > 0);
  for (const r of rows) assert.deepEqual([r.source, r.service, r.result], ['work', 'svc1', 'allow']);
  const text = spawnSync(process.execPath, [BIN('qrexec-audit'), '--db', db, '--limit', '3'], { encoding: 'utf8' });
  assert.equal(text.stdout.trim().split('\n').length, 3);
  const badSince = spawnSync(process.execPath, [BIN('qrexec-audit'), '--db', db, '--since', 'yesterday-ish'], { encoding: 'utf8' });
  assert.equal(badSince.status, 2);
});
