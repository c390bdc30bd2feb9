/**
 * The agent's data-vchan limits beyond the reference (README, "Data-channel
 * hardening"): set-up timeout (a vchan that never appears, a peer that never
 * sends MSG_HELLO), idle timeout (no frame either way), the exit-code range,
 * and the per-call cap on logged protocol complaints. A fake dom0 and a fake
 * caller (test/agent/peer.ts) frame everything themselves.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, it } from 'node:test';
import { PassThrough } from 'node:stream';
import { memoryPair, startPump } from '../../src/vchan/index.js';
import { Fixture, ROOT, T, TARGET_DOMAIN, execPayload, msg, u32 } from './peer.js';

let fx: Fixture | undefined;
afterEach(async () => {
  await fx?.stop();
  fx = undefined;
});

async function agentWith(env: NodeJS.ProcessEnv): Promise<Fixture> {
  fx = new Fixture();
  fx.startAgent(env);
  await fx.connectDom0();
  return fx;
}

const user = os.userInfo().username;
const exitCode = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeInt32LE(n, 0);
  return msg(T.DATA_EXIT_CODE, b);
};
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

void describe('data vchan set-up timeout', () => {
  void it('a data vchan that never appears ends the call after the set-up timeout', async () => {
    const f = await agentWith({ QREXEC_DATA_SETUP_TIMEOUT: '0.5' });
    const port = f.nextPort();
    const t0 = Date.now();
    f.dom0?.send(msg(T.EXEC_CMDLINE, execPayload(TARGET_DOMAIN, port, `${user}:cat`)));
    await f.expectTerminated(port); // without the limit: after 120 s
    assert.ok(Date.now() - t0 < 10_000);
    assert.match(f.agentLog, /Data vchan connection failed: .*no server after 500 ms/);
  });

  void it('a peer that connects and never sends MSG_HELLO is closed after the set-up timeout', async () => {
    const f = await agentWith({ QREXEC_DATA_SETUP_TIMEOUT: '0.5' });
    const port = f.nextPort();
    const srv = f.target(port);
    f.dom0?.send(msg(T.EXEC_CMDLINE, execPayload(TARGET_DOMAIN, port, `${user}:cat`)));
    const peer = await srv.conn;
    const got = await peer.recvAll(); // the agent's HELLO, then its close
    assert.deepEqual(got.map((m) => m.type), [T.HELLO]);
    await f.expectTerminated(port);
    assert.match(f.agentLog, new RegExp(`domain ${TARGET_DOMAIN} .*port ${port}: no MSG_HELLO within 0.5 s`));
  });

  void it("the caller's side: a data vchan nobody connects to ends the launcher's call after the set-up timeout", async () => {
    const f = await agentWith({ QREXEC_DATA_SETUP_TIMEOUT: '0.5' });
    const t0 = Date.now();
    const launcher = spawn(path.join(ROOT, 'bin', 'qrexec-client-vm'), [`--agent-socket=${f.agentSocket}`, 'vault', 'test.Nobody'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    launcher.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const status = new Promise<number | null>((r) => launcher.on('close', (c) => r(c)));
    const trigger = await f.dom0?.recv();
    assert.equal(trigger?.type, T.TRIGGER_SERVICE4);
    const port = f.nextPort();
    // the call is allowed, but its target never connects to the caller's data vchan
    f.dom0?.send(msg(T.SERVICE_CONNECT, Buffer.concat([u32(TARGET_DOMAIN), u32(port), (trigger?.data as Buffer).subarray(128, 160)])));
    assert.notEqual(await status, 0, err);
    assert.ok(Date.now() - t0 < 10_000, 'the call ended after the set-up timeout, not the default 120 s');
    await f.expectTerminated(port);
    assert.match(f.agentLog, /Data vchan connection failed/);
  });

  void it('a bad limit is a usage error', () => {
    for (const [args, env] of [[['--data-idle-timeout=soon'], {}], [[], { QREXEC_DATA_SETUP_TIMEOUT: '-1' }]] as const) {
      const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'qrexec-agent'), ...args], { env: { ...process.env, ...env }, encoding: 'utf8', timeout: 10_000 });
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, /not a number of seconds/);
    }
  });
});

void describe('data vchan idle timeout', () => {
  void it('an established call without any frame is closed after the idle timeout; the service ends', async () => {
    const f = await agentWith({ QREXEC_DATA_IDLE_TIMEOUT: '0.4' });
    const { target, port } = await f.exec(T.EXEC_CMDLINE, 'cat');
    const t0 = Date.now();
    await target.recvAll(); // closed by the agent
    const waited = Date.now() - t0;
    assert.ok(waited >= 400, `closed after ${waited} ms`);
    await f.expectTerminated(port); // cat saw its EOF and exited: the call is over
    assert.match(f.agentLog, new RegExp(`port ${port}: no frame either way for 0.4 s: closing the data vchan`));
  });

  void it('frames in either direction keep a call alive past the idle timeout', async () => {
    const f = await agentWith({ QREXEC_DATA_IDLE_TIMEOUT: '0.4' });
    const { target, port } = await f.exec(T.EXEC_CMDLINE, 'cat');
    // 1.5 s of traffic, a frame every 150 ms (cat echoes each)
    for (let i = 0; i < 10; i++) {
      target.send(msg(T.DATA_STDIN, `${i}`));
      const m = await target.recv();
      assert.deepEqual([m?.type, m?.data.toString()], [T.DATA_STDOUT, `${i}`]);
      await sleep(150);
    }
    target.send(msg(T.DATA_STDIN));
    const rest = await target.recvAll();
    assert.equal(rest.find((m) => m.type === T.DATA_EXIT_CODE)?.data.readInt32LE(0), 0, 'cat ran to its end');
    await f.expectTerminated(port);
    assert.doesNotMatch(f.agentLog, /no frame either way/);
  });

  void it('off by default: a silent established call stays open', async () => {
    const f = await agentWith({});
    const { target } = await f.exec(T.EXEC_CMDLINE, 'cat');
    await sleep(1500);
    target.send(Buffer.concat([msg(T.DATA_STDIN, 'late'), msg(T.DATA_STDIN)]));
    const rest = await target.recvAll();
    assert.equal(rest.filter((m) => m.type === T.DATA_STDOUT).map((m) => m.data.toString()).join(''), 'late');
  });
});

void describe('protocol complaints', () => {
  void it('200,000 wrong-side frames: ten complaints logged, the rest counted in one line', async () => {
    const f = await agentWith({});
    const { target, port } = await f.exec(T.EXEC_CMDLINE, 'wc -c');
    const before = f.agentLog.length;
    target.send(Buffer.concat(Array.from({ length: 200_000 }, () => exitCode(1))));
    target.send(Buffer.concat([msg(T.DATA_STDIN, 'abcd'), msg(T.DATA_STDIN)]));
    const got = await target.recvAll();
    assert.equal(got.filter((m) => m.type === T.DATA_STDOUT).map((m) => m.data.toString()).join('').trim(), '4');
    await f.expectTerminated(port);
    const added = f.agentLog.slice(before);
    assert.equal(added.match(/client sent MSG_DATA_EXIT_CODE/g)?.length, 10);
    assert.match(added, new RegExp(`domain ${TARGET_DOMAIN} .*port ${port}: 199990 more protocol complaints in this call were not logged`));
    assert.ok(added.length < 4096, `${added.length} bytes of log`);
  });
});

void describe('exit codes outside 0-255', () => {
  for (const code of [256, -1, -(2 ** 31), 2 ** 31 - 1]) {
    void it(`${code} is a failure (255), logged with the peer's name`, async () => {
      const [ours, theirs] = memoryPair();
      const logs: string[] = [];
      const out = new PassThrough();
      out.resume();
      const input = new PassThrough();
      input.end();
      const pump = startPump({ channel: ours, role: 'client', sink: out, source: input, single: false, peer: 'domain 7 (evil) port 9', log: (m) => logs.push(m) });
      theirs.write(msg(T.HELLO, u32(3)));
      theirs.write(Buffer.concat([msg(T.DATA_STDOUT), msg(T.DATA_STDERR), exitCode(code)]));
      assert.equal(await pump.done, 255);
      assert.ok(logs.some((l) => l === `domain 7 (evil) port 9 sent exit code ${code}, outside 0-255: the call fails with 255`), logs.join('\n'));
    });
  }
  void it('0-255 pass unchanged', async () => {
    for (const code of [0, 1, 255]) {
      const [ours, theirs] = memoryPair();
      const input = new PassThrough();
      input.end();
      const out = new PassThrough();
      out.resume();
      const pump = startPump({ channel: ours, role: 'client', sink: out, source: input, single: false });
      theirs.write(Buffer.concat([msg(T.HELLO, u32(3)), msg(T.DATA_STDOUT), msg(T.DATA_STDERR), exitCode(code)]));
      assert.equal(await pump.done, code);
    }
  });
});
