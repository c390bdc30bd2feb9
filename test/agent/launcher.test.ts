/**
 * The native qrexec-client-vm launcher against a running qrexec-agent, with a
 * fake dom0 that answers the trigger and plays the service side of the call.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { callService } from '../../src/agent/index.js';
import { DOMAIN, Fixture, ROOT, T, TARGET_DOMAIN, connectRetry, fixed, msg, u32, type Conn } from './peer.js';

const LAUNCHER = path.join(ROOT, 'native', 'build', 'qrexec-client-vm');
const built = fs.existsSync(LAUNCHER) && fs.existsSync(path.join(ROOT, 'native', 'build', 'qrexec_native.node'));

interface Run {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

let fx: Fixture;
let port = 2000;

function runLauncher(args: string[], stdin: Buffer | 'ignore' = Buffer.alloc(0), env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve) => {
    const c = spawn(LAUNCHER, [`--agent-socket=${fx.agentSocket}`, ...args], {
      stdio: [stdin === 'ignore' ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    const out: Buffer[] = [];
    let err = '';
    c.stdout?.on('data', (d: Buffer) => out.push(d));
    c.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    if (stdin !== 'ignore') c.stdin?.end(stdin);
    c.on('close', (code) => resolve({ code, stdout: Buffer.concat(out), stderr: err }));
  });
}

/** Waits for the trigger on the control channel; returns its payload. */
async function nextTrigger(): Promise<Buffer> {
  let m = await fx.dom0?.recv();
  while (m?.type === T.CONNECTION_TERMINATED) m = await fx.dom0?.recv();
  assert.equal(m?.type, T.TRIGGER_SERVICE4);
  return m?.data as Buffer;
}

/** Accepts a trigger and connects to the agent's data vchan as the service side. */
async function accept(trigger: Buffer): Promise<Conn> {
  const identField = trigger.subarray(128, 160);
  const p = port++;
  fx.dom0?.send(msg(T.SERVICE_CONNECT, Buffer.concat([u32(TARGET_DOMAIN), u32(p), identField])));
  const svc = await connectRetry(path.join(fx.dir, `vchan.${DOMAIN}.${TARGET_DOMAIN}.${p}.sock`));
  await svc.handshake();
  return svc;
}

/** Reads DATA_STDIN until EOF. */
async function readStdin(svc: Conn): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (;;) {
    const m = await svc.recv();
    assert.ok(m, 'connection closed before stdin EOF');
    assert.equal(m.type, T.DATA_STDIN);
    if (m.data.length === 0) return Buffer.concat(parts);
    parts.push(m.data);
  }
}

describe('qrexec-client-vm launcher', { skip: !built && 'native parts not built' }, () => {
  before(async () => {
    fx = new Fixture();
    fx.startAgent();
    await fx.connectDom0();
  });
  after(async () => {
    await fx.stop();
  });

  it('sends the reference request bytes, passes stdio, exits with the remote code', async () => {
    const run = runLauncher(['--source-qube=toto', '$default', 'qubes.ServiceName+arg'], Buffer.from('stdin data'));
    const trig = await nextTrigger();
    assert.deepEqual(trig.subarray(0, 128), Buffer.concat([fixed('toto', 64), fixed('@default', 64)]));
    assert.deepEqual(trig.subarray(160), Buffer.from('qubes.ServiceName+arg\0'));
    const svc = await accept(trig);
    assert.deepEqual(await readStdin(svc), Buffer.from('stdin data'));
    svc.send(msg(T.DATA_STDOUT, 'stdout data\n'));
    svc.send(msg(T.DATA_STDERR, 'remote stderr\n'));
    svc.send(msg(T.DATA_STDOUT));
    svc.send(msg(T.DATA_EXIT_CODE, u32(42)));
    const r = await run;
    assert.equal(r.code, 42);
    assert.equal(r.stdout.toString(), 'stdout data\n');
    assert.equal(r.stderr, 'remote stderr\n');
    svc.close();
    const term = await fx.dom0?.recv();
    assert.deepEqual(term, { type: T.CONNECTION_TERMINATED, data: Buffer.concat([u32(TARGET_DOMAIN), u32(port - 1)]) });
  });

  it('prints "Request refused" and exits 126 when dom0 refuses', async () => {
    const run = runLauncher(['vault', 'qubes.Denied']);
    const trig = await nextTrigger();
    fx.dom0?.send(msg(T.SERVICE_REFUSED, trig.subarray(128, 160)));
    const r = await run;
    assert.equal(r.code, 126);
    assert.equal(r.stderr, 'Request refused\n');
  });

  it('--prefix-data goes first; -t replaces unsafe bytes; 64 KiB+ streams intact', async () => {
    const big = Buffer.alloc(200_000, 0x61);
    const run = runLauncher(['-t', '--prefix-data=PFX', 'vault', 'qubes.Echo'], big);
    const svc = await accept(await nextTrigger());
    const got = await readStdin(svc);
    assert.equal(got.length, 3 + big.length);
    assert.equal(got.subarray(0, 3).toString(), 'PFX');
    svc.send(msg(T.DATA_STDOUT, Buffer.from('hello\x00world\xff', 'latin1')));
    svc.send(msg(T.DATA_STDOUT));
    svc.send(msg(T.DATA_EXIT_CODE, u32(0)));
    const r = await run;
    assert.equal(r.code, 0);
    assert.equal(r.stdout.toString('latin1'), 'hello_world_');
  });

  it('runs a local program connected to the call; its failure makes the exit status nonzero', async () => {
    let run = runLauncher(['vault', 'qubes.Svc', '/bin/cat'], 'ignore');
    let svc = await accept(await nextTrigger());
    svc.send(msg(T.DATA_STDOUT, 'to cat\n'));
    svc.send(msg(T.DATA_STDOUT));
    assert.deepEqual(await readStdin(svc), Buffer.from('to cat\n'));
    svc.send(msg(T.DATA_EXIT_CODE, u32(7)));
    assert.equal((await run).code, 7);

    run = runLauncher(['vault', 'qubes.Svc', '/bin/false'], 'ignore');
    svc = await accept(await nextTrigger());
    svc.send(msg(T.DATA_STDOUT));
    svc.send(msg(T.DATA_EXIT_CODE, u32(0)));
    assert.equal((await run).code, 1);
  });

  it('the local program gets SAVED_FD_0/1 and QREXEC_AGENT_PID of the launcher', async () => {
    const run = runLauncher(['vault', 'qubes.Svc', '/bin/sh', '-c', 'echo "$SAVED_FD_0 $SAVED_FD_1 ${SAVED_FD_2-none} $QREXEC_AGENT_PID $PPID"'], 'ignore');
    const svc = await accept(await nextTrigger());
    svc.send(msg(T.DATA_STDOUT));
    const line = (await readStdin(svc)).toString().trim().split(' ');
    svc.send(msg(T.DATA_EXIT_CODE, u32(0)));
    await run;
    assert.match(line[0] as string, /^[0-9]+$/);
    assert.match(line[1] as string, /^[0-9]+$/);
    assert.equal(line[2], 'none');
    assert.equal(line[3], line[4]);
  });

  it('exits 255 when the service side disconnects without an exit code', async () => {
    const run = runLauncher(['vault', 'qubes.Svc']);
    const svc = await accept(await nextTrigger());
    // consume what the caller sends first: a write into a closed vchan fails
    // with EPIPE and Node then drops the unread rest (see README, known gaps)
    assert.deepEqual(await readStdin(svc), Buffer.alloc(0));
    svc.send(msg(T.DATA_STDOUT, 'partial'));
    svc.close();
    const r = await run;
    assert.equal(r.code, 255);
    assert.equal(r.stdout.toString(), 'partial');
  });

  it('rejects bad command lines like the reference', () => {
    const usage = spawnSync(LAUNCHER, ['onlyone'], { encoding: 'utf8' });
    assert.equal(usage.status, 2);
    assert.match(usage.stderr, /^usage: .*target_vmname program_ident/);
    const help = spawnSync(LAUNCHER, ['--help'], { encoding: 'utf8' });
    assert.equal(help.status, 0);
    assert.match(help.stdout, /--use-stdin-socket/);
    const bs = spawnSync(LAUNCHER, ['--buffer-size=x1', 'a', 'b'], { encoding: 'utf8' });
    assert.equal(bs.status, 1);
    assert.equal(bs.stderr, 'Bad buffer size: does not begin with a number\n');
    const junk = spawnSync(LAUNCHER, ['--buffer-size=12k', 'a', 'b'], { encoding: 'utf8' });
    assert.equal(junk.stderr, 'Bad buffer size: trailing junk\n');
    const twice = spawnSync(LAUNCHER, ['-p', 'a', '-p', 'b', 'a', 'b'], { encoding: 'utf8' });
    assert.equal(twice.status, 2);
    const devnull = fs.openSync('/dev/null', 'r');
    const notsock = spawnSync(LAUNCHER, ['--use-stdin-socket', 'a', 'b'], { encoding: 'utf8', stdio: [devnull, 'pipe', 'pipe'] });
    fs.closeSync(devnull);
    assert.equal(notsock.status, 2);
    assert.match(notsock.stderr, /stdin not a socket/);
    const noagent = spawnSync(LAUNCHER, [`--agent-socket=${path.join(fx.dir, 'nope')}`, 'a', 'b'], { encoding: 'utf8' });
    assert.equal(noagent.status, 1);
  });

  it('callService (the library) makes a call from a running program', async () => {
    const result = callService('vault', 'qubes.Lib+x', {
      agentSocket: fx.agentSocket,
      vchan: { dir: fx.dir, ownDomain: DOMAIN },
      stdin: 'library input',
    });
    const trig = await nextTrigger();
    assert.deepEqual(trig.subarray(160), Buffer.from('qubes.Lib+x\0'));
    const svc = await accept(trig);
    assert.deepEqual(await readStdin(svc), Buffer.from('library input'));
    svc.send(msg(T.DATA_STDOUT, 'lib out'));
    svc.send(msg(T.DATA_STDERR, 'lib err'));
    svc.send(msg(T.DATA_STDOUT));
    svc.send(msg(T.DATA_EXIT_CODE, u32(3)));
    const r = await result;
    assert.equal(r.exitCode, 3);
    assert.equal(r.refused, false);
    assert.equal(r.stdout.toString(), 'lib out');
    assert.equal(r.stderr.toString(), 'lib err');

    const refused = callService('vault', 'qubes.Lib', { agentSocket: fx.agentSocket, vchan: { dir: fx.dir, ownDomain: DOMAIN } });
    const t2 = await nextTrigger();
    fx.dom0?.send(msg(T.SERVICE_REFUSED, t2.subarray(128, 160)));
    assert.deepEqual({ ...(await refused), stdout: undefined, stderr: undefined }, { exitCode: 126, refused: true, stdout: undefined, stderr: undefined });
  });
});
