import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, writeFile, chmod, symlink, readFile, unlink } from 'node:fs/promises';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runDom0Service } from '../../src/daemon/index.js';
import { memoryPair } from '../../src/vchan/index.js';
import { T, decodeMessages, u32 } from './peer.js';

let dir: string;
let cfgDir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qrexec-dom0-'));
  cfgDir = join(dir, 'rpc-config');
  await mkdir(cfgDir);
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Plays the calling qube on the data vchan (own framing): HELLO v3, optional stdin + EOF, collects every message. */
async function call(cmd: string, stdin?: string, logs: string[] = []): Promise<{ msgs: [number, string][]; started: boolean; status: number }> {
  const [ours, theirs] = memoryPair();
  let got = Buffer.alloc(0);
  theirs.on('data', (d: Buffer) => (got = Buffer.concat([got, d])));
  const closed = new Promise<void>((r) => theirs.on('end', () => r()));
  theirs.write(u32(T.HELLO, 4, 3));
  if (stdin !== undefined) {
    const b = Buffer.from(stdin);
    theirs.write(Buffer.concat([u32(0x190, b.length), b, u32(0x190, 0)]));
  }
  const r = await runDom0Service(ours, cmd, [dir], (m) => logs.push(m), cfgDir);
  await closed;
  const msgs = decodeMessages(got);
  theirs.destroy();
  return { msgs, started: r.started, status: r.status };
}

void test('service not found: stderr EOF, stdout EOF, exit 127 (reference handle_failed_exec); not started', async () => {
  const r = await call('QUBESRPC no.Such+arg src_domain name src_domain');
  assert.equal(r.msgs[0]?.[0], T.HELLO);
  assert.deepEqual(r.msgs.slice(1), [[0x192, ''], [0x191, ''], [0x193, '127']]);
  assert.equal(r.started, false);
  assert.equal(r.status, 127);
});

void test('QUBESRPC with 3 or 5 words is refused with 125 before anything runs', async () => {
  await writeFile(join(dir, 'qubes.Service'), '#!/bin/sh\necho ran\n');
  await chmod(join(dir, 'qubes.Service'), 0o755);
  for (const cmd of ['QUBESRPC qubes.Service+arg src_domain name', 'QUBESRPC qubes.Service+arg src_domain name a b']) {
    const r = await call(cmd);
    assert.deepEqual(r.msgs.slice(1), [[0x192, ''], [0x191, ''], [0x193, '125']], cmd);
    assert.equal(r.started, false);
  }
});

void test('a plain command runs through a shell; a service\'s stderr is not sent to the caller', async () => {
  const r = await call('echo Hello world');
  assert.deepEqual(r.msgs.slice(1), [[0x192, ''], [0x191, 'Hello world\n'], [0x191, ''], [0x193, '0']]);
  assert.equal(r.started, true);
  await writeFile(join(dir, 'qubes.Err'), '#!/bin/sh\nread x\necho "out $x $1"\necho "to the log" >&2\n');
  await chmod(join(dir, 'qubes.Err'), 0o755);
  const e = await call('QUBESRPC qubes.Err+a src_domain keyword adminvm', 'in\n');
  assert.deepEqual(e.msgs.slice(1), [[0x192, ''], [0x191, 'out in a\n'], [0x191, ''], [0x193, '0']]);
});

const FAILED_125: [number, string][] = [[0x192, ''], [0x191, ''], [0x193, '125']];

void test('an invalid or unreadable service configuration fails the call with 125 before anything runs', async () => {
  const ran = join(dir, 'ran');
  await writeFile(join(dir, 'qubes.Cfg'), `#!/bin/sh\ntouch ${ran}\necho ran\n`);
  await chmod(join(dir, 'qubes.Cfg'), 0o755);
  const cfg = join(cfgDir, 'qubes.Cfg+arg');
  for (const text of ['wait-for-session = 00\n', 'wait-for-session = 01\n', 'wait-for-session = \n', 'wait-for-session = "a"\n', 'wait-for-session\n', '[section]\n']) {
    await writeFile(cfg, text);
    const logs: string[] = [];
    const r = await call('QUBESRPC qubes.Cfg+arg src_domain name src_domain', 'x\n', logs);
    assert.deepEqual(r.msgs.slice(1), FAILED_125, text);
    assert.equal(r.started, false);
    assert.ok(logs.some((l) => l.includes('Cannot load service configuration: qubes.Cfg+arg')), logs.join('\n'));
  }
  await unlink(cfg);
  // a dangling symlink whose target cannot even be looked up (ENOTDIR) is an error, not "no file"
  await symlink('/dev/null/doesnotexist', cfg);
  assert.deepEqual((await call('QUBESRPC qubes.Cfg+arg src_domain name src_domain')).msgs.slice(1), FAILED_125);
  await unlink(cfg);
  // the configuration of the bare service name applies too
  await writeFile(join(cfgDir, 'qubes.Cfg'), 'exit-on-client-eof = 1\n');
  assert.deepEqual((await call('QUBESRPC qubes.Cfg+other src_domain name src_domain')).msgs.slice(1), FAILED_125);
  await unlink(join(cfgDir, 'qubes.Cfg'));
  assert.equal(await readFile(ran).then(() => true, () => false), false);
});

void test('force-user: refused with skip-service-descriptor / exit-on-*-eof, otherwise no effect in dom0', async () => {
  await writeFile(join(dir, 'qubes.User'), '#!/bin/sh\nid -un\n');
  await chmod(join(dir, 'qubes.User'), 0o755);
  const cfg = join(cfgDir, 'qubes.User');
  for (const opt of ['skip-service-descriptor', 'exit-on-client-eof', 'exit-on-service-eof']) {
    await writeFile(cfg, `force-user = 'nobody'\n${opt} = true\n`);
    const logs: string[] = [];
    const r = await call('QUBESRPC qubes.User src_domain name dom0', undefined, logs);
    assert.deepEqual(r.msgs.slice(1), FAILED_125, opt);
    assert.ok(logs.some((l) => l.includes(`Cannot set explicit username if ${opt}=true`)), logs.join('\n'));
  }
  await writeFile(cfg, "force-user = 'nobody'\n# unknown keys are only logged\nno-such-key = 1\n");
  const r = await call('QUBESRPC qubes.User src_domain name dom0');
  const me = (await import('node:os')).userInfo().username;
  assert.deepEqual(r.msgs.slice(1), [[0x192, ''], [0x191, `${me}\n`], [0x191, ''], [0x193, '0']]);
  await unlink(cfg);
});

void test('wait-for-session: qubes.WaitForSession runs to completion first, with QREXEC_REMOTE_DOMAIN and no stdin', async () => {
  const log = join(dir, 'wfs.log');
  await writeFile(join(dir, 'qubes.WaitForSession'), `#!/bin/sh\nsleep 0.3\nread x; echo "wfs $QREXEC_REMOTE_DOMAIN stdin:[$x]" > ${log}\n`);
  await chmod(join(dir, 'qubes.WaitForSession'), 0o755);
  await writeFile(join(dir, 'qubes.Wfs'), `#!/bin/sh\ncat ${log} 2>/dev/null\nread input\necho "input $input"\n`);
  await chmod(join(dir, 'qubes.Wfs'), 0o755);
  await writeFile(join(cfgDir, 'qubes.Wfs+arg'), 'wait-for-session=1');
  const r = await call('QUBESRPC qubes.Wfs+arg src_domain name dom0', 'data\n');
  // the service prints what WaitForSession wrote: it ran before, to completion (stdout may come in one or two chunks)
  const out = r.msgs.filter(([t]) => t === 0x191).map(([, b]) => b).join('');
  assert.equal(out, 'wfs src_domain stdin:[]\ninput data\n');
  assert.deepEqual(r.msgs.slice(-2), [[0x191, ''], [0x193, '0']]);
  // without the option it is not run
  await rm(log);
  await unlink(join(cfgDir, 'qubes.Wfs+arg'));
  const n = await call('QUBESRPC qubes.Wfs+arg src_domain name dom0', 'data\n');
  assert.deepEqual(n.msgs.slice(1, 2), [[0x192, '']]);
  assert.equal(await readFile(log).then(() => true, () => false), false);
});

/** A socket service in the test's service directory; `onConn` plays the service. */
async function socketService(name: string, onConn: (s: net.Socket) => void): Promise<net.Server> {
  const server = net.createServer({ allowHalfOpen: true }, onConn);
  await new Promise<void>((r) => server.listen(join(dir, name), () => r()));
  return server;
}

void test('socket service: skip-service-descriptor sends no header; the data goes through', async () => {
  await writeFile(join(cfgDir, 'qubes.Sock+arg'), 'skip-service-descriptor = true\n');
  let got = '';
  const server = await socketService('qubes.Sock+arg', (s) => {
    s.on('data', (d: Buffer) => (got += d.toString('latin1')));
    s.on('end', () => s.end('stdout data'));
  });
  try {
    const r = await call('QUBESRPC qubes.Sock+arg src_domain name dom0', 'stdin data');
    assert.equal(got, 'stdin data');
    assert.deepEqual(r.msgs.slice(1), [[0x192, ''], [0x191, 'stdout data'], [0x191, ''], [0x193, '0']]);
    await unlink(join(cfgDir, 'qubes.Sock+arg'));
    got = '';
    await call('QUBESRPC qubes.Sock+arg src_domain name dom0', 'stdin data');
    assert.equal(got, 'qubes.Sock+arg src_domain name dom0\0stdin data');
  } finally {
    server.close();
  }
});

void test('socket service: exit-on-service-eof ends the call when the service closes its output', async () => {
  await writeFile(join(cfgDir, 'qubes.SockOut'), 'exit-on-service-eof = true\n');
  const server = await socketService('qubes.SockOut', (s) => {
    s.on('error', () => undefined);
    s.resume();
    s.end('bye'); // half-close; keeps reading, never sees the caller's EOF
  });
  try {
    // no stdin EOF from the caller: only the option can end this call
    const r = await call('QUBESRPC qubes.SockOut src_domain name dom0');
    assert.deepEqual(r.msgs.slice(1), [[0x192, ''], [0x191, 'bye'], [0x191, ''], [0x193, '0']]);
  } finally {
    await unlink(join(cfgDir, 'qubes.SockOut'));
    server.close();
  }
});

void test('socket service: exit-on-client-eof ends the call when the caller closes its stdin', async () => {
  await writeFile(join(cfgDir, 'qubes.SockIn'), 'exit-on-client-eof = true\n');
  let got = '';
  let serverClosed!: () => void;
  const closed = new Promise<void>((r) => (serverClosed = r));
  const server = await socketService('qubes.SockIn', (s) => {
    s.on('error', () => undefined);
    s.on('end', () => {
      serverClosed();
      s.destroy();
    });
    s.on('data', (d: Buffer) => (got += d.toString('latin1')));
    s.write('hello'); // and never closes
  });
  try {
    const r = await call('QUBESRPC qubes.SockIn src_domain name dom0', 'in');
    assert.equal(r.msgs[1]?.[0], 0x192);
    assert.deepEqual(r.msgs.slice(-2), [[0x191, ''], [0x193, '0']]);
    await closed; // we close the service's connection
    assert.ok(got.endsWith('in'), got);
  } finally {
    await unlink(join(cfgDir, 'qubes.SockIn'));
    server.close();
  }
});
