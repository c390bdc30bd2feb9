/**
 * qrexec-agent driven byte by byte by a fake dom0 (test/agent/peer.ts), over
 * vchan-socket unix sockets, as the reference's qrexec/tests/socket/agent.py does.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, it } from 'node:test';
import { DOMAIN, Fixture, ROOT, T, TARGET_DOMAIN, execPayload, fixed, msg, sortMessages, u32, type Conn, type Message } from './peer.js';

let fx: Fixture;
afterEach(async () => {
  await fx?.stop();
});

async function started(): Promise<Fixture> {
  fx = new Fixture();
  fx.startAgent();
  await fx.connectDom0();
  return fx;
}

const user = os.userInfo().username;

/** stdout bytes, stderr bytes and exit code of a finished service call. */
async function outcome(target: Conn): Promise<{ out: string; err: string; code: number | undefined; msgs: Message[] }> {
  const msgs = await target.recvAll();
  let out = '';
  let err = '';
  let code: number | undefined;
  for (const m of msgs) {
    if (m.type === T.DATA_STDOUT) out += m.data.toString();
    else if (m.type === T.DATA_STDERR) err += m.data.toString();
    else if (m.type === T.DATA_EXIT_CODE) code = m.data.readUInt32LE(0);
  }
  return { out, err, code, msgs };
}

describe('qrexec-agent: control channel', () => {
  it('answers MSG_HELLO with version 4 (exact bytes)', async () => {
    fx = new Fixture();
    fx.startAgent();
    const c = await (await import('./peer.js')).connectRetry(path.join(fx.dir, `vchan.${DOMAIN}.0.512.sock`));
    fx.dom0 = c;
    const hello = await c.read(12);
    assert.deepEqual(hello, Buffer.from([0x00, 0x03, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0]));
  });

  it('runs a shell command with MSG_EXEC_CMDLINE and reports CONNECTION_TERMINATED', async () => {
    await started();
    const { target, port } = await fx.exec(T.EXEC_CMDLINE, 'echo Hello world');
    target.send(msg(T.DATA_STDIN));
    const r = await outcome(target);
    assert.equal(r.out, 'Hello world\n');
    assert.equal(r.code, 0);
    const sorted = sortMessages(r.msgs);
    assert.deepEqual(sorted.slice(-2), [
      { type: T.DATA_STDERR, data: Buffer.alloc(0) },
      { type: T.DATA_EXIT_CODE, data: u32(0) },
    ]);
    await fx.expectTerminated(port);
  });

  it('passes stdin through and splits nothing small (cat)', async () => {
    await started();
    const { target } = await fx.exec(T.EXEC_CMDLINE, 'cat');
    target.send(msg(T.DATA_STDIN, 'data 1'));
    assert.deepEqual(await target.recv(), { type: T.DATA_STDOUT, data: Buffer.from('data 1') });
    target.send(msg(T.DATA_STDIN));
    const r = await outcome(target);
    assert.equal(r.out, '');
    assert.equal(r.code, 0);
  });

  it('sends chunks of at most 64 KiB and keeps 1 MiB intact', async () => {
    await started();
    const { target } = await fx.exec(T.EXEC_CMDLINE, 'head -c 1048576 /dev/zero | tr "\\0" a');
    target.send(msg(T.DATA_STDIN));
    const r = await outcome(target);
    assert.equal(r.out.length, 1048576);
    for (const m of r.msgs) assert.ok(m.data.length <= 65536);
    assert.equal(r.code, 0);
  });

  it('reports the exit status and 128+signal', async () => {
    await started();
    let { target } = await fx.exec(T.EXEC_CMDLINE, 'exit 42');
    target.send(msg(T.DATA_STDIN));
    assert.equal((await outcome(target)).code, 42);
    ({ target } = await fx.exec(T.EXEC_CMDLINE, 'kill -TERM $$'));
    target.send(msg(T.DATA_STDIN));
    assert.equal((await outcome(target)).code, 128 + 15);
  });

  it('MSG_JUST_EXEC: runs detached and sends exit code 0 only', async () => {
    await started();
    const flag = path.join(fx.dir, 'flag');
    const { target, port } = await fx.exec(T.JUST_EXEC, `echo a > ${flag}`);
    assert.deepEqual(await target.recvAll(), [{ type: T.DATA_EXIT_CODE, data: u32(0) }]);
    await fx.expectTerminated(port);
    for (let i = 0; i < 200 && !fs.existsSync(flag); i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(fs.readFileSync(flag, 'utf8'), 'a\n');
  });

  it('MSG_JUST_EXEC of a missing service reports 127', async () => {
    await started();
    const { target } = await fx.exec(T.JUST_EXEC, 'QUBESRPC qubes.Missing+ domX');
    assert.deepEqual(await target.recvAll(), [{ type: T.DATA_EXIT_CODE, data: u32(127) }]);
  });

  it('an unknown control message closes the control channel (and the agent exits 1)', async () => {
    await started();
    const exited = new Promise<number | null>((r) => fx.agent?.once('exit', (c) => r(c)));
    fx.dom0?.send(msg(0x999, 'junk'));
    assert.equal(await exited, 1);
  });

  it('a command line without a colon fails that call with 125 only', async () => {
    await started();
    const port = fx.nextPort();
    const srv = fx.target(port);
    fx.dom0?.send(msg(T.EXEC_CMDLINE, execPayload(TARGET_DOMAIN, port, 'no colon here')));
    const target = await srv.conn;
    await target.handshake();
    const r = await outcome(target);
    assert.deepEqual(sortMessages(r.msgs), [
      { type: T.DATA_STDOUT, data: Buffer.alloc(0) },
      { type: T.DATA_STDERR, data: Buffer.alloc(0) },
      { type: T.DATA_EXIT_CODE, data: u32(125) },
    ]);
    // the agent goes on serving
    const next = await fx.exec(T.EXEC_CMDLINE, 'echo still here');
    next.target.send(msg(T.DATA_STDIN));
    assert.equal((await outcome(next.target)).out, 'still here\n');
  });

  it('a data chunk over 64 KiB aborts only that call', async () => {
    await started();
    const { target } = await fx.exec(T.EXEC_CMDLINE, 'cat');
    const h = Buffer.alloc(8);
    h.writeUInt32LE(T.DATA_STDIN, 0);
    h.writeUInt32LE(65537, 4);
    target.send(h);
    const msgs = await target.recvAll(); // closed without an exit code
    assert.ok(!msgs.some((m) => m.type === T.DATA_EXIT_CODE));
    const next = await fx.exec(T.EXEC_CMDLINE, 'echo ok');
    next.target.send(msg(T.DATA_STDIN));
    assert.equal((await outcome(next.target)).out, 'ok\n');
  });
});

describe('qrexec-agent: services', () => {
  it('runs an executable service with the reference argv and environment', async () => {
    fx = new Fixture();
    fx.service(
      'rpc',
      'qubes.Service',
      // (and the parent of QREXEC_AGENT_PID's parent: a relay's server is the agent's child)
      '#!/bin/sh\nppid() { awk \'/^PPid:/ { print $2 }\' "/proc/$1/status"; }\n' +
        'printf "%s|" "$0" "$#" "$1" "$QREXEC_REMOTE_DOMAIN" "$QREXEC_SERVICE_FULL_NAME" "$QREXEC_SERVICE_ARGUMENT" ' +
        '"${QREXEC_REQUESTED_TARGET_TYPE-unset}" "${QREXEC_REQUESTED_TARGET-unset}" "${QREXEC_REQUESTED_TARGET_KEYWORD-unset}" ' +
        '"$QREXEC_AGENT_PID" "${QREXEC_SERVICE_PATH:+set}" "$(ppid "$(ppid "$QREXEC_AGENT_PID")")"\nprintf err >&2\n',
    );
    fx.startAgent();
    await fx.connectDom0();
    const { target } = await fx.exec(T.EXEC_CMDLINE, 'QUBESRPC qubes.Service+arg domX');
    target.send(msg(T.DATA_STDIN));
    const r = await outcome(target);
    const [argv0, argc, arg1, remote, full, argument, ttype, tname, tkw, pid, sp, grandparent] = r.out.split('|');
    assert.equal(argv0, path.join(fx.dir, 'rpc', 'qubes.Service'));
    assert.equal(argc, '1');
    assert.equal(arg1, 'arg');
    assert.equal(remote, 'domX');
    assert.equal(full, 'qubes.Service+arg');
    assert.equal(argument, 'arg');
    assert.equal(ttype, '');
    assert.equal(tname, 'unset');
    assert.equal(tkw, 'unset');
    // as the reference's per-call agent process: the call's own relay
    // (native/qrexec-sigrelay), or the agent itself when it is not built
    if (fs.existsSync(path.join(ROOT, 'native', 'build', 'qrexec-sigrelay'))) {
      assert.notEqual(pid, String(fx.agent?.pid));
      assert.equal(grandparent, String(fx.agent?.pid));
    } else {
      assert.equal(pid, String(fx.agent?.pid));
    }
    assert.equal(sp, 'set');
    assert.equal(r.err, 'err');
    assert.equal(r.code, 0);
  });

  it('passes no argument for an empty one, keyword target type in dom0 form', async () => {
    fx = new Fixture();
    fx.service('rpc', 'qubes.Service', '#!/bin/sh\necho "$#:${QREXEC_SERVICE_ARGUMENT-unset}:$QREXEC_REQUESTED_TARGET_TYPE:${QREXEC_REQUESTED_TARGET_KEYWORD-}"\n');
    fx.startAgent();
    await fx.connectDom0();
    let { target } = await fx.exec(T.EXEC_CMDLINE, 'QUBESRPC qubes.Service+ domX');
    target.send(msg(T.DATA_STDIN));
    assert.equal((await outcome(target)).out, '0::: \n'.replace(' ', ''));
    ({ target } = await fx.exec(T.EXEC_CMDLINE, 'QUBESRPC qubes.Service domX keyword adminvm'));
    target.send(msg(T.DATA_STDIN));
    assert.equal((await outcome(target)).out, '0:unset:keyword:adminvm\n');
  });

  it('prefers SERVICE+ARG over SERVICE, and local-rpc over rpc', async () => {
    fx = new Fixture();
    fx.service('local-rpc', 'qubes.Service+arg', '#!/bin/sh\necho specific\n');
    fx.service('rpc', 'qubes.Service', '#!/bin/sh\necho general\n');
    fx.startAgent();
    await fx.connectDom0();
    let { target } = await fx.exec(T.EXEC_CMDLINE, 'QUBESRPC qubes.Service+arg domX');
    target.send(msg(T.DATA_STDIN));
    assert.equal((await outcome(target)).out, 'specific\n');
    ({ target } = await fx.exec(T.EXEC_CMDLINE, 'QUBESRPC qubes.Service+other domX'));
    target.send(msg(T.DATA_STDIN));
    assert.equal((await outcome(target)).out, 'general\n');
  });

  for (const [name, setup, code] of [
    ['missing service → 127', (): void => undefined, 127],
    ['non-executable file → 125', (): void => void fs.writeFileSync(path.join(fx.dir, 'rpc', 'qubes.Service'), 'x', { mode: 0o600 }), 125],
    ['broken specific symlink → 125', (): void => fs.symlinkSync('/dev/null/invalid', path.join(fx.dir, 'rpc', 'qubes.Service+arg')), 125],
    ['invalid config (wait-for-session = 01) → 125', (): void => {
      fx.service('rpc', 'qubes.Service', '#!/bin/sh\necho hi\n');
      fx.config('qubes.Service+arg', 'wait-for-session = 01\n');
    }, 125],
  ] as const) {
    it(`fails before running anything: ${name}`, async () => {
      fx = new Fixture();
      setup();
      fx.startAgent();
      await fx.connectDom0();
      const { target, port } = await fx.exec(T.EXEC_CMDLINE, 'QUBESRPC qubes.Service+arg domX');
      assert.deepEqual(sortMessages(await target.recvAll()), [
        { type: T.DATA_STDOUT, data: Buffer.alloc(0) },
        { type: T.DATA_STDERR, data: Buffer.alloc(0) },
        { type: T.DATA_EXIT_CODE, data: u32(code) },
      ]);
      await fx.expectTerminated(port);
    });
  }

  it('a file the kernel cannot execute fails with 125 and a message on stderr', async () => {
    fx = new Fixture();
    fx.service('rpc', 'qubes.Service', '\0');
    fx.startAgent();
    await fx.connectDom0();
    const { target } = await fx.exec(T.EXEC_CMDLINE, 'QUBESRPC qubes.Service+arg domX');
    target.send(msg(T.DATA_STDIN));
    const r = await outcome(target);
    assert.equal(r.code, 125);
    assert.ok(r.err.length > 0);
  });

  it('socket service: header `SERVICE+ARG SOURCE\\0`, then data both ways', async () => {
    fx = new Fixture();
    const sockPath = path.join(fx.dir, 'rpc', 'qubes.SocketService+arg');
    let received = Buffer.alloc(0);
    const gotAll = new Promise<void>((resolve) => {
      const server = net.createServer({ allowHalfOpen: true }, (s) => {
        s.on('data', (d: Buffer) => (received = Buffer.concat([received, d])));
        s.on('end', () => {
          s.end('stdout data');
          server.close();
          resolve();
        });
      });
      server.listen(sockPath);
    });
    fx.startAgent();
    await fx.connectDom0();
    const { target } = await fx.exec(T.EXEC_CMDLINE, 'QUBESRPC qubes.SocketService+arg domX');
    target.send(msg(T.DATA_STDIN, 'stdin data'));
    target.send(msg(T.DATA_STDIN));
    await gotAll;
    assert.deepEqual(received, Buffer.from('qubes.SocketService+arg domX\0stdin data'));
    const r = await outcome(target);
    assert.equal(r.out, 'stdout data');
    assert.equal(r.code, 0);
  });

  it('socket service in dom0 form gets the target words in its header; skip-service-descriptor sends none', async () => {
    fx = new Fixture();
    const sockPath = path.join(fx.dir, 'rpc', 'qubes.S');
    const headers: Buffer[] = [];
    const server = net.createServer({ allowHalfOpen: true }, (s) => {
      let b = Buffer.alloc(0);
      s.on('data', (d: Buffer) => (b = Buffer.concat([b, d])));
      s.on('end', () => {
        headers.push(b);
        s.end();
      });
    });
    server.listen(sockPath);
    fx.startAgent();
    await fx.connectDom0();
    let { target } = await fx.exec(T.EXEC_CMDLINE, 'QUBESRPC qubes.S+x domX name vault');
    target.send(msg(T.DATA_STDIN));
    await outcome(target);
    fx.config('qubes.S+y', 'skip-service-descriptor = true\n');
    ({ target } = await fx.exec(T.EXEC_CMDLINE, 'QUBESRPC qubes.S+y domX'));
    target.send(msg(T.DATA_STDIN, 'payload'));
    target.send(msg(T.DATA_STDIN));
    await outcome(target);
    server.close();
    assert.deepEqual(headers, [Buffer.from('qubes.S+x domX name vault\0'), Buffer.from('payload')]);
  });

  it('force-user with skip-service-descriptor is rejected (125)', async () => {
    fx = new Fixture();
    fx.service('rpc', 'qubes.Service', '#!/bin/sh\necho hi\n');
    fx.config('qubes.Service', `skip-service-descriptor = true\nforce-user = '${user}'\n`);
    fx.startAgent();
    await fx.connectDom0();
    const { target } = await fx.exec(T.EXEC_CMDLINE, 'QUBESRPC qubes.Service+arg domX');
    assert.equal((await outcome(target)).code, 125);
  });

  it('wait-for-session runs qubes.WaitForSession with the user on stdin first', async () => {
    fx = new Fixture();
    const log = path.join(fx.dir, 'wfs.log');
    fx.service('rpc', 'qubes.WaitForSession', `#!/bin/sh\nread u\necho "wfs:$#:$QREXEC_REMOTE_DOMAIN:$u" > ${log}\n`);
    fx.service('rpc', 'qubes.Service', `#!/bin/sh\ncat ${log}\n`);
    fx.config('qubes.Service', `\n# comment\nforce-user = '${user}'\nwait-for-session = 1 # line comment\n`);
    fx.startAgent();
    await fx.connectDom0();
    const { target } = await fx.exec(T.EXEC_CMDLINE, 'QUBESRPC qubes.Service+arg domX');
    target.send(msg(T.DATA_STDIN));
    assert.equal((await outcome(target)).out, `wfs:0:domX:${user}\n`);
  });

  it('a user other than the agent’s own fails with 125 when not root', { skip: process.getuid?.() === 0 }, async () => {
    await started();
    const { target } = await fx.exec(T.EXEC_CMDLINE, 'echo hi', 'nosuchuser');
    target.send(msg(T.DATA_STDIN));
    assert.equal((await outcome(target)).code, 125);
  });
});

describe('qrexec-agent: local callers (reference protocol on the agent socket)', () => {
  async function trigger(target = 'target_domain', service = 'qubes.ServiceName'): Promise<{ client: Conn; ident: Buffer; params: Buffer }> {
    const { connectRetry } = await import('./peer.js');
    const client = await connectRetry(fx.agentSocket);
    const params = Buffer.concat([fixed('', 64), fixed(target, 64), fixed('SOCKET', 32), Buffer.from(`${service}\0`)]);
    client.send(msg(T.TRIGGER_SERVICE4, params));
    const m = await fx.dom0?.recv();
    assert.equal(m?.type, T.TRIGGER_SERVICE4);
    const got = m?.data as Buffer;
    const identField = got.subarray(128, 160);
    const ident = identField.subarray(0, identField.indexOf(0));
    assert.match(ident.toString(), /^SOCKET[0-9]+$/);
    // everything but the ident is forwarded unchanged
    assert.deepEqual(Buffer.concat([got.subarray(0, 128), got.subarray(160)]), Buffer.concat([params.subarray(0, 128), params.subarray(160)]));
    return { client, ident, params: got };
  }

  it('forwards MSG_TRIGGER_SERVICE4 with a SOCKET ident and answers SERVICE_CONNECT with exec_params', async () => {
    await started();
    const { client, ident } = await trigger();
    fx.dom0?.send(msg(T.SERVICE_CONNECT, Buffer.concat([u32(TARGET_DOMAIN), u32(1024), fixed(ident.toString(), 32)])));
    assert.deepEqual(await client.read(8), Buffer.concat([u32(TARGET_DOMAIN), u32(1024)]));
    client.close();
    const m = await fx.dom0?.recv();
    assert.deepEqual(m, { type: T.CONNECTION_TERMINATED, data: Buffer.concat([u32(TARGET_DOMAIN), u32(1024)]) });
  });

  it('closes the caller on MSG_SERVICE_REFUSED', async () => {
    await started();
    const { client, ident } = await trigger();
    fx.dom0?.send(msg(T.SERVICE_REFUSED, fixed(ident.toString(), 32)));
    assert.equal((await client.read(8)).length, 0);
  });

  it('sends MSG_TRIGGER_SERVICE3 to a version-3 daemon', async () => {
    fx = new Fixture();
    fx.startAgent();
    await fx.connectDom0(3);
    const { connectRetry } = await import('./peer.js');
    const client = await connectRetry(fx.agentSocket);
    client.send(msg(T.TRIGGER_SERVICE4, Buffer.concat([fixed('src', 64), fixed('vault', 64), fixed('SOCKET', 32), Buffer.from('my.Service+a\0')])));
    const m = await fx.dom0?.recv();
    assert.equal(m?.type, T.TRIGGER_SERVICE3);
    assert.deepEqual(m?.data.subarray(0, 64), fixed('vault', 64));
    assert.deepEqual(m?.data.subarray(96), Buffer.from('my.Service+a\0'));
  });

  it('serves a caller that sends its request some time after connecting, in pieces', async () => {
    await started();
    const { connectRetry } = await import('./peer.js');
    const client = await connectRetry(fx.agentSocket);
    const req = msg(T.TRIGGER_SERVICE4, Buffer.concat([fixed('', 64), fixed('vault', 64), fixed('SOCKET', 32), Buffer.from('late.Service\0')]));
    await new Promise((r) => setTimeout(r, 300));
    client.send(req.subarray(0, 5));
    await new Promise((r) => setTimeout(r, 100));
    client.send(req.subarray(5));
    const m = await fx.dom0?.recv();
    assert.equal(m?.type, T.TRIGGER_SERVICE4);
    assert.deepEqual(m?.data.subarray(160), Buffer.from('late.Service\0'));
  });

  it('rejects a request of another type or too long (closes that caller only)', async () => {
    await started();
    const { connectRetry } = await import('./peer.js');
    const bad = await connectRetry(fx.agentSocket);
    bad.send(msg(T.TRIGGER_SERVICE3, Buffer.alloc(100)));
    assert.equal((await bad.read(1)).length, 0);
    const huge = await connectRetry(fx.agentSocket);
    const h = Buffer.alloc(8);
    h.writeUInt32LE(T.TRIGGER_SERVICE4, 0);
    h.writeUInt32LE(160 + 65001, 4);
    huge.send(h);
    assert.equal((await huge.read(1)).length, 0);
    await trigger(); // still serving
  });
});

describe('qrexec-agent: backpressure', () => {
  const rssMb = (pid: number): number => {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : 0;
  };

  it('a peer that does not read its data vchan keeps agent memory bounded, then gets every byte', async () => {
    await started();
    // 256 MiB of output; the peer reads nothing for a while
    const { target } = await fx.exec(T.EXEC_CMDLINE, 'head -c 268435456 /dev/zero');
    target.send(msg(T.DATA_STDIN));
    target.sock.pause();
    await new Promise((r) => setTimeout(r, 1500));
    const pid = fx.agent?.pid as number;
    assert.ok(rssMb(pid) < 200, `agent RSS ${rssMb(pid)} MiB while the peer is not reading`);
    target.sock.resume();
    let total = 0;
    let code: number | undefined;
    for (;;) {
      const m = await target.recv();
      if (!m) break;
      if (m.type === T.DATA_STDOUT) total += m.data.length;
      if (m.type === T.DATA_EXIT_CODE) code = m.data.readUInt32LE(0);
    }
    assert.equal(total, 268435456);
    assert.equal(code, 0);
  });

  it('a service that does not read stdin pauses the vchan instead of buffering', async () => {
    await started();
    const { target } = await fx.exec(T.EXEC_CMDLINE, 'sleep 2; wc -c');
    const chunk = msg(T.DATA_STDIN, Buffer.alloc(65536, 0x61));
    let sent = 0;
    // write until the agent stops reading (our socket buffer fills) or 128 MiB
    for (;;) {
      const more = target.sock.write(chunk);
      sent++;
      if (sent >= 2048) break;
      if (!more) {
        const drained = await Promise.race([
          new Promise<boolean>((r) => target.sock.once('drain', () => r(true))),
          new Promise<boolean>((r) => setTimeout(() => r(false), 1000)),
        ]);
        if (!drained) break; // the agent stopped reading: backpressure reached us
      }
    }
    const pid = fx.agent?.pid as number;
    assert.ok(sent < 2048, 'the agent kept reading although the service did not');
    assert.ok(rssMb(pid) < 200);
    const rest = 64;
    for (let i = 0; i < rest; i++) target.sock.write(chunk);
    target.send(msg(T.DATA_STDIN));
    let out = '';
    for (;;) {
      const m = await target.recv(60000);
      if (!m) break;
      if (m.type === T.DATA_STDOUT) out += m.data.toString();
    }
    assert.equal(Number(out.trim()), (sent + rest) * 65536);
  });
});
