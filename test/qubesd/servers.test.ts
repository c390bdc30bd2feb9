/**
 * qubesd's two socket servers (src/qubesd/server.ts): the native
 * request/reply loop of the addon (native/request_server.c) and the
 * net.Server fallback (QUBESD_NET_SERVER=1, or no addon) keep the same
 * protocol: the reply then EOF, framing errors and the 64 KiB limit abort,
 * a stalled client blocks nobody, a reply larger than the socket buffer
 * reaches a slow reader whole, an event stream lasts until the client goes,
 * a call still running when the server closes is dropped, the socket is
 * 0660 and a stale one is replaced.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { defineMethod, type MethodSpec } from '../../src/qubesd/admin-api.js';
import { defaultServerKind, serveApi, type ApiServer, type ServerKind } from '../../src/qubesd/server.js';
import { loadNative } from '../../src/native/addon.js';
import { startTestQubesd, raw, req, type TestQubesd } from './helpers.js';

const hasNative = typeof loadNative()?.requestServer === 'function';

test('the default server is the native one when the addon has it; QUBESD_NET_SERVER=1 forces net', () => {
  assert.equal(defaultServerKind({}), hasNative ? 'native' : 'net');
  assert.equal(defaultServerKind({ QUBESD_NET_SERVER: '1' }), 'net');
});

const BIG = 'x'.repeat(3 * 1024 * 1024);

for (const kind of ['native', 'net'] as ServerKind[]) {
  describe(`${kind} server`, { skip: kind === 'native' && !hasNative ? 'the native addon is not built' : false }, () => {
    let t: TestQubesd;
    let srv: ApiServer;
    let sock: string;
    const logs: string[] = [];
    let release: () => void = () => undefined;
    let streamEnded = 0;
    const table = new Map<string, MethodSpec>();
    const flags = { dest: null, arg: null, payload: null, scope: 'global' } as const;
    defineMethod(table, 'test.Echo', flags, (c) => `${c.arg}:${c.payload.toString('latin1')}`);
    defineMethod(table, 'test.Big', flags, () => BIG);
    defineMethod(table, 'test.Wait', flags, () => new Promise<string>((r) => (release = () => r('late'))));
    defineMethod(table, 'test.Stream', flags, async (c) => {
      c.sendEvent('', 'one', [['k', 'v']]);
      c.sendEvent('dom0', 'two', []);
      try {
        await c.closed;
      } finally {
        streamEnded++;
      }
      return null;
    });

    before(async () => {
      t = await startTestQubesd({ server: kind });
      sock = path.join(t.dir, 'run', 'test.sock');
      srv = await serveApi(sock, t.qd.ctx, table, (_l, m) => logs.push(m), kind);
      assert.equal(srv.kind, kind);
      for (const s of t.qd.servers) assert.equal(s.kind, kind);
    });
    after(async () => {
      await srv.close();
      await t.close();
    });

    test('a reply, then EOF; exactly 64 KiB is served, one byte more is aborted without a reply', async () => {
      assert.equal((await raw(sock, req('test.Echo', 'dom0', 'a', 'b'))).data.toString(), '0\0a:b');
      const head = req('test.Echo', 'dom0', 'a', '');
      const exact = await raw(sock, head + 'p'.repeat(65536 - head.length));
      assert.equal(exact.data.toString(), `0\0a:${'p'.repeat(65536 - head.length)}`);
      const over = await raw(sock, head + 'p'.repeat(65537 - head.length));
      assert.equal(over.empty, true);
      assert.ok(logs.includes('request too long'));
    });

    test('framing errors are aborted without a reply; an unknown method gets its exception', async () => {
      assert.equal((await raw(sock, 'test.Echo+ dom0 name dom0')).empty, true);
      assert.equal((await raw(sock, '')).empty, true);
      assert.equal((await raw(sock, 'test.Echo+ dom0 bogus dom0\0')).empty, true);
      assert.equal((await raw(sock, req('test.Nope'))).data.toString(), "2\0ProtocolError\0\0no such method: 'test.Nope'\0");
    });

    test('a reply larger than the socket buffer reaches a client that reads late, whole', async () => {
      const got = await new Promise<Buffer>((resolve, reject) => {
        const s = net.connect({ path: sock, allowHalfOpen: true });
        const chunks: Buffer[] = [];
        s.on('error', reject);
        s.on('connect', () => {
          s.end(req('test.Big'));
          s.pause();
          setTimeout(() => s.resume(), 300);
        });
        s.on('data', (c: Buffer) => chunks.push(c));
        s.on('close', () => resolve(Buffer.concat(chunks)));
      });
      assert.equal(got.length, 2 + BIG.length);
      assert.ok(got.subarray(0, 2).equals(Buffer.from('0\0')) && got.subarray(2).toString() === BIG);
    });

    test('stalled clients, a call still running and 1,000 connections do not block the others', async () => {
      const stalled: net.Socket[] = [];
      for (let i = 0; i < 1000; i++) {
        const s = net.connect(sock);
        s.on('error', () => undefined);
        s.write('test.Echo+x dom0 na');
        stalled.push(s);
      }
      await Promise.all(stalled.map((s) => new Promise<void>((r) => (s.connecting ? s.once('connect', () => r()).once('error', () => r()) : r()))));
      const waiting = raw(sock, req('test.Wait'));
      // not a timing assertion: only that they are served while the others wait
      for (let i = 0; i < 20; i++) assert.equal((await raw(sock, req('test.Echo', 'dom0', String(i)))).data.toString(), `0\0${i}:`);
      release();
      assert.equal((await waiting).data.toString(), '0\0late');
      // a stalled client that finally sends the rest is served
      const last = stalled.pop() as net.Socket;
      const reply = new Promise<string>((resolve) => {
        let s = '';
        last.on('data', (c: Buffer) => (s += c.toString()));
        last.on('close', () => resolve(s));
      });
      last.end('me dom0\0pl');
      assert.equal(await reply, '0\0x:pl');
      for (const s of stalled) s.destroy();
    });

    test('an event stream: frames byte for byte, open until the client goes', async () => {
      const s = net.connect({ path: sock, allowHalfOpen: true });
      let got = '';
      await new Promise<void>((resolve, reject) => {
        s.on('error', reject);
        s.on('connect', () => s.end(req('test.Stream')));
        s.on('data', (c: Buffer) => {
          got += c.toString('latin1');
          if (got.length >= '1\0\0one\0k\0v\0\0'.length + '1\0dom0\0two\0\0'.length) resolve();
        });
      });
      assert.equal(got, '1\0\0one\0k\0v\0\0' + '1\0dom0\0two\0\0');
      s.destroy();
    });

    test('admin.Events lasts until the client goes (seen at the next event)', async () => {
      const admin = t.qd.servers[0] as ApiServer;
      const s = net.connect({ path: t.sock, allowHalfOpen: true });
      s.on('error', () => undefined);
      s.on('connect', () => s.end(req('admin.Events')));
      await new Promise<void>((r) => s.once('data', () => r()));
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(admin.connections, 1, 'the stream is still open');
      s.destroy();
      let n = 0;
      while (admin.connections > 0 && n++ < 50) {
        await raw(t.sock, req('admin.vm.tag.Set', 'dom0', `t${n}`));
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(admin.connections, 0);
    });

    test('the socket is mode 0660; a stale socket file is replaced, a live one refused', async () => {
      assert.equal(fs.statSync(sock).mode & 0o777, 0o660);
      const stale = path.join(t.dir, 'run', 'stale.sock');
      // a socket file nobody listens on, as a qubesd killed with -9 leaves it
      spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(stale)}, () => process.kill(process.pid, 'SIGKILL'))`]);
      assert.ok(fs.existsSync(stale));
      const s2 = await serveApi(stale, t.qd.ctx, table, () => undefined, kind);
      assert.equal((await raw(stale, req('test.Echo', 'dom0', 'z'))).data.toString(), '0\0z:');
      await assert.rejects(serveApi(stale, t.qd.ctx, table, () => undefined, kind), /another qubesd is running/);
      await s2.close();
      assert.equal(fs.existsSync(stale), false);
    });

    test('close: a call still running is dropped (no reply, no crash), open streams end, nothing is served after', async () => {
      const other = path.join(t.dir, 'run', 'other.sock');
      const s3 = await serveApi(other, t.qd.ctx, table, () => undefined, kind);
      const waiting = raw(other, req('test.Wait'));
      const ended = streamEnded;
      const stream = net.connect({ path: other, allowHalfOpen: true });
      const streamClosed = new Promise<void>((r) => stream.on('close', () => r()));
      stream.on('error', () => undefined);
      stream.on('connect', () => stream.end(req('test.Stream')));
      await new Promise<void>((r) => stream.once('data', () => r()));
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(s3.connections, 2);
      await s3.close();
      assert.equal((await waiting).empty, true);
      await streamClosed;
      release();
      await new Promise((r) => setTimeout(r, 20));
      assert.equal(streamEnded, ended + 1);
      assert.equal((await raw(other, req('test.Echo'))).empty, true);
    });
  });
}
