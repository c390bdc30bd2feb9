/**
 * A service asking qrexec-agent (SIGUSR1 to QREXEC_AGENT_PID) to read its
 * output from its stdin socket (reference: agent/qrexec-agent-data.c,
 * libqrexec/process_io.c; qrexec/tests/socket/agent.py
 * TestAgentStreams.test_stdio_socket). One agent process serves every call,
 * so the signal's sender tells which call switches; other calls and
 * unrelated senders change nothing. The fake dom0 and data peers frame
 * messages themselves (test/agent/peer.ts).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, it } from 'node:test';
import { Fixture, ROOT, T, msg, sortMessages, u32, type Conn, type Message } from './peer.js';

const addonBuilt = fs.existsSync(path.join(ROOT, 'native', 'build', 'qrexec_native.node'));
const relayBuilt = fs.existsSync(path.join(ROOT, 'native', 'build', 'qrexec-sigrelay'));

let fx: Fixture | undefined;
let holdDir: string | undefined;
afterEach(async () => {
  await fx?.stop();
  fx = undefined;
  if (holdDir) fs.rmSync(holdDir, { recursive: true, force: true });
  holdDir = undefined;
});

const EOF = Buffer.alloc(0);

/** Reads `type` messages until `expected` bytes came; fails on EOF or any other message. */
async function recvBytes(c: Conn, type: number, expected: string): Promise<string> {
  let got = '';
  while (got.length < expected.length) {
    const m = await c.recv();
    assert.ok(m, `connection closed after ${JSON.stringify(got)}`);
    assert.equal(m.type, type, `unexpected message ${m.type.toString(16)} ${JSON.stringify(m.data.toString())} after ${JSON.stringify(got)}`);
    assert.ok(m.data.length > 0, `EOF after ${JSON.stringify(got)}, wanted ${JSON.stringify(expected)}`);
    got += m.data.toString();
  }
  assert.equal(got, expected);
  return got;
}

/** The rest of a call, sorted by type (as the reference tests' sort_messages), stdout data joined. */
async function rest(c: Conn): Promise<{ stdout: string; tail: Message[] }> {
  const all = sortMessages(await c.recvAll());
  const out = all.filter((m) => m.type === T.DATA_STDOUT && m.data.length > 0);
  return { stdout: out.map((m) => m.data.toString()).join(''), tail: all.filter((m) => !out.includes(m)) };
}

function endOfCall(code: number): Message[] {
  return [
    { type: T.DATA_STDOUT, data: EOF },
    { type: T.DATA_STDERR, data: EOF },
    { type: T.DATA_EXIT_CODE, data: u32(code) },
  ];
}

async function startAgent(extra: NodeJS.ProcessEnv = {}): Promise<Fixture> {
  const f = new Fixture();
  fx = f;
  f.startAgent(extra);
  await f.connectDom0();
  return f;
}

function agentAlive(f: Fixture): void {
  assert.equal(f.agent?.exitCode, null, `agent exited: ${f.agentLog}`);
  assert.equal(f.agent?.signalCode, null, `agent killed: ${f.agentLog}`);
  assert.doesNotMatch(f.agentLog, /Debugger listening|inspector/i);
}

/** Waits until the agent's log matches `re` (the log is written asynchronously). */
async function logMatches(f: Fixture, re: RegExp, timeoutMs = 20000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!re.test(f.agentLog)) {
    if (Date.now() > deadline) assert.fail(`agent log never matched ${String(re)}:\n${f.agentLog}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('qrexec-agent: a service\'s SIGUSR1 (single stdio socket)', { skip: !addonBuilt && 'native addon not built' }, () => {
  it('the reference scenario: switch at once, then talk through stdin only', async () => {
    const f = await startAgent();
    const { target, port } = await f.exec(T.EXEC_CMDLINE, 'kill -USR1 $QREXEC_AGENT_PID\necho hello world >&0\nread x\necho "received: $x" >&0\n');
    await recvBytes(target, T.DATA_STDOUT, 'hello world\n');
    target.send(msg(T.DATA_STDIN, 'stdin\n'));
    target.send(msg(T.DATA_STDIN));
    assert.deepEqual(await rest(target), { stdout: 'received: stdin\n', tail: endOfCall(0) });
    await f.expectTerminated(port);
    agentAlive(f);
  });

  it('output written before the signal goes out through stdout, later output through the stdin socket', async () => {
    const f = await startAgent();
    // a child process (alive until the call ends) sends it and talks through
    // fd 0: the agent looks the sender's parents up
    const svc = f.service('rpc', 'test.Switch', [
      '#!/bin/sh',
      'echo before',
      'read go',
      'sh -c \'kill -USR1 "$QREXEC_AGENT_PID"; echo "after $1" >&0; read x; echo "got $x" >&0\' sh "$go"',
      'exit 3',
      '',
    ].join('\n'));
    assert.ok(fs.existsSync(svc));
    const { target, port } = await f.exec(T.EXEC_CMDLINE, 'QUBESRPC test.Switch domX');
    await recvBytes(target, T.DATA_STDOUT, 'before\n');
    target.send(msg(T.DATA_STDIN, '1\n'));
    await recvBytes(target, T.DATA_STDOUT, 'after 1\n');
    target.send(msg(T.DATA_STDIN, '2\n'));
    target.send(msg(T.DATA_STDIN));
    assert.deepEqual(await rest(target), { stdout: 'got 2\n', tail: endOfCall(3) });
    await f.expectTerminated(port);
    agentAlive(f);
  });

  it('a concurrent call is not switched by another call\'s signal, nor by an unrelated process\'s', async () => {
    const f = await startAgent();
    // B writes to its stdin socket and to stdout; only stdout may reach its caller
    f.service('rpc', 'test.Plain', '#!/bin/sh\nread x\necho "junk on stdin" >&0\necho "b $x"\nread y\necho "b $y"\n');
    f.service('rpc', 'test.Switch', '#!/bin/sh\nkill -USR1 "$QREXEC_AGENT_PID"\nread x\necho "a $x" >&0\n');
    const b = await f.exec(T.EXEC_CMDLINE, 'QUBESRPC test.Plain domX');
    b.target.send(msg(T.DATA_STDIN, '1\n'));
    await recvBytes(b.target, T.DATA_STDOUT, 'b 1\n');

    // call A switches (its signal must not touch B)
    const a = await f.exec(T.EXEC_CMDLINE, 'QUBESRPC test.Switch domX');
    a.target.send(msg(T.DATA_STDIN, 'x\n'));
    a.target.send(msg(T.DATA_STDIN));
    assert.deepEqual(await rest(a.target), { stdout: 'a x\n', tail: endOfCall(0) });
    await f.expectTerminated(a.port);

    // an unrelated process (ours, not the agent's descendant) signals the agent
    // (one at a time: a second SIGUSR1 sent while the first is still pending
    // is the same signal for the kernel, standard signals do not queue)
    const agentPid = f.agent?.pid as number;
    assert.equal(spawnSync('/bin/sh', ['-c', `kill -USR1 ${agentPid}`]).status, 0);
    await logMatches(f, /SIGUSR1 from pid \d+ ignored/);
    process.kill(agentPid, 'SIGUSR1');
    await logMatches(f, /SIGUSR1 from pid \d+ ignored[^\n]*\n[^]*SIGUSR1 from pid \d+ ignored/);

    // B still sends stdout, never its stdin socket's data
    b.target.send(msg(T.DATA_STDIN, '2\n'));
    b.target.send(msg(T.DATA_STDIN));
    assert.deepEqual(await rest(b.target), { stdout: 'b 2\n', tail: endOfCall(0) });
    await f.expectTerminated(b.port);
    agentAlive(f);
  });

  it('a process left over from a service that exited: its call\'s own signal target while the call runs (relay), else not that call\'s any more', async () => {
    const f = await startAgent();
    holdDir = fs.mkdtempSync(path.join(os.tmpdir(), 'qrexec-sigusr1-'));
    const fifo = path.join(holdDir, 'hold');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    // the service exits; its background child (now reparented) signals later and writes to the socket
    f.service(
      'rpc',
      'test.Leftover',
      // (sh gives a background list /dev/null as its stdin: the socket goes through fd 3)
      `#!/bin/sh\nexec 3<&0\n( read go < ${fifo}; kill -USR1 "$QREXEC_AGENT_PID"; echo "late" >&3 ) &\necho main\n`,
    );
    const { target, port } = await f.exec(T.EXEC_CMDLINE, 'QUBESRPC test.Leftover domX');
    await recvBytes(target, T.DATA_STDOUT, 'main\n');
    // the service process is gone (its child holds stdout, so the call goes on)
    await logMatches(f, /test\.Leftover domX \(pid \d+\)/);
    const servicePid = Number(/test\.Leftover domX \(pid (\d+)\)/.exec(f.agentLog)?.[1]);
    const deadline = Date.now() + 20000;
    while (fs.existsSync(`/proc/${servicePid}`) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.ok(!fs.existsSync(`/proc/${servicePid}`), 'the service did not exit');
    fs.writeFileSync(fifo, 'go\n');
    // with per-call relays (native/qrexec-sigrelay) QREXEC_AGENT_PID is the
    // call's own process, as the reference's: whoever signals it switches the
    // call. Without them it is the agent, which finds no running service among
    // the (reparented) sender's parents
    if (!relayBuilt) await logMatches(f, /SIGUSR1 from pid \d+ ignored/);
    target.send(msg(T.DATA_STDIN));
    const r = await rest(target);
    assert.equal(r.stdout, relayBuilt ? 'late\n' : '', f.agentLog);
    assert.deepEqual(r.tail.at(-1), { type: T.DATA_EXIT_CODE, data: u32(0) });
    await f.expectTerminated(port);
    agentAlive(f);
  });

  it('a service exiting before a background child closes its streams (reference test_exit_before_closing_streams)', async () => {
    const f = await startAgent();
    holdDir = fs.mkdtempSync(path.join(os.tmpdir(), 'qrexec-sigusr1-'));
    const fifo = path.join(holdDir, 'fifo');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    const { target, port } = await f.exec(
      T.EXEC_CMDLINE,
      `exec 3<&0\n( read <&3 x; echo stdin closed; read <${fifo} x; echo child exiting )&\necho process waiting\nread <${fifo} x\necho process exiting\nexit 42\n`,
    );
    await recvBytes(target, T.DATA_STDOUT, 'process waiting\n');
    fs.writeFileSync(fifo, '1\n');
    await recvBytes(target, T.DATA_STDOUT, 'process exiting\n');
    await recvBytes(target, T.DATA_STDOUT, 'stdin closed\n');
    fs.writeFileSync(fifo, 'end\n');
    assert.deepEqual(await rest(target), { stdout: 'child exiting\n', tail: endOfCall(42) });
    await f.expectTerminated(port);
  });
});

describe('qrexec-agent without the native addon: SIGUSR1 is logged and ignored', () => {
  it('the service keeps its stdout, the agent lives on and starts no inspector', async () => {
    const f = await startAgent({ QREXEC_TS_NO_NATIVE: '1' });
    const { target, port } = await f.exec(T.EXEC_CMDLINE, 'kill -USR1 $QREXEC_AGENT_PID\nread x\necho "on fd 0" >&0\necho "on stdout $x"\n');
    await logMatches(f, /SIGUSR1 ignored/);
    target.send(msg(T.DATA_STDIN, 'x\n'));
    target.send(msg(T.DATA_STDIN));
    assert.deepEqual(await rest(target), { stdout: 'on stdout x\n', tail: endOfCall(0) });
    await f.expectTerminated(port);
    agentAlive(f);
  });
});

describe('qrexec-agent: the inspector never starts on SIGUSR1', () => {
  it('several signals from outside: the agent keeps serving, nothing listens for a debugger', async () => {
    const f = await startAgent();
    const pid = f.agent?.pid as number;
    for (let i = 0; i < 3; i++) process.kill(pid, 'SIGUSR1');
    await logMatches(f, /SIGUSR1/);
    const { target, port } = await f.exec(T.EXEC_CMDLINE, 'echo still here');
    target.send(msg(T.DATA_STDIN));
    assert.deepEqual(await rest(target), { stdout: 'still here\n', tail: endOfCall(0) });
    await f.expectTerminated(port);
    agentAlive(f);
    // the inspector's default port: a listener there would be ours only if it started
    const tcp = ['/proc/net/tcp', '/proc/net/tcp6'].map((p) => (fs.existsSync(p) ? fs.readFileSync(p, 'utf8') : '')).join('\n');
    const inodes = new Set(
      tcp
        .split('\n')
        .map((l) => l.trim().split(/\s+/))
        .filter((c) => c[1]?.endsWith(':2405') && c[3] === '0A')
        .map((c) => c[9]),
    );
    const fds = fs.readdirSync(`/proc/${pid}/fd`).map((d) => {
      try {
        return fs.readlinkSync(`/proc/${pid}/fd/${d}`);
      } catch {
        return '';
      }
    });
    assert.ok(!fds.some((l) => inodes.has(l.replace(/^socket:\[(\d+)\]$/, '$1'))), 'the agent listens on port 9229');
  });
});
