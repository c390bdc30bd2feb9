import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runDom0Service } from '../../src/daemon/index.js';
import { memoryPair } from '../../src/vchan/index.js';
import { T, u32 } from './peer.js';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qrexec-dom0-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Plays the calling qube on the data vchan (own framing): HELLO v3, optional stdin + EOF, collects every message. */
async function call(cmd: string, stdin?: string): Promise<{ msgs: [number, string][]; started: boolean; status: number }> {
  const [ours, theirs] = memoryPair();
  let got = Buffer.alloc(0);
  theirs.on('data', (d: Buffer) => (got = Buffer.concat([got, d])));
  const closed = new Promise<void>((r) => theirs.on('end', () => r()));
  theirs.write(u32(T.HELLO, 4, 3));
  if (stdin !== undefined) {
    const b = Buffer.from(stdin);
    theirs.write(Buffer.concat([u32(0x190, b.length), b, u32(0x190, 0)]));
  }
  const logs: string[] = [];
  const r = await runDom0Service(ours, cmd, [dir], (m) => logs.push(m));
  await closed;
  const msgs: [number, string][] = [];
  for (let off = 0; off + 8 <= got.length; ) {
    const type = got.readUInt32LE(off);
    const len = got.readUInt32LE(off + 4);
    const body = got.subarray(off + 8, off + 8 + len);
    msgs.push([type, type === 0x193 ? String(body.readInt32LE(0)) : body.toString()]);
    off += 8 + len;
  }
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

void test('a plain command runs through /bin/sh -c; a service\'s stderr is not sent to the caller', async () => {
  const r = await call('echo Hello world');
  assert.deepEqual(r.msgs.slice(1), [[0x192, ''], [0x191, 'Hello world\n'], [0x191, ''], [0x193, '0']]);
  assert.equal(r.started, true);
  await writeFile(join(dir, 'qubes.Err'), '#!/bin/sh\nread x\necho "out $x $1"\necho "to the log" >&2\n');
  await chmod(join(dir, 'qubes.Err'), 0o755);
  const e = await call('QUBESRPC qubes.Err+a src_domain keyword adminvm', 'in\n');
  assert.deepEqual(e.msgs.slice(1), [[0x192, ''], [0x191, 'out in a\n'], [0x191, ''], [0x193, '0']]);
});
