/**
 * dom0 services and qrexec-client, as a caller sees them on the data vchan:
 * when a socket service's call ends (the service closes, or stops reading,
 * once its output is over: the caller's EOF is not needed), plain commands
 * running through bash, and qrexec-client closing its stdout at the remote's
 * stdout EOF. The peers frame messages themselves.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, constants as fsc, openSync } from 'node:fs';
import { mkdtemp, mkdir, rm, unlink } from 'node:fs/promises';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runDom0Service } from '../../src/daemon/index.js';
import { loadNative } from '../../src/native/addon.js';
import { memoryPair } from '../../src/vchan/index.js';
import { Reader, T, decodeMessages, msg, u32, within as withinMs } from './peer.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../../..');
const SERVICE = 'qubes.SocketService+arg';
const CMD = `QUBESRPC ${SERVICE} src_domain name src_domain`;
/** Long enough for a loaded machine; a call that never ends fails here instead of hanging. */
const PATIENCE_MS = 15000;

let dir: string;
let cfgDir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qrexec-dom0sock-'));
  cfgDir = join(dir, 'rpc-config');
  await mkdir(cfgDir);
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

type Msg = [number, string];

const within = <V>(p: Promise<V>, what: string, ms = PATIENCE_MS): Promise<V> => withinMs(p, what, ms);

/**
 * A socket service at `<dir>/<SERVICE>` whose connection is handed to
 * `serve`, and a caller on the other end of a memory vchan that never sends
 * EOF unless `caller` does. Resolves with every message the caller got once
 * the call is over, plus the status runDom0Service reported.
 */
async function socketCall(
  serve: (conn: net.Socket) => void,
  caller: (send: (b: Buffer) => void, got: () => Msg[]) => Promise<void> = async () => undefined,
  opts: net.ServerOpts = {},
): Promise<{ msgs: Msg[]; status: number; logs: string[] }> {
  const path = join(dir, SERVICE);
  await unlink(path).catch(() => undefined);
  const server = net.createServer({ allowHalfOpen: true, ...opts }, (c) => {
    c.on('error', () => undefined);
    server.close();
    serve(c);
  });
  await new Promise<void>((r) => server.listen(path, () => r()));
  const [ours, theirs] = memoryPair();
  const chunks: Buffer[] = [];
  theirs.on('data', (d: Buffer) => chunks.push(d));
  const closed = new Promise<void>((r) => theirs.on('end', () => r()));
  theirs.write(u32(T.HELLO, 4, 3));
  const logs: string[] = [];
  const run = runDom0Service(ours, CMD, [dir], (m) => logs.push(m), cfgDir);
  try {
    await caller(
      (b) => theirs.write(b),
      () => decodeMessages(Buffer.concat(chunks)),
    );
    const r = await within(run, 'the call did not end');
    await within(closed, 'the vchan was not closed');
    return { msgs: decodeMessages(Buffer.concat(chunks)).slice(1), status: r.status, logs };
  } finally {
    server.close();
    theirs.destroy();
  }
}

/** Polls `cond` (events, not timing: it only bounds how long we wait). */
async function until(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + PATIENCE_MS;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timeout: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Connects to a unix socket, retrying while it does not exist yet. */
async function connectWhenReady(path: string): Promise<net.Socket> {
  const deadline = Date.now() + PATIENCE_MS;
  for (;;) {
    try {
      return await new Promise<net.Socket>((resolve, reject) => {
        const s = net.createConnection(path);
        s.once('connect', () => {
          s.off('error', reject);
          resolve(s);
        });
        s.once('error', reject);
      });
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

const DESCRIPTOR = `${SERVICE} src_domain name src_domain\0`;

void test('a socket service that answers and closes ends the call: the caller need not send EOF', async () => {
  let header = '';
  const r = await socketCall((c) => {
    c.on('data', (d: Buffer) => {
      header += d.toString('latin1');
      if (header.length >= DESCRIPTOR.length) c.end('stdout data', () => c.destroy());
    });
  });
  assert.equal(header, DESCRIPTOR);
  assert.deepEqual(r.msgs, [
    [T.DATA_STDERR, ''],
    [T.DATA_STDOUT, 'stdout data'],
    [T.DATA_STDOUT, ''],
    [T.DATA_EXIT_CODE, '0'],
  ]);
  assert.equal(r.status, 0);
});

void test('a socket service that closes without reading what it was sent (connection reset) ends the call quietly', async () => {
  const r = await socketCall(
    (c) => {
      // the descriptor is never read: closing now resets the connection
      setTimeout(() => c.end('stdout data', () => c.destroy()), 50);
    },
    async () => undefined,
    { pauseOnConnect: true },
  );
  assert.deepEqual(r.msgs.at(-1), [T.DATA_EXIT_CODE, '0']);
  assert.deepEqual(r.msgs.at(-2), [T.DATA_STDOUT, '']);
  assert.deepEqual(r.logs.filter((l) => /ECONNRESET|EPIPE/.test(l)), []);
});

void test('a socket service that ends its output first, then closes after reading the caller\'s data, ends the call', async () => {
  let got = '';
  const r = await socketCall(
    (c) => {
      c.end('early output');
      c.on('data', (d: Buffer) => {
        got += d.toString('latin1');
        if (got.endsWith('caller data')) c.destroy();
      });
    },
    async (send, msgs) => {
      await until(() => msgs().some(([t, s]) => t === T.DATA_STDOUT && s === ''), 'stdout EOF');
      send(msg(T.DATA_STDIN, Buffer.from('caller data')));
    },
  );
  assert.equal(got, `${DESCRIPTOR}caller data`);
  assert.deepEqual(r.msgs, [
    [T.DATA_STDERR, ''],
    [T.DATA_STDOUT, 'early output'],
    [T.DATA_STDOUT, ''],
    [T.DATA_EXIT_CODE, '0'],
  ]);
});

void test('a socket service that ended its output but still reads keeps the call going until the caller\'s EOF', async () => {
  let got = '';
  let sawEnd = false;
  const r = await socketCall(
    (c) => {
      c.end('bye');
      c.on('data', (d: Buffer) => (got += d.toString('latin1')));
      c.on('end', () => {
        sawEnd = true;
        c.destroy();
      });
    },
    async (send, msgs) => {
      await until(() => msgs().some(([t, s]) => t === T.DATA_STDOUT && s === ''), 'stdout EOF');
      // the service's output is over and it is idle: the call must not end by itself
      await new Promise((r) => setTimeout(r, 600));
      assert.ok(!msgs().some(([t]) => t === T.DATA_EXIT_CODE), 'exit code sent while the service still reads');
      send(msg(T.DATA_STDIN, Buffer.from('late data')));
      send(msg(T.DATA_STDIN));
    },
  );
  // the call ends once the data and EOF are written to the socket (as the
  // agent's socket services, and the reference's), not once the service read them
  await until(() => sawEnd, 'the service did not see EOF');
  assert.equal(got, `${DESCRIPTOR}late data`);
  assert.ok(sawEnd);
  assert.deepEqual(r.msgs.at(-1), [T.DATA_EXIT_CODE, '0']);
});

void test('a socket service gets every byte the caller sent before its EOF, even when its output ended first and our writes are queued', async () => {
  const size = 64 * 65536;
  let got = 0;
  let sawEnd = false;
  const r = await socketCall(
    (c) => {
      c.end('bye');
      c.on('data', (d: Buffer) => (got += d.length));
      c.on('end', () => {
        sawEnd = true;
        c.destroy();
      });
    },
    async (send) => {
      // 4 MiB and EOF in one read of the vchan: far more than the socket takes at once
      const frames: Buffer[] = [];
      for (let i = 0; i < 64; i++) frames.push(msg(T.DATA_STDIN, Buffer.alloc(65536, 0x61)));
      frames.push(msg(T.DATA_STDIN));
      send(Buffer.concat(frames));
    },
  );
  await until(() => sawEnd, 'the service did not see EOF');
  assert.equal(got, DESCRIPTOR.length + size);
  assert.deepEqual(r.msgs.at(-1), [T.DATA_EXIT_CODE, '0']);
});

void test('a socket service that shuts down reading, then its output, ends the call (needs the native helper for SHUT_RD)', async (t) => {
  const native = loadNative();
  if (!native) {
    t.skip('native helper not built');
    return;
  }
  const r = await socketCall((c) => {
    let header = '';
    c.on('data', (d: Buffer) => {
      header += d.toString('latin1');
      if (header.length < DESCRIPTOR.length) return;
      const fd = (c as unknown as { _handle: { fd: number } })._handle.fd;
      native.shutdown(fd, 0);
      c.end('last words');
    });
  });
  assert.deepEqual(r.msgs.slice(-3), [
    [T.DATA_STDOUT, 'last words'],
    [T.DATA_STDOUT, ''],
    [T.DATA_EXIT_CODE, '0'],
  ]);
});

void test('a plain command in dom0 runs through bash, as the reference qrexec-client does', async () => {
  const [ours, theirs] = memoryPair();
  const chunks: Buffer[] = [];
  theirs.on('data', (d: Buffer) => chunks.push(d));
  const closed = new Promise<void>((r) => theirs.on('end', () => r()));
  theirs.write(Buffer.concat([u32(T.HELLO, 4, 3), msg(T.DATA_STDIN, Buffer.from('x\n')), msg(T.DATA_STDIN)]));
  // `read` without a name and [[ ]] are bash, not POSIX sh
  await within(runDom0Service(ours, 'read; [[ $REPLY == x ]] && echo "got $REPLY"', [dir], () => undefined, cfgDir), 'command');
  await within(closed, 'vchan close');
  assert.deepEqual(decodeMessages(Buffer.concat(chunks)).slice(1), [
    [T.DATA_STDERR, ''],
    [T.DATA_STDOUT, 'got x\n'],
    [T.DATA_STDOUT, ''],
    [T.DATA_EXIT_CODE, '0'],
  ]);
  theirs.destroy();
});

void test('qrexec-client dom0 → qube: the remote\'s stdout EOF closes our stdout before the exit code arrives', async () => {
  const sockDir = await mkdtemp(join(dir, 'client-'));
  const domain = 42;
  const port = 513;
  // a fake qrexec-daemon for the target qube: handshake, EXEC_CMDLINE → (domain, port)
  const daemon = net.createServer((s) => {
    s.on('error', () => undefined);
    const rd = new Reader(s);
    s.write(u32(T.HELLO, 4, 3));
    void (async () => {
      await rd.bytes(12); // the client's HELLO
      await rd.message(); // EXEC_CMDLINE
      s.write(Buffer.concat([u32(T.EXEC_CMDLINE, 8), u32(domain, port)]));
    })().catch(() => s.destroy());
  });
  await new Promise<void>((r) => daemon.listen(join(sockDir, 'qrexec.target'), () => r()));
  // the client's stdout is a real pipe (a FIFO), as a shell's or Python's: a
  // socket would see EOF at a mere shutdown, which hides the difference
  const fifo = join(sockDir, 'stdout');
  assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
  const readFd = openSync(fifo, fsc.O_RDONLY | fsc.O_NONBLOCK);
  const writeFd = openSync(fifo, fsc.O_WRONLY);
  const child = spawn(join(ROOT, 'bin', 'qrexec-client'), [`--socket-dir=${sockDir}`, '-d', 'target', 'user:command'], {
    env: { ...process.env, VCHAN_DOMAIN: '0', VCHAN_SOCKET_DIR: sockDir },
    stdio: ['pipe', writeFd, 'inherit'],
  });
  closeSync(writeFd);
  const stdout = new net.Socket({ fd: readFd, readable: true, writable: false });
  try {
    let out = '';
    stdout.on('data', (d: Buffer) => (out += d.toString()));
    const stdoutClosed = new Promise<void>((r) => stdout.once('end', () => r()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    // the client's data vchan server, once it is there
    const vchanPath = join(sockDir, `vchan.0.${domain}.${port}.sock`);
    const target = await connectWhenReady(vchanPath);
    const t = new Reader(target);
    target.write(u32(T.HELLO, 4, 3));
    assert.equal((await t.bytes(12)).readUInt32LE(0), T.HELLO);
    target.write(Buffer.concat([msg(T.DATA_STDOUT, Buffer.from('stdout data\n')), msg(T.DATA_STDOUT)]));
    // our stdin stays open: only the stdout EOF can make the client close its stdout
    await within(stdoutClosed, 'qrexec-client stdout EOF');
    assert.equal(out, 'stdout data\n');
    target.write(Buffer.concat([u32(T.DATA_EXIT_CODE, 4), u32(42)]));
    assert.equal(await within(exited, 'qrexec-client exit'), 42);
    target.destroy();
  } finally {
    child.kill('SIGKILL');
    stdout.destroy();
    daemon.close();
  }
});
