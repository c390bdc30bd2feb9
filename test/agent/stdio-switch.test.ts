/**
 * A local program asking (SIGUSR1 to QREXEC_AGENT_PID) to send its output
 * through its stdin socket, in qrexec-client-vm's Node implementation (as it
 * runs beside a reference agent) and in the native launcher beside our agent;
 * and a socket service of the agent ending its call by closing. The peers
 * frame messages themselves (test/agent/peer.ts).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, it } from 'node:test';
import { DOMAIN, Fixture, ROOT, T, TARGET_DOMAIN, connectRetry, msg, sortMessages, u32, type Conn, type Message } from './peer.js';

const NODE_CLIENT = path.join(ROOT, 'dist', 'src', 'cli', 'qrexec-client-vm.js');
const LAUNCHER = path.join(ROOT, 'native', 'build', 'qrexec-client-vm');
const launcherBuilt = fs.existsSync(LAUNCHER) && fs.existsSync(path.join(ROOT, 'native', 'build', 'qrexec_native.node'));
const PORT = 1024;

let fx: Fixture | undefined;
let child: ChildProcess | undefined;
let holdDir: string | undefined;
const servers: net.Server[] = [];
afterEach(async () => {
  if (holdDir) fs.rmSync(holdDir, { recursive: true, force: true });
  holdDir = undefined;
  child?.kill('SIGKILL');
  child = undefined;
  for (const s of servers.splice(0)) s.close();
  await fx?.stop();
  fx = undefined;
});

/** The program of the reference scenario: switch at once, then talk through stdin only. */
const SWITCH_FIRST = 'kill -USR1 "$QREXEC_AGENT_PID"\necho hello world >&0\nread x\necho "received: $x" >&0\n';

/** Switch after stdin has ended; a FIFO ($1) keeps the program alive until the test lets it go. */
const SWITCH_AFTER_EOF =
  'set -eu\necho hello world\nread -r x\ncat\nkill -USR1 "$QREXEC_AGENT_PID"\necho "received: $x" >&0\nread -r y < "$1"\n';

/** Reads DATA_STDIN messages until `expected` bytes came (EOF before that fails). */
async function stdinBytes(svc: Conn, expected: string): Promise<string> {
  let got = '';
  while (got.length < expected.length) {
    const m = await svc.recv();
    assert.ok(m, `connection closed after ${JSON.stringify(got)}`);
    assert.equal(m.type, T.DATA_STDIN);
    assert.ok(m.data.length > 0, `EOF after ${JSON.stringify(got)}, wanted ${JSON.stringify(expected)}`);
    got += m.data.toString();
  }
  return got;
}

function exited(c: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    if (c.exitCode !== null) resolve(c.exitCode);
    else c.once('exit', (code) => resolve(code));
  });
}

/**
 * qrexec-client-vm's Node implementation beside a fake reference agent: the
 * agent socket answers the request with (domain, port), as the reference
 * agent does; we then play the service end of the data vchan.
 */
async function nodeClientCall(program: string[]): Promise<Conn> {
  fx = new Fixture();
  const agentSocket = path.join(fx.dir, 'ref-agent.sock');
  const server = net.createServer((s) => {
    s.on('error', () => undefined);
    let got = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length >= 8 && got.length >= 8 + got.readUInt32LE(4)) s.write(Buffer.concat([u32(TARGET_DOMAIN), u32(PORT)]));
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(agentSocket, () => r()));
  child = spawn(process.execPath, [NODE_CLIENT, `--agent-socket=${agentSocket}`, 'target', 'qubes.ServiceName', ...program], {
    env: fx.env(),
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const svc = await connectRetry(path.join(fx.dir, `vchan.${DOMAIN}.${TARGET_DOMAIN}.${PORT}.sock`));
  await svc.handshake();
  return svc;
}

/** The native launcher beside our agent; a fake dom0 accepts the trigger. */
async function launcherCall(program: string[]): Promise<Conn> {
  fx = new Fixture();
  fx.startAgent();
  const dom0 = await fx.connectDom0();
  child = spawn(LAUNCHER, [`--agent-socket=${fx.agentSocket}`, 'vault', 'qubes.Svc', ...program], { env: fx.env(), stdio: ['ignore', 'pipe', 'pipe'] });
  const trigger = await dom0.recv();
  assert.equal(trigger?.type, T.TRIGGER_SERVICE4);
  dom0.send(msg(T.SERVICE_CONNECT, Buffer.concat([u32(TARGET_DOMAIN), u32(PORT), trigger.data.subarray(128, 160)])));
  const svc = await connectRetry(path.join(fx.dir, `vchan.${DOMAIN}.${TARGET_DOMAIN}.${PORT}.sock`));
  await svc.handshake();
  return svc;
}

/** Both scenarios, for one way of running the caller. */
function switchScenarios(call: (program: string[]) => Promise<Conn>): void {
  it('a program that switches at once sends and receives through its stdin socket', async () => {
    const svc = await call(['/bin/sh', '-c', SWITCH_FIRST]);
    assert.equal(await stdinBytes(svc, 'hello world\n'), 'hello world\n');
    svc.send(msg(T.DATA_STDOUT, 'stdin\n'));
    svc.send(msg(T.DATA_STDOUT));
    assert.equal(await stdinBytes(svc, 'received: stdin\n'), 'received: stdin\n');
    assert.deepEqual(await svc.recv(), { type: T.DATA_STDIN, data: Buffer.alloc(0) });
    svc.send(msg(T.DATA_EXIT_CODE, u32(42)));
    assert.equal(await exited(child as ChildProcess), 42);
  });

  it('a program whose stdin already ended can still switch and write its output to it', async () => {
    holdDir = fs.mkdtempSync(path.join(os.tmpdir(), 'qrexec-switch-'));
    const fifo = path.join(holdDir, 'hold');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    const svc = await call(['/bin/sh', '-c', SWITCH_AFTER_EOF, 'sh', fifo]);
    assert.equal(await stdinBytes(svc, 'hello world\n'), 'hello world\n');
    svc.send(msg(T.DATA_STDOUT, 'stdin\n'));
    svc.send(msg(T.DATA_STDOUT));
    assert.equal(await stdinBytes(svc, 'received: stdin\n'), 'received: stdin\n');
    // let the program exit: its end of the socket closes
    fs.writeFileSync(fifo, 'go\n');
    assert.deepEqual(await svc.recv(), { type: T.DATA_STDIN, data: Buffer.alloc(0) });
    svc.send(msg(T.DATA_EXIT_CODE, u32(42)));
    assert.equal(await exited(child as ChildProcess), 42);
  });
}

describe('qrexec-client-vm (Node, beside a reference agent): SIGUSR1 stdio switch', () => {
  switchScenarios(nodeClientCall);
});

describe('qrexec-client-vm launcher beside our agent: SIGUSR1 stdio switch', { skip: !launcherBuilt && 'native parts not built' }, () => {
  switchScenarios(launcherCall);
});

describe('qrexec-agent: socket services that close', () => {
  it('a socket service that answers and closes ends the call without dom0\'s EOF', async () => {
    fx = new Fixture();
    const sockPath = path.join(fx.dir, 'rpc', 'qubes.SocketService+arg');
    const header = 'qubes.SocketService+arg domX\0';
    const server = net.createServer({ allowHalfOpen: true }, (s) => {
      s.on('error', () => undefined);
      let got = '';
      s.on('data', (d: Buffer) => {
        got += d.toString('latin1');
        if (got === header) s.end('stdout data', () => s.destroy());
      });
    });
    servers.push(server);
    await new Promise<void>((r) => server.listen(sockPath, () => r()));
    fx.startAgent();
    await fx.connectDom0();
    const { target, port } = await fx.exec(T.EXEC_CMDLINE, 'QUBESRPC qubes.SocketService+arg domX');
    // no MSG_DATA_STDIN at all, not even EOF
    const msgs: Message[] = await target.recvAll();
    assert.deepEqual(sortMessages(msgs), [
      { type: T.DATA_STDOUT, data: Buffer.from('stdout data') },
      { type: T.DATA_STDOUT, data: Buffer.alloc(0) },
      { type: T.DATA_STDERR, data: Buffer.alloc(0) },
      { type: T.DATA_EXIT_CODE, data: u32(0) },
    ]);
    await fx.expectTerminated(port);
  });
});
