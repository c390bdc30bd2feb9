import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import * as net from 'node:net';
import { loadNative } from '../../src/native/addon.js';
import { connectOnce, memoryPair, startPump, vchanConnect, vchanEnvFrom, vchanListen, vchanPath } from '../../src/vchan/index.js';

const u32 = (...v: number[]): Buffer => {
  const b = Buffer.alloc(4 * v.length);
  v.forEach((x, i) => b.writeUInt32LE(x >>> 0, 4 * i));
  return b;
};

/** The [type, payload text] messages a pump sent, after its MSG_HELLO. */
function framesAfterHello(chunks: Buffer[]): [number, string][] {
  const body = Buffer.concat(chunks).subarray(12);
  const frames: [number, string][] = [];
  for (let off = 0; off + 8 <= body.length; ) {
    const len = body.readUInt32LE(off + 4);
    frames.push([body.readUInt32LE(off), body.subarray(off + 8, off + 8 + len).toString()]);
    off += 8 + len;
  }
  return frames;
}

/**
 * A paused connection to a unix socket server at `path` that sent `data` and
 * closed: its data and hang-up are queued on our side, unread.
 */
async function closedPeer(path: string, data: Buffer): Promise<net.Socket> {
  const closed = new Promise<void>((resolve) => {
    const srv = net.createServer((c) => {
      c.write(data, () => {
        c.destroy();
        srv.close();
        resolve();
      });
    });
    srv.listen(path);
  });
  await new Promise((r) => setTimeout(r, 20));
  const sock = net.connect({ path, allowHalfOpen: true });
  sock.pause();
  sock.on('error', () => undefined);
  await closed;
  await new Promise((r) => setTimeout(r, 20));
  return sock;
}

void test('socket path and environment as qubes-core-vchan-socket', () => {
  assert.equal(vchanPath('/d', 3, 0, 512), '/d/vchan.3.0.512.sock');
  assert.deepEqual(vchanEnvFrom({ VCHAN_DOMAIN: '7', VCHAN_SOCKET_DIR: '/x' }), { dir: '/x', ownDomain: 7 });
  assert.deepEqual(vchanEnvFrom({}), { dir: '/var/run/vchan', ownDomain: 0 });
});

void test('client retries until the server appears; server takes one client and removes its socket', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vchan-'));
  try {
    const clientP = vchanConnect({ dir, ownDomain: 0 }, 5, 512, { timeoutMs: 10000 });
    await new Promise((r) => setTimeout(r, 50));
    const l = await vchanListen({ dir, ownDomain: 5 }, 0, 512);
    assert.equal(l.path, join(dir, 'vchan.5.0.512.sock'));
    const [srv, cli] = await Promise.all([l.accepted, clientP]);
    assert.deepEqual(await readdir(dir), []);
    cli.write('ping');
    const got = await new Promise<string>((r) => srv.once('data', (d: Buffer) => r(d.toString())));
    assert.equal(got, 'ping');
    srv.destroy();
    cli.destroy();
    await assert.rejects(vchanConnect({ dir, ownDomain: 0 }, 9, 600, { timeoutMs: 50 }), /no server after 50 ms/);
    const l2 = await vchanListen({ dir, ownDomain: 1 }, 2, 513);
    l2.close();
    await assert.rejects(l2.accepted, /closed before a client connected/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

void test('data stream: caller and service over an in-memory pair, big data, exit code', async () => {
  const [a, b] = memoryPair();
  const callerIn = new PassThrough();
  const callerOut = new PassThrough();
  const callerErr = new PassThrough();
  const svcStdin = new PassThrough(); // the "process" echoes stdin to stdout
  const svcStderr = new PassThrough();
  let exit!: (n: number) => void;
  const exitStatus = new Promise<number>((r) => (exit = r));
  svcStdin.on('end', () => {
    svcStderr.end('bye');
    exit(3);
  });
  // the "process" reads and writes one stream: single
  const svc = startPump({ channel: b, role: 'service', source: svcStdin, errSource: svcStderr, sink: svcStdin, single: true, localExit: exitStatus });
  const caller = startPump({ channel: a, role: 'client', source: callerIn, sink: callerOut, errSink: callerErr, single: false });
  const big = Buffer.alloc(3 * 65536 + 17);
  for (let i = 0; i < big.length; i++) big[i] = i % 251;
  const outChunks: Buffer[] = [];
  callerOut.on('data', (d: Buffer) => outChunks.push(d));
  const errChunks: Buffer[] = [];
  callerErr.on('data', (d: Buffer) => errChunks.push(d));
  callerIn.end(big);
  const [rc, rs] = await Promise.all([caller.done, svc.done]);
  assert.equal(rc, 3);
  assert.equal(rs, 3);
  assert.equal(caller.version, 4);
  assert.ok(Buffer.concat(outChunks).equals(big));
  assert.equal(Buffer.concat(errChunks).toString(), 'bye');
});

void test('data stream, service role, exact bytes to a hand-written peer (64 KiB chunks, EOFs, exit code)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vchan-'));
  try {
    // peer = caller written by hand over a real vchan socket
    const l = await vchanListen({ dir, ownDomain: 2 }, 1, 513);
    const svcSock = vchanConnect({ dir, ownDomain: 1 }, 2, 513);
    const [peer, sock] = await Promise.all([l.accepted, svcSock]);
    const stdout = new PassThrough();
    const stdin = new PassThrough();
    // no local process: the status is 0 once both directions are over
    const run = startPump({ channel: sock, role: 'service', source: stdout, sink: stdin, single: false });
    const got: Buffer[] = [];
    peer.on('data', (d: Buffer) => got.push(d));
    const peerEnd = new Promise((r) => peer.on('close', r));
    peer.write(Buffer.concat([u32(0x300, 4, 3)])); // HELLO v3
    peer.write(Buffer.concat([u32(0x190, 2), Buffer.from('hi'), u32(0x190, 0)]));
    const stdinText = await new Promise<string>((r) => {
      let s = '';
      stdin.on('data', (d: Buffer) => (s += d.toString()));
      stdin.on('end', () => r(s));
    });
    assert.equal(stdinText, 'hi');
    stdout.end(Buffer.alloc(65537, 0x41));
    assert.equal(await run.done, 0);
    await peerEnd;
    assert.equal(run.version, 3);
    const all = Buffer.concat(got);
    const want = Buffer.concat([
      u32(0x300, 4, 4), // our HELLO
      u32(0x192, 0), // no stderr: EOF right away
      u32(0x191, 65536),
      Buffer.alloc(65536, 0x41),
      u32(0x191, 1),
      Buffer.from('A'),
      u32(0x191, 0),
      u32(0x193, 4, 0),
    ]);
    assert.equal(all.length, want.length);
    assert.ok(all.equals(want));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

/** A writable that takes one chunk at a time, 30 ms each, into `got`: it asks for 'drain' after every write. */
function slowWritable(got: Buffer[]): Writable {
  return new Writable({
    highWaterMark: 1,
    write(chunk: Buffer, _e, cb) {
      got.push(chunk);
      setTimeout(cb, 30);
    },
  });
}

void test('data stream: a slow output that is ended while the vchan waits for it to drain still gets the exit code', async () => {
  const [a, b] = memoryPair();
  const got: Buffer[] = [];
  const slow = slowWritable(got);
  // a caller whose stdin stays open (a terminal): the exit code ends it
  const stdin = new PassThrough();
  const sent: Buffer[] = [];
  b.on('data', (d: Buffer) => sent.push(d));
  const run = startPump({ channel: a, role: 'client', sink: slow, source: stdin, single: false });
  b.write(u32(0x300, 4, 4));
  // stdout data (the write to `slow` pauses the vchan), then EOF in the same chunk
  b.write(Buffer.concat([u32(0x191, 3), Buffer.from('abc'), u32(0x191, 0)]));
  await new Promise((r) => setTimeout(r, 10));
  b.write(u32(0x193, 4, 9)); // exit code, arriving while the vchan is paused
  assert.equal(await run.done, 9);
  assert.equal(Buffer.concat(got).toString(), 'abc');
  // our HELLO, then stdin's EOF once the remote exited
  assert.ok(Buffer.concat(sent).equals(Buffer.concat([u32(0x300, 4, 4), u32(0x190, 0)])));
  assert.ok(stdin.destroyed);
});

void test('agent pump: a slow sink that is closed while the vchan waits for it to drain still gets the exit code', async () => {
  const [a, b] = memoryPair();
  const got: Buffer[] = [];
  const slow = slowWritable(got);
  const pump = startPump({ channel: a, role: 'client', sink: slow, source: null, single: false });
  b.write(u32(0x300, 4, 4));
  b.write(Buffer.concat([u32(0x191, 3), Buffer.from('abc'), u32(0x191, 0)]));
  await new Promise((r) => setTimeout(r, 10));
  b.write(u32(0x193, 4, 9));
  assert.equal(await pump.done, 9);
  assert.equal(Buffer.concat(got).toString(), 'abc');
});

void test('data stream: a peer violating framing ends only that stream', async () => {
  const [a, b] = memoryPair();
  const logs: string[] = [];
  const run = startPump({ channel: a, role: 'client', sink: new PassThrough(), source: null, single: false, log: (m) => logs.push(m) });
  b.write(u32(0x300, 4, 4));
  b.write(u32(0x191, 0x40000000)); // 1 GB chunk
  assert.equal(await run.done, 255);
  assert.match(logs.join('\n'), /MSG_DATA_STDOUT with length 1073741824 outside \[0, 65536\]/);
  void net;
});

void test('a socket service that closed without reading its input: its output is still delivered (a failed write does not drop it)', { skip: loadNative() ? false : 'needs the native addon (dup)' }, async () => {
  // The reference's daemon.py test_run_dom0_service_socket_no_read: the
  // service sends "stdout data" and closes; the caller's stdin then fails to
  // be written (EPIPE). Node closes a socket whose write fails, which dropped
  // the unread output whenever the write came first.
  const dir = await mkdtemp(join(tmpdir(), 'vchan-'));
  try {
    for (let round = 0; round < 20; round++) {
      const svcSock = await closedPeer(join(dir, `svc${round}.sock`), Buffer.from('stdout data'));
      const [a, b] = memoryPair();
      const got: Buffer[] = [];
      a.on('data', (d: Buffer) => got.push(d));
      // the caller's HELLO, stdin data and EOF arrive with the pump's first reads
      a.write(Buffer.concat([u32(0x300, 4, 3), u32(0x190, 10), Buffer.from('stdin data'), u32(0x190, 0)]));
      // reading starts with the pump; the caller's stdin is written first, and fails
      svcSock.resume();
      const run = startPump({ channel: b, role: 'service', source: svcSock, sink: svcSock, single: true });
      assert.equal(await run.done, 0);
      await new Promise((r) => setImmediate(r));
      const frames = framesAfterHello(got);
      assert.deepEqual(
        frames.filter(([t]) => t === 0x191),
        [
          [0x191, 'stdout data'],
          [0x191, ''],
        ],
        `round ${round}`,
      );
      assert.deepEqual(frames.at(-1), [0x193, '\0\0\0\0']);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

void test('a stdin-socket switch (SIGUSR1) after the output ended is ignored: nothing follows the EOF', async () => {
  const [a, b] = memoryPair();
  const got: Buffer[] = [];
  a.on('data', (d: Buffer) => got.push(d));
  const stdout = new PassThrough();
  const stdin = new PassThrough(); // the service's stdin "socket"
  let exit!: (n: number) => void;
  const localExit = new Promise<number>((r) => (exit = r));
  const logs: string[] = [];
  const run = startPump({ channel: b, role: 'service', source: stdout, sink: stdin, single: false, localExit, log: (m) => logs.push(m) });
  a.write(u32(0x300, 4, 3)); // the caller's HELLO
  stdout.end('out');
  await new Promise((r) => setTimeout(r, 50)); // output and its EOF sent
  run.useStdinSocket(stdin);
  stdin.write('late'); // would be read from the switched socket
  await new Promise((r) => setTimeout(r, 50));
  exit(0);
  a.end(Buffer.from([])); // caller done
  assert.equal(await run.done, 0);
  const frames = framesAfterHello(got);
  assert.deepEqual(
    frames.filter(([t]) => t === 0x191),
    [
      [0x191, 'out'],
      [0x191, ''],
    ],
  );
  assert.ok(logs.some((l) => /switch after the output ended: ignored/.test(l)), logs.join('\n'));
});

void test('a data vchan peer that sent its input and closed: the input still arrives although our first write fails', { skip: loadNative() ? false : 'needs the native addon (dup)' }, async () => {
  // Node closes a socket whose write fails (EPIPE), which dropped the peer's
  // frames still queued for reading; the vchan is written through a dup now.
  const dir = await mkdtemp(join(tmpdir(), 'vchan-'));
  try {
    const ch = await closedPeer(join(dir, 'peer.sock'), Buffer.concat([u32(0x300, 4, 3), u32(0x190, 4), Buffer.from('data'), u32(0x190, 0)]));
    // start the pump from an I/O callback: its first write (flushed at the end
    // of this loop turn) then comes before the next read of the vchan
    const received = new PassThrough();
    const chunks: Buffer[] = [];
    received.on('data', (d: Buffer) => chunks.push(d));
    const ended = new Promise((r) => received.on('end', r));
    const started = new Promise<ReturnType<typeof startPump>>((resolve) => {
      const trigger = net.createServer((s) => {
        s.once('data', () => {
          ch.resume();
          resolve(startPump({ channel: ch, role: 'service', sink: received, source: new PassThrough(), single: false }));
          s.destroy();
          trigger.close();
        });
      });
      trigger.listen(join(dir, 'trigger.sock'), () => net.connect(join(dir, 'trigger.sock')).end('go'));
    });
    const run = await started;
    await ended;
    assert.equal(Buffer.concat(chunks).toString(), 'data');
    run.abort('test over');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

/** A unix socket server at `path` counting the connections it gets. */
async function countingServer(path: string): Promise<{ srv: net.Server; count: () => number }> {
  let n = 0;
  const srv = net.createServer((c) => {
    n++;
    c.destroy();
  });
  await new Promise<void>((r) => srv.listen(path, () => r()));
  return { srv, count: () => n };
}

void test('a vchan client never follows a symlink at the socket name: a qube cannot point the host at a host socket (also not by swapping names in a loop)', async () => {
  const root = await mkdtemp(join(tmpdir(), 'vchan-sym-'));
  const { mkdir, symlink } = await import('node:fs/promises');
  const { spawn } = await import('node:child_process');
  const qdir = join(root, '5');
  await mkdir(qdir);
  // a socket of the host (qubesd's, say), outside the qube's directory
  const decoy = await countingServer(join(root, 'qubesd.sock'));
  const legit = await countingServer(join(qdir, 'agent.sock'));
  const env = { dir: root, ownDomain: 0, layout: 'per-domain' as const };
  const name = join(qdir, 'vchan.5.0.512.sock');
  let flipper: ReturnType<typeof spawn> | undefined;
  try {
    await symlink(join(root, 'qubesd.sock'), name);
    await assert.rejects(vchanConnect(env, 5, 512, { timeoutMs: 2000 }), (e: Error) => /ELOOP|symlink/.test(e.message));
    assert.equal(decoy.count(), 0, 'the host reached the socket the symlink points to');
    // the qube swaps the name between a symlink to the host socket and a link to its own listener, as fast as it can
    flipper = spawn('/bin/sh', ['-c', `cd ${qdir} && while :; do ln -sf ${join(root, 'qubesd.sock')} s && mv -fT s vchan.5.0.512.sock; ln -f agent.sock h && mv -fT h vchan.5.0.512.sock; done`], { stdio: 'ignore' });
    let refused = 0;
    const end = Date.now() + 1500;
    while (Date.now() < end) {
      try {
        (await connectOnce(name)).destroy();
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ELOOP') refused++;
      }
      await new Promise((r) => setImmediate(r));
    }
    await new Promise((r) => setTimeout(r, 50));
    assert.ok(legit.count() > 0 && refused > 0, `both names were seen (own socket ${legit.count()}, symlink ${refused})`);
    assert.equal(decoy.count(), 0, 'a connect followed the symlink during the swaps');
  } finally {
    flipper?.kill('SIGKILL');
    decoy.srv.close();
    legit.srv.close();
    await rm(root, { recursive: true, force: true });
  }
});
