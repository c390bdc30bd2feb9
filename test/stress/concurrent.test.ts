/**
 * Issue #8: 1,000 calls at once between 10 qubes (qrexec-host, ten agents),
 * through the callService library, to executables and socket services that
 * write 0 B to 300 KB and exit or close at once: every byte and exit code
 * arrives, no call hangs. Prints p50/p99 of the call times (no timed
 * assertion: the figures are for the reader).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import * as net from 'node:net';
import { join } from 'node:path';
import type { World } from '../e2e/harness.js';
import { hostWorld, libraryCall, pct, sha, type Outcome } from './world.js';

const QUBES = Array.from({ length: 10 }, (_, i) => `q${i + 1}`);
const SIZES = [0, 1, 100, 4096, 65537, 300000];
const CALLS = 1000;
let w: World;
const data = new Map<number, Buffer>();
let sockServer: net.Server;
const libLogs: string[] = [];

before(async () => {
  w = await hostWorld(QUBES, 'test.Gen * @anyvm @anyvm allow\ntest.Sock * @anyvm @anyvm allow\n');
  const dataDir = join(w.dir, 'data');
  await mkdir(dataDir);
  for (const n of SIZES) {
    const b = randomBytes(n);
    data.set(n, b);
    await writeFile(join(dataDir, `data-${n}`), b);
  }
  // socket services: the descriptor `test.Sock+SIZE SOURCE ...\0`, then SIZE bytes and close
  sockServer = net.createServer({ allowHalfOpen: true }, (c) => {
    c.on('error', () => undefined);
    let head = Buffer.alloc(0);
    const onData = (d: Buffer): void => {
      head = Buffer.concat([head, d]);
      const z = head.indexOf(0);
      if (z < 0) return;
      c.off('data', onData);
      c.resume();
      const size = Number(/^test\.Sock\+(\d+) /.exec(head.subarray(0, z).toString())?.[1]);
      c.end(data.get(size) ?? Buffer.from('bad request'), () => c.destroy());
    };
    c.on('data', onData);
  });
  const sockPath = join(w.dir, 'sock-service.sock');
  await new Promise<void>((r) => sockServer.listen(sockPath, () => r()));
  sockServer.maxConnections = 4 * CALLS;
  for (const q of QUBES) {
    await w.service(q, 'test.Gen', `#!/bin/sh\ncat "${dataDir}/data-\${1%%-*}"\nexit "\${1#*-}"\n`);
    await symlink(sockPath, join(w.dir, `rpc-${q}`, 'test.Sock'));
  }
});
after(async () => {
  sockServer.close();
  await w.close();
});

void test(`stress: ${CALLS} concurrent calls between ${QUBES.length} qubes, mixed sizes: 0 bytes lost, 0 hung`, { timeout: 180_000 }, async (t) => {
  const jobs: { size: number; code: number; run: () => Promise<Outcome> }[] = [];
  for (let i = 0; i < CALLS; i++) {
    const src = i % QUBES.length;
    const dst = (src + 1 + (Math.floor(i / QUBES.length) % (QUBES.length - 1))) % QUBES.length;
    const size = SIZES[(i * 7) % SIZES.length] as number;
    const exec = i % 3 === 0; // a third executables, the rest socket services
    const code = exec ? i % 2 : 0;
    const service = exec ? `test.Gen+${size}-${code}` : `test.Sock+${size}`;
    jobs.push({ size, code, run: () => libraryCall(w, QUBES[src] as string, src + 1, QUBES[dst] as string, service, false, 120_000, libLogs) });
  }
  const t0 = Date.now();
  const results = await Promise.all(jobs.map((j) => j.run()));
  const wall = Date.now() - t0;
  const bad: string[] = [];
  let lost = 0;
  let hung = 0;
  results.forEach((r, i) => {
    const j = jobs[i] as (typeof jobs)[number];
    const want = data.get(j.size) as Buffer;
    if (r.hung) hung++;
    if (r.hung || r.code !== j.code || !r.stdout.equals(want) || r.stderr.length !== 0) {
      lost += Math.max(0, want.length - r.stdout.length);
      bad.push(`call ${i}: ${r.hung ? 'HUNG ' : ''}exit ${r.code} (want ${j.code}), stdout ${r.stdout.length} B ${sha(r.stdout)} (want ${want.length} B ${sha(want)}), stderr ${r.stderr.length} B`);
    }
  });
  const ms = results.map((r) => r.ms);
  const line = `stress concurrent: ${CALLS} calls in ${wall} ms, ${bad.length} lost or wrong, ${lost} bytes lost, ${hung} hung; call p1 ${pct(ms, 1).toFixed(1)} p10 ${pct(ms, 10).toFixed(1)} p50 ${pct(ms, 50).toFixed(1)} ms, p99 ${pct(ms, 99).toFixed(1)} ms`;
  t.diagnostic(line);
  console.log(line);
  if (bad.length) console.log(w.logs.join('').split('\n').filter((l) => /error|fail|EAGAIN/i.test(l)).slice(0, 30).join('\n'));
  assert.equal(bad.length, 0, bad.slice(0, 20).join('\n'));
  assert.deepEqual(libLogs, []);
});
