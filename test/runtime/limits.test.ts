/**
 * Limits and pause (issue #11 §1, §4): a qube that forks without end or
 * allocates without bound hits its cgroup's limits while its neighbour keeps
 * answering; pause freezes a whole qube. Root only (CI).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SandboxWorld, SH_SERVICE, sandboxSkipReason } from './world.js';
import { detectCgroups, INSIDE_PROJECT } from '../../src/runtime/sandbox/index.js';

const skip = sandboxSkipReason();
const opts = { skip: skip ?? false };
let w: SandboxWorld;
const MEM = 192 * 1024 * 1024;
const PIDS = 64;

before(async () => {
  if (skip) return;
  const cg = detectCgroups();
  if (cg.kind === 'none') throw new Error(`cgroups must be usable as root (CI): ${cg.reason}`);
  w = await SandboxWorld.create([
    { name: 'hog', domid: 1, uuid: '11111111-1111-4111-8111-111111111111' },
    { name: 'work', domid: 2, uuid: '22222222-2222-4222-8222-222222222222' },
  ]);
  w.templateService('test.Sh', SH_SERVICE);
  w.templateService('test.Echo', '#!/bin/sh\necho "alive $(hostname)"\n');
  await w.start('hog', { limits: { memoryBytes: MEM, pids: PIDS, cpus: 0.5 } });
  await w.start('work', { limits: { memoryBytes: MEM, pids: PIDS } });
  await w.hostReady();
});

after(async () => {
  if (skip) return;
  await w?.close();
});

const neighbourAnswers = async (): Promise<void> => {
  const r = await w.call('work', 'DEFAULT:QUBESRPC test.Echo+ dom0');
  assert.equal(r.stdout.toString(), 'alive work\n', r.stderr);
};

void test('a fork bomb (10,000 processes) stops at the pids limit; the neighbour keeps answering', opts, async () => {
  const sb = w.sandboxes.get('hog');
  assert.ok(sb?.cgroup);
  // 10,000 forks as fast as they fail (python3 of the host's /usr, in the template); children close their stdio and sleep
  const bomb = w.sh('hog', `python3 -c '
import os, time
ok = fail = 0
for i in range(10000):
    try:
        if os.fork() == 0:
            os.closerange(0, 1024); time.sleep(4); os._exit(0)
        ok += 1
    except OSError:
        fail += 1
print("started", ok, "refused", fail)'\n`);
  // pids.current counts threads too (the agent's Node has about ten)
  const pidsDir = sb.cgroup.dirs.get('pids') ?? sb.cgroup.dirs.get('');
  const current = (): number => Number(fs.readFileSync(path.join(pidsDir as string, 'pids.current'), 'utf8'));
  let most = 0;
  const watch = setInterval(() => (most = Math.max(most, current())), 10);
  await new Promise((r) => setTimeout(r, 300));
  await neighbourAnswers();
  const r = await bomb;
  clearInterval(watch);
  most = Math.max(most, current());
  const [, started, refused] = /^started (\d+) refused (\d+)\n$/.exec(r.out) ?? [];
  assert.ok(Number(started) + Number(refused) === 10000 && Number(refused) > 9000, `${r.out} ${r.err}`);
  assert.ok(most <= PIDS, `at most ${PIDS} processes, saw ${most}`);
  assert.ok(most >= PIDS - 4, `the bomb reached the limit: ${most}`);
  const events = fs.readFileSync(path.join(pidsDir as string, 'pids.events'), 'utf8');
  assert.ok(Number(/max (\d+)/.exec(events)?.[1]) >= Number(refused), `refused forks counted by the cgroup: ${events}`);
  await neighbourAnswers();
  // once its sleeps end, the qube answers again
  for (let i = 0; i < 100 && sb.pids().length > 10; i++) await new Promise((res) => setTimeout(res, 100));
  assert.equal((await w.call('hog', 'DEFAULT:QUBESRPC test.Echo+ dom0')).stdout.toString(), 'alive hog\n');
});

void test('a memory hog is killed at the memory limit; the qube and its neighbour go on', opts, async () => {
  const r = await w.sh('hog', `${INSIDE_PROJECT}/node -e 'const a=[];for(;;)a.push(Buffer.alloc(1<<20,1))' 2>/dev/null; echo "hog status $?"\n`);
  assert.match(r.out, /hog status 137/, `killed by SIGKILL (OOM): ${r.out} ${r.err.slice(0, 300)}`);
  const sb = w.sandboxes.get('hog');
  const cg = sb?.cgroup;
  assert.ok(cg);
  const peak = cg.mode.kind === 'v1' ? Number(fs.readFileSync(path.join(cg.dirs.get('memory') as string, 'memory.max_usage_in_bytes'), 'utf8')) : (cg.memoryCurrent() ?? 0);
  assert.ok(peak <= MEM, `peak ${peak} within ${MEM}`);
  await neighbourAnswers();
  const again = await w.call('hog', 'DEFAULT:QUBESRPC test.Echo+ dom0');
  assert.equal(again.stdout.toString(), 'alive hog\n', 'the qube itself still answers');
});

void test('pause freezes every process of a qube (a call waits), unpause lets it finish', opts, async () => {
  const sb = w.sandboxes.get('work');
  assert.ok(sb);
  await sb.pause();
  let done = false;
  const call = w.call('work', 'DEFAULT:QUBESRPC test.Echo+ dom0').then((r) => {
    done = true;
    return r;
  });
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(done, false, 'a paused qube does not answer');
  if (sb.cgroup?.canFreeze && sb.cgroup.mode.kind === 'v1') {
    assert.equal(fs.readFileSync(path.join(sb.cgroup.dirs.get('freezer') as string, 'freezer.state'), 'utf8').trim(), 'FROZEN');
  }
  await sb.unpause();
  const r = await call;
  assert.equal(r.stdout.toString(), 'alive work\n');
});
