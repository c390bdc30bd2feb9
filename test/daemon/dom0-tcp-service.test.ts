/**
 * /dev/tcp services called in dom0, as the reference's find_qrexec_service
 * (libqrexec/exec.c) runs them for the agent and dom0 alike, and as its agent
 * tests (qrexec/tests/socket/agent.py test_connect_socket_tcp*) check them:
 * a symlink to `/dev/tcp/HOST/PORT`, `/dev/tcp/HOST` (port from the
 * argument) or `/dev/tcp` (`HOST+PORT` from the argument, `+` for `:` in IPv6
 * addresses) connects over TCP and gets the descriptor then the data; a bad
 * target or a refused connection fails the call with 125 before anything
 * runs. The caller frames its messages itself (peer.ts). The last test
 * runs the same targets through a qube's agent (test/agent/peer.ts), which
 * uses the same lookup and connect.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { mkdtemp, mkdir, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runDom0Service } from '../../src/daemon/index.js';
import { parseTcpTarget } from '../../src/agent/index.js';
import { memoryPair } from '../../src/vchan/index.js';
import { T, decodeMessages, msg, u32, within as withinMs } from './peer.js';
import { Fixture, T as AT, msg as amsg } from '../agent/peer.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../../..');
/** Bounds how long a call may take on a loaded machine; nothing is timed. */
const PATIENCE_MS = 15000;

let dir: string;
let cfgDir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qrexec-dom0tcp-'));
  cfgDir = join(dir, 'rpc-config');
  await mkdir(cfgDir);
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

type Msg = [number, string];

const within = <V>(p: Promise<V>, what: string): Promise<V> => withinMs(p, what, PATIENCE_MS);

/** Plays the calling qube on a memory vchan: HELLO v3, `stdin` then EOF; every message it got, and the result. */
async function call(cmd: string, stdin = ''): Promise<{ msgs: Msg[]; status: number; started: boolean; logs: string[] }> {
  const [ours, theirs] = memoryPair();
  const chunks: Buffer[] = [];
  theirs.on('data', (d: Buffer) => chunks.push(d));
  const closed = new Promise<void>((r) => theirs.on('end', () => r()));
  theirs.write(Buffer.concat([u32(T.HELLO, 4, 3), ...(stdin ? [msg(T.DATA_STDIN, Buffer.from(stdin))] : []), msg(T.DATA_STDIN)]));
  const logs: string[] = [];
  try {
    const r = await within(runDom0Service(ours, cmd, [dir], (m) => logs.push(m), cfgDir), `call ${cmd}`);
    await within(closed, 'vchan close');
    const msgs: Msg[] = decodeMessages(Buffer.concat(chunks), 'latin1');
    assert.equal(msgs[0]?.[0], T.HELLO);
    return { msgs: msgs.slice(1), status: r.status, started: r.started, logs };
  } finally {
    theirs.destroy();
  }
}

/**
 * A TCP service on `host` (port chosen by the system): reads until the
 * caller's EOF, answers `reply` and closes. `got` is everything it read.
 */
async function tcpServer(host: string, reply = 'stdout data'): Promise<{ port: number; got: () => string; conns: () => number; close: () => void }> {
  let got = '';
  let conns = 0;
  const server = net.createServer({ allowHalfOpen: true }, (c) => {
    conns++;
    c.on('error', () => undefined);
    c.on('data', (d: Buffer) => (got += d.toString('latin1')));
    c.on('end', () => c.end(reply));
  });
  await new Promise<void>((r, j) => {
    server.once('error', j);
    server.listen(0, host, () => r());
  });
  return { port: (server.address() as net.AddressInfo).port, got: () => got, conns: () => conns, close: () => server.close() };
}

/** (Re)creates the symlink `<dir>/<name>` → `target`. */
async function link(name: string, target: string): Promise<void> {
  await unlink(join(dir, name)).catch(() => undefined);
  await symlink(target, join(dir, name));
}

const OK = (out: string): Msg[] => [
  [T.DATA_STDERR, ''],
  [T.DATA_STDOUT, out],
  [T.DATA_STDOUT, ''],
  [T.DATA_EXIT_CODE, '0'],
];
const FAILED_125: Msg[] = [
  [T.DATA_STDERR, ''],
  [T.DATA_STDOUT, ''],
  [T.DATA_EXIT_CODE, '125'],
];

void test('/dev/tcp/HOST/PORT: the service gets the descriptor then the data, the caller its answer and 0', async () => {
  const srv = await tcpServer('127.0.0.1');
  try {
    await link('qubes.Tcp+', `/dev/tcp/127.0.0.1/${srv.port}`);
    const r = await call('QUBESRPC qubes.Tcp+ src_domain name dom0', 'stdin data');
    assert.equal(srv.got(), 'qubes.Tcp+ src_domain name dom0\0stdin data');
    assert.deepEqual(r.msgs, OK('stdout data'));
    assert.equal(r.status, 0);
    assert.equal(r.started, true);
  } finally {
    srv.close();
  }
});

void test('/dev/tcp/HOST/PORT with skip-service-descriptor: only the data; the bare service name is found too', async () => {
  const srv = await tcpServer('127.0.0.1', 'answer');
  try {
    await link('qubes.TcpSkip', `/dev/tcp/127.0.0.1/${srv.port}`);
    await writeFile(join(cfgDir, 'qubes.TcpSkip'), 'skip-service-descriptor = true\n');
    const r = await call('QUBESRPC qubes.TcpSkip src_domain keyword adminvm', 'only data');
    assert.equal(srv.got(), 'only data');
    assert.deepEqual(r.msgs, OK('answer'));
  } finally {
    await unlink(join(cfgDir, 'qubes.TcpSkip'));
    srv.close();
  }
});

void test('/dev/tcp/HOST: the port is the service argument', async () => {
  const srv = await tcpServer('127.0.0.1');
  try {
    await link('qubes.TcpPort', '/dev/tcp/127.0.0.1');
    const r = await call(`QUBESRPC qubes.TcpPort+${srv.port} src_domain name dom0`, 'x');
    assert.equal(srv.got(), `qubes.TcpPort+${srv.port} src_domain name dom0\0x`);
    assert.deepEqual(r.msgs, OK('stdout data'));
  } finally {
    srv.close();
  }
});

void test('/dev/tcp: host and port from the argument (HOST+PORT)', async () => {
  const srv = await tcpServer('127.0.0.1');
  try {
    await link('qubes.TcpAny', '/dev/tcp');
    const r = await call(`QUBESRPC qubes.TcpAny+127.0.0.1+${srv.port} src_domain name dom0`, 'y');
    assert.equal(srv.got(), `qubes.TcpAny+127.0.0.1+${srv.port} src_domain name dom0\0y`);
    assert.deepEqual(r.msgs, OK('stdout data'));
  } finally {
    srv.close();
  }
});

void test('/dev/tcp with an IPv6 address from the argument (+ for :) and in the link', async (t) => {
  const srv = await tcpServer('::1').catch(() => undefined);
  if (!srv) {
    t.skip('no IPv6 loopback here');
    return;
  }
  try {
    await link('qubes.Tcp6', '/dev/tcp');
    const r = await call(`QUBESRPC qubes.Tcp6+++1+${srv.port} src_domain name dom0`, 'v6');
    assert.equal(srv.got(), `qubes.Tcp6+++1+${srv.port} src_domain name dom0\0v6`);
    assert.deepEqual(r.msgs, OK('stdout data'));
    await link('qubes.Tcp6Link+', `/dev/tcp/::1/${srv.port}`);
    assert.deepEqual((await call('QUBESRPC qubes.Tcp6Link+ src_domain name dom0', 'z')).msgs, OK('stdout data'));
  } finally {
    srv.close();
  }
});

void test('a bad /dev/tcp target or a refused connection: 125 before anything runs, with the reference\'s log line', async () => {
  const srv = await tcpServer('127.0.0.1');
  // a port nothing listens on: one that was just released
  const closed = await tcpServer('127.0.0.1');
  closed.close();
  try {
    const cases: [string, string, string, string][] = [
      // [link target, service+arg, log line]
      ['/dev/tcp', 'qubes.Bad+', 'No or empty argument provided, cannot connect to /dev/tcp', 'missing host'],
      ['/dev/tcp', 'qubes.Bad+127.0.0.1', 'No port provided, cannot connect to 127.0.0.1', 'missing port'],
      ['/dev/tcp/127.0.0.1', 'qubes.Bad+', 'No or empty argument provided, cannot connect to /dev/tcp/127.0.0.1', 'no port'],
      ['/dev/tcp/::1', 'qubes.Bad+', 'No or empty argument provided, cannot connect to /dev/tcp/::1', 'no port ipv6'],
      [`/dev/tcp/127.0.0.1/${srv.port}`, `qubes.Bad+127.0.0.1+${srv.port}`, `Unexpected argument 127.0.0.1+${srv.port} to service /dev/tcp/127.0.0.1/${srv.port}`, 'unexpected host'],
      ['/dev/tcp/', `qubes.Bad+127.0.0.1+${srv.port}`, 'Error finding service: qubes.Bad+127.0.0.1+' + srv.port + ': /dev/tcp/ not followed by host', 'empty host'],
      ['/dev/tcp', 'qubes.Bad+127.0.0.1+65536', 'Invalid port number 65536', 'port too large'],
      ['/dev/tcp', `qubes.Bad+127.0.0.1+0${srv.port}`, `Invalid port number 0${srv.port}`, 'leading zero'],
      ['/dev/tcp', `qubes.Bad+my_host+${srv.port}`, 'Underscore not allowed in hostname my_host', 'underscore'],
      ['/dev/tcp', `qubes.Bad+localhost+${srv.port}`, `getaddrinfo(localhost, ${srv.port}) failed: Name or service not known`, 'not numeric'],
      ['/dev/tcp', `qubes.Bad+1.2.3+4+${srv.port}`, `getaddrinfo(1.2.3:4, ${srv.port}) failed: Name or service not known`, 'not an address'],
      [`/dev/tcp/127.0.0.1/${closed.port}`, 'qubes.Bad+', 'connect: Connection refused', 'refused'],
    ];
    for (const [target, service, line, what] of cases) {
      await link('qubes.Bad', target);
      const cmd = `QUBESRPC ${service} src_domain name dom0`;
      const r = await call(cmd, 'never delivered');
      assert.deepEqual(r.msgs, FAILED_125, what);
      assert.equal(r.status, 125, what);
      assert.equal(r.started, false, what);
      assert.ok(r.logs.includes(line), `${what}: ${r.logs.join(' | ')}`);
      assert.ok(r.logs.includes(`failed to spawn process for service (exited 125): ${cmd}`), `${what}: ${r.logs.join(' | ')}`);
    }
    assert.equal(srv.conns(), 0);
  } finally {
    srv.close();
  }
});

void test('not found is still 127, and a file that is neither executable nor a socket is 125', async () => {
  const nf = await call('QUBESRPC qubes.NoSuchTcp+1 src_domain name dom0');
  assert.deepEqual(nf.msgs, [[T.DATA_STDERR, ''], [T.DATA_STDOUT, ''], [T.DATA_EXIT_CODE, '127']]);
  assert.ok(nf.logs.includes('Service not found: qubes.NoSuchTcp+1'), nf.logs.join(' | '));
  await writeFile(join(dir, 'qubes.Plain'), 'not a program\n', { mode: 0o644 });
  const r = await call('QUBESRPC qubes.Plain src_domain name dom0');
  assert.deepEqual(r.msgs, FAILED_125);
  assert.ok(r.logs.includes(`Unknown service type (not executable, not a socket): ${join(dir, 'qubes.Plain')}`), r.logs.join(' | '));
});

void test('exit-on-service-eof over TCP: the service\'s EOF ends the call without the caller\'s', async () => {
  const server = net.createServer({ allowHalfOpen: true }, (c) => {
    c.on('error', () => undefined);
    c.resume();
    c.end('bye'); // keeps reading; the caller never sends EOF
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as net.AddressInfo).port;
  try {
    await link('qubes.TcpOut', `/dev/tcp/127.0.0.1/${port}`);
    await writeFile(join(cfgDir, 'qubes.TcpOut'), 'exit-on-service-eof = true\n');
    const [ours, theirs] = memoryPair();
    const chunks: Buffer[] = [];
    theirs.on('data', (d: Buffer) => chunks.push(d));
    theirs.write(u32(T.HELLO, 4, 3));
    const r = await within(runDom0Service(ours, 'QUBESRPC qubes.TcpOut src_domain name dom0', [dir], () => undefined, cfgDir), 'call');
    theirs.destroy();
    assert.equal(r.status, 0);
    const all = Buffer.concat(chunks);
    assert.ok(all.includes(Buffer.concat([u32(T.DATA_STDOUT, 3), Buffer.from('bye')])));
    assert.ok(all.subarray(-12).equals(Buffer.concat([u32(T.DATA_EXIT_CODE, 4), u32(0)])));
  } finally {
    await unlink(join(cfgDir, 'qubes.TcpOut'));
    server.close();
  }
});

void test('parseTcpTarget: the shared rules, as a table', () => {
  const table: [string, string | undefined, unknown][] = [
    ['/dev/tcp/10.0.0.1/22', undefined, { kind: 'tcp', host: '10.0.0.1', port: 22 }],
    ['/dev/tcp/10.0.0.1/22', '', { kind: 'tcp', host: '10.0.0.1', port: 22 }],
    ['/dev/tcp/10.0.0.1', '65535', { kind: 'tcp', host: '10.0.0.1', port: 65535 }],
    ['/dev/tcp', 'fe80++1%lo+8080', { kind: 'tcp', host: 'fe80::1%lo', port: 8080 }],
    ['/dev/tcp', '127.0.0.1', { code: 125, reason: 'No port provided, cannot connect to 127.0.0.1' }],
    ['/dev/tcp/10.0.0.1/22', 'x', { code: 125, reason: 'Unexpected argument x to service /dev/tcp/10.0.0.1/22' }],
    ['/dev/tcp/10.0.0.1', 'ssh', { code: 125, reason: 'Invalid port number ssh' }],
    ['/dev/tcp/10.0.0.1', '99999', { code: 125, reason: 'Invalid port number 99999' }],
    ['/dev/tcp/10.0.0.1%1', '1', { code: 125, reason: 'getaddrinfo(10.0.0.1%1, 1) failed: Name or service not known' }],
  ];
  for (const [linkTarget, arg, want] of table) {
    const got: Record<string, unknown> = { ...parseTcpTarget(linkTarget, arg) };
    if ('link' in got) {
      assert.equal(got['link'], linkTarget);
      delete got['link'];
    }
    assert.deepEqual(got, want, `${linkTarget} ${arg ?? '(no arg)'}`);
  }
});

void test('qrexec-client dom0 → dom0 refuses a /dev/tcp service with 125, as the reference', async () => {
  await link('qubes.TcpLocal+', '/dev/tcp/127.0.0.1/1');
  const child = spawn(join(ROOT, 'bin', 'qrexec-client'), ['-d', 'dom0', 'DEFAULT:QUBESRPC qubes.TcpLocal dom0'], {
    env: { ...process.env, QREXEC_SERVICE_PATH: dir, QUBES_RPC_CONFIG_PATH: cfgDir },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const code = await within(new Promise<number | null>((r) => child.once('exit', (c) => r(c))), 'qrexec-client');
  assert.equal(code, 125, err);
  assert.match(err, /Service \/dev\/tcp\/127\.0\.0\.1\/1 is a socket or \/dev\/tcp symlink, but this is not supported for dom0 -> dom0 calls/);
});

void test('the agent runs the same /dev/tcp targets with the same outcomes (one lookup, one connect)', async () => {
  const srv = await tcpServer('127.0.0.1');
  const fx = new Fixture();
  try {
    fs.symlinkSync('/dev/tcp/127.0.0.1', join(fx.dir, 'rpc', 'qubes.TcpPort'));
    fs.symlinkSync('/dev/tcp', join(fx.dir, 'rpc', 'qubes.TcpAny'));
    fx.startAgent();
    await fx.connectDom0();
    const ok = await fx.exec(AT.EXEC_CMDLINE, `QUBESRPC qubes.TcpPort+${srv.port} domX`);
    ok.target.send(Buffer.concat([amsg(AT.DATA_STDIN, 'stdin data'), amsg(AT.DATA_STDIN)]));
    const got = await ok.target.recvAll();
    assert.equal(srv.got(), `qubes.TcpPort+${srv.port} domX\0stdin data`);
    const out = got.filter((m) => m.type === AT.DATA_STDOUT).map((m) => m.data.toString()).join('');
    assert.equal(out, 'stdout data');
    assert.deepEqual(got.at(-1), { type: AT.DATA_EXIT_CODE, data: u32(0) });
    // a missing port: the reference agent's test_connect_socket_tcp_missing_port
    const bad = await fx.exec(AT.EXEC_CMDLINE, 'QUBESRPC qubes.TcpAny+127.0.0.1 domX');
    assert.deepEqual(await bad.target.recvAll(), [
      { type: AT.DATA_STDOUT, data: Buffer.alloc(0) },
      { type: AT.DATA_STDERR, data: Buffer.alloc(0) },
      { type: AT.DATA_EXIT_CODE, data: u32(125) },
    ]);
    assert.match(fx.agentLog, /No port provided, cannot connect to 127\.0\.0\.1/);
  } finally {
    srv.close();
    await fx.stop();
  }
});
