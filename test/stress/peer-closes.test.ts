/**
 * Issue #8: a service end that sends everything (HELLO, output, EOFs, exit
 * code) and closes at once without reading — as the reference C agent does —
 * gives our clients a failed write (EPIPE) or a reset; that is the normal end
 * of a call, not an error: the reference clients print nothing then, and the
 * call's output and exit code are complete. The fake agent here answers
 * qrexec-client-vm (its Node.js code, which the launcher runs against the
 * reference agent) the way the reference agent does: exec_params, then it
 * connects the data vchan and plays the service.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { ROOT } from '../e2e/harness.js';
import { encodeDataHeader, encodeExitCode, encodeHello, encodeMessage, MsgType } from '../../src/protocol/index.js';
import { startPump, vchanConnect, vchanListen } from '../../src/vchan/index.js';
import { processCall } from './world.js';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qrexec-peer-closes-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Everything a service sends for `out` and exit code `code`, in one write. */
function serviceBytes(out: Buffer, code: number): Buffer {
  const parts = [encodeHello(3)];
  for (let off = 0; off < out.length; off += 65536) parts.push(encodeMessage(MsgType.DATA_STDOUT, out.subarray(off, off + 65536)));
  return Buffer.concat([...parts, encodeDataHeader(MsgType.DATA_STDOUT, 0), encodeDataHeader(MsgType.DATA_STDERR, 0), encodeExitCode(code)]);
}

/**
 * A reference-like agent at `path` for domain 2: reads one MSG_TRIGGER_SERVICE
 * request, answers exec_params (domain 2, port), connects the caller's data
 * vchan, sends `bytes` and closes without reading anything.
 */
async function fakeAgent(path: string, bytes: Buffer): Promise<net.Server> {
  let port = 600;
  const server = net.createServer((c) => {
    c.on('error', () => undefined);
    let got = Buffer.alloc(0);
    c.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length < 8 || got.length < 8 + got.readUInt32LE(4)) return;
      c.removeAllListeners('data');
      const p = port++;
      const params = Buffer.alloc(8);
      params.writeUInt32LE(2, 0);
      params.writeUInt32LE(p, 4);
      c.write(params);
      void vchanConnect({ dir, ownDomain: 2 }, 1, p, { timeoutMs: 10000 }).then((ch) => {
        ch.on('error', () => undefined);
        ch.write(bytes, () => ch.destroy());
      });
    });
  });
  await new Promise<void>((r) => server.listen(path, () => r()));
  return server;
}

void test('qrexec-client-vm (Node.js) against a service end that sends all and closes: output and code complete, no EPIPE message', { timeout: 120_000 }, async () => {
  const out = Buffer.alloc(70000, 0x6f);
  const server = await fakeAgent(join(dir, 'agent.sock'), serviceBytes(out, 5));
  try {
    const script = join(ROOT, 'dist', 'src', 'cli', 'qrexec-client-vm.js');
    for (let i = 0; i < 20; i++) {
      // stdin kept open and busy: our client is still sending when the peer is gone
      const r = await processCall(process.execPath, [script, `--agent-socket=${join(dir, 'agent.sock')}`, 'vault', 'test.Any'], { ...process.env, VCHAN_DOMAIN: '1', VCHAN_SOCKET_DIR: dir }, i % 2 === 0, 30000);
      assert.equal(r.hung, false);
      assert.equal(r.code, 5, r.stderr.toString());
      assert.ok(r.stdout.equals(out), `call ${i}: ${r.stdout.length} of ${out.length} bytes`);
      assert.equal(r.stderr.toString(), '', `call ${i}`);
    }
  } finally {
    server.close();
  }
});

void test('data pump, client role: a peer that sent everything and closed, while our stdin still flows: no error logged, status and output complete', { timeout: 60_000 }, async () => {
  const out = Buffer.alloc(5000, 0x61);
  for (let i = 0; i < 30; i++) {
    const l = await vchanListen({ dir, ownDomain: 1 }, 2, 700 + i);
    const peer = vchanConnect({ dir, ownDomain: 2 }, 1, 700 + i, { timeoutMs: 5000 });
    const ch = await l.accepted;
    const pc = await peer;
    pc.on('error', () => undefined);
    pc.write(serviceBytes(out, 7), () => pc.destroy());
    // a stdin that keeps producing: writes race with the peer's close
    const stdin = new PassThrough();
    const feed = setInterval(() => stdin.write(Buffer.alloc(65536, 0x69)), 1);
    const got: Buffer[] = [];
    const sink = new PassThrough();
    sink.on('data', (d: Buffer) => got.push(d));
    const logs: string[] = [];
    try {
      const status = await startPump({ channel: ch, role: 'client', source: stdin, sink, errSink: new PassThrough(), single: false, log: (m) => logs.push(m) }).done;
      assert.equal(status, 7);
      assert.ok(Buffer.concat(got).equals(out));
      assert.deepEqual(logs, [], `round ${i}`);
    } finally {
      clearInterval(feed);
      stdin.destroy();
    }
  }
});
