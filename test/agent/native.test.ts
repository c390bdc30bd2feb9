/**
 * The native helper's waitReadable(): fires once the descriptor is readable,
 * reads nothing itself, and reports a timeout. Skipped without the addon.
 */
import assert from 'node:assert/strict';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as fs from 'node:fs';
import { describe, it } from 'node:test';
import { loadNative } from '../../src/native/addon.js';

const native = loadNative();

/** A connected pair of unix sockets; the server side paused (as the agent accepts callers). */
async function pair(): Promise<{ server: net.Socket; client: net.Socket; close: () => void }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qrexec-native-'));
  const p = path.join(dir, 's');
  let accepted!: (s: net.Socket) => void;
  const got = new Promise<net.Socket>((r) => (accepted = r));
  const srv = net.createServer({ pauseOnConnect: true }, (s) => accepted(s));
  await new Promise<void>((r) => srv.listen(p, () => r()));
  const client = net.connect(p);
  const server = await got;
  return {
    server,
    client,
    close: () => {
      client.destroy();
      server.destroy();
      srv.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
const fdOf = (s: net.Socket): number => (s as unknown as { _handle: { fd: number } })._handle.fd;

describe('native waitReadable', { skip: native ? false : 'native addon not built' }, () => {
  it('fires true when data arrives later and leaves the data to be read', async () => {
    const n = native!;
    const { server, client, close } = await pair();
    try {
      const fd = fdOf(server);
      assert.equal(n.recvFds(fd, 100, 4), null);
      const readable = new Promise<boolean>((r) => n.waitReadable(fd, 5000, r));
      setTimeout(() => client.write('late'), 200);
      assert.equal(await readable, true);
      assert.deepEqual(n.recvFds(fd, 100, 4), { data: Buffer.from('late'), fds: [] });
    } finally {
      close();
    }
  });

  it('fires true on EOF', async () => {
    const n = native!;
    const { server, client, close } = await pair();
    try {
      const readable = new Promise<boolean>((r) => n.waitReadable(fdOf(server), 5000, r));
      client.end();
      assert.equal(await readable, true);
      assert.equal(n.recvFds(fdOf(server), 100, 4)?.data.length, 0);
    } finally {
      close();
    }
  });

  it('fires false after the timeout when nothing comes', async () => {
    const n = native!;
    const { server, close } = await pair();
    try {
      assert.equal(await new Promise<boolean>((r) => n.waitReadable(fdOf(server), 100, r)), false);
    } finally {
      close();
    }
  });

  it('rejects bad arguments', () => {
    const n = native!;
    assert.throws(() => n.waitReadable(-1, 10, () => undefined), /out of range/);
    assert.throws(() => n.waitReadable(0, 10, 'x' as unknown as () => void), /callback/);
  });
});

describe('native connectUnix', { skip: native ? false : 'native addon not built' }, () => {
  it('connects at once and reports errors as codes', async () => {
    const n = native!;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qrexec-native-'));
    try {
      assert.equal(n.connectUnix(path.join(dir, 'missing')), 'ENOENT');
      assert.throws(() => n.connectUnix(''), /empty or too long/);
      assert.throws(() => n.connectUnix('x'.repeat(200)), /empty or too long/);
      const p = path.join(dir, 's');
      const got = new Promise<string>((resolve) => {
        const srv = net.createServer((s) => s.on('data', (d: Buffer) => {
          resolve(d.toString());
          s.end();
          srv.close();
        }));
        srv.listen(p);
      });
      await new Promise((r) => setTimeout(r, 50));
      const fd = n.connectUnix(p);
      assert.equal(typeof fd, 'number');
      const c = new net.Socket({ fd: fd as number, readable: true, writable: true });
      c.write('hi');
      assert.equal(await got, 'hi');
      c.destroy();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
