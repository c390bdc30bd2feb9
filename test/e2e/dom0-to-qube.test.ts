import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { World, BIN, run } from './harness.js';

let w: World;
before(async () => {
  w = await World.create();
  await w.service('work', 'test.Echo', '#!/bin/sh\necho "arg=$1 remote=$QREXEC_REMOTE_DOMAIN full=$QREXEC_SERVICE_FULL_NAME"\ncat\necho to-stderr >&2\nexit 7\n');
  await w.service('work', 'test.Cat', '#!/bin/sh\nexec cat\n');
  await w.qube(1, 'work');
});
after(async () => {
  await w.close();
});

const client = (cmd: string, input: Buffer | string = '', extra: string[] = []): ReturnType<typeof run> =>
  run(BIN('qrexec-client'), [`--socket-dir=${w.sockDir}`, '-d', 'work', ...extra, cmd], w.env(), input);

void test('dom0 → qube: service with argument, stdin/stdout/stderr, exit code', async () => {
  const r = await client('root:QUBESRPC test.Echo+xyz dom0', 'hello\n');
  assert.equal(r.stdout.toString(), 'arg=xyz remote=dom0 full=test.Echo+xyz\nhello\n');
  assert.match(r.stderr, /to-stderr/);
  assert.equal(r.code, 7);
});

void test('dom0 → qube: shell command, -E, not found = 127', async () => {
  const r = await client('root:echo shell; cat; exit 3', 'in\n');
  assert.equal(r.stdout.toString(), 'shell\nin\n');
  assert.equal(r.code, 3);
  assert.equal((await client('root:exit 5', '', ['-E'])).code, 0);
  assert.equal((await client('root:QUBESRPC no.Such+ dom0')).code, 127);
});

void test('dom0 → qube: 64 KiB boundaries and 4 MiB through cat, byte exact', async () => {
  for (const n of [0, 1, 65535, 65536, 65537, 2 * 65536, 4 * 1024 * 1024 + 3]) {
    const data = Buffer.alloc(n);
    for (let i = 0; i < n; i++) data[i] = (i * 7 + 3) & 0xff;
    const r = await client('root:QUBESRPC test.Cat+ dom0', data);
    assert.equal(r.code, 0, `n=${n} ${r.stderr}`);
    assert.ok(r.stdout.equals(data), `n=${n}: got ${r.stdout.length} bytes`);
  }
});

void test('dom0 → qube: a slow stdout reader gets every byte and the exit code', async () => {
  // qrexec-client must not exit while process.stdout still holds data, nor lose
  // its event loop while the vchan waits for stdout to drain
  const data = Buffer.alloc(3 * 1024 * 1024 + 5, 0x61);
  const p = spawn(BIN('qrexec-client'), [`--socket-dir=${w.sockDir}`, '-d', 'work', 'root:QUBESRPC test.Cat+ dom0'], { env: w.env(), stdio: ['pipe', 'pipe', 'inherit'] });
  p.stdin.end(data);
  p.stdout.pause();
  await new Promise((r) => setTimeout(r, 800));
  const out: Buffer[] = [];
  p.stdout.on('data', (d: Buffer) => out.push(d));
  p.stdout.resume();
  const code = await new Promise<number | null>((r) => p.on('close', r));
  assert.equal(code, 0);
  assert.equal(Buffer.concat(out).length, data.length);
});

void test('dom0 → qube: --prefix-data and -t replacing control characters', async () => {
  const r = await client('root:QUBESRPC test.Cat+ dom0', 'rest\x01\n', ['--prefix-data=pre-', '-t']);
  assert.equal(r.stdout.toString(), 'pre-rest_\n');
});
