/**
 * Robustness of the sandbox layer against what an earlier run left behind
 * (issue #11): a stale cgroup of a sandbox's name, and a StandaloneVM made
 * from a template that is running. Root only (CI).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { SandboxWorld, sandboxSkipReason } from './world.js';
import { Sandbox, SandboxError, detectCgroups, ensureStandalone, readVolumeInfo } from '../../src/runtime/sandbox/index.js';

const skip = sandboxSkipReason();
const opts = { skip: skip ?? false };
let w: SandboxWorld;

before(async () => {
  if (skip) return;
  w = await SandboxWorld.create([{ name: 'tpl', domid: 2, uuid: '22222222-2222-4222-8222-222222222222' }]);
});

after(async () => {
  if (skip) return;
  await w?.close();
});

/** Where group `name` lives in each hierarchy we use. */
function groupDirs(name: string): string[] {
  const cg = detectCgroups();
  const bases = cg.kind === 'v2' ? [cg.base] : cg.kind === 'v1' ? [...cg.bases.values()] : [];
  return bases.map((b) => path.join(b, name));
}

function start(name: string, cgroupName: string, domid: number): Promise<Sandbox> {
  return Sandbox.start({
    name, domid, volumes: { klass: 'AppVM', name, template: 'tpl' }, dataDir: w.data,
    runDir: path.join(w.dir, 'run', name), vchanDir: w.links.add(domid), cgroupName,
    command: ['/bin/sh', '-c', 'sleep 1000'], limits: { pids: 50 },
  });
}

void test('a stale empty cgroup of the same name (a killed run) is taken over, not an EEXIST failure', { ...opts, skip: skip ?? (detectCgroups().kind === 'none' ? 'no cgroups' : false) }, async () => {
  const name = `${path.basename(w.dir)}-stale`;
  for (const d of groupDirs(name)) fs.mkdirSync(d);
  const sb = await start('stale', name, 40);
  try {
    assert.ok(sb.cgroup, 'the sandbox has its cgroup');
    assert.ok(sb.cgroup.pids().includes(sb.initPid), 'its processes are in the group');
  } finally {
    await sb.stop();
    w.links.remove(40);
  }
  for (const d of groupDirs(name)) assert.ok(!fs.existsSync(d), `${d} removed at stop`);
});

void test('a cgroup of the same name that still holds processes is refused with a clear error, and left alone', { ...opts, skip: skip ?? (detectCgroups().kind === 'none' ? 'no cgroups' : false) }, async () => {
  const name = `${path.basename(w.dir)}-busy`;
  const dirs = groupDirs(name);
  for (const d of dirs) fs.mkdirSync(d);
  const squatter = spawn('sleep', ['1000'], { stdio: 'ignore' });
  try {
    for (const d of dirs) fs.writeFileSync(path.join(d, 'cgroup.procs'), String(squatter.pid));
    await assert.rejects(start('busy', name, 41), (e: unknown) => {
      assert.ok(e instanceof SandboxError, String(e));
      assert.equal(e.code, 'CGROUP');
      assert.match(e.message, /already holds processes .*another sandbox of this name is running/);
      return true;
    });
    assert.equal(squatter.exitCode, null, 'the other group\'s process is untouched');
    for (const d of dirs) assert.ok(fs.readFileSync(path.join(d, 'cgroup.procs'), 'utf8').includes(String(squatter.pid)));
  } finally {
    squatter.kill('SIGKILL');
    await new Promise((r) => squatter.once('exit', r));
    for (const d of dirs) for (let i = 0; i < 100; i++) {
      try {
        fs.rmdirSync(d);
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 10));
      }
    }
    w.links.remove(41);
  }
});

void test('a StandaloneVM is not copied from a running template (its volume changes under the copy); once it is halted, it is', opts, async () => {
  const sb = await Sandbox.start({
    name: 'tpl', domid: 2, volumes: { klass: 'TemplateVM', name: 'tpl' }, dataDir: w.data,
    runDir: path.join(w.dir, 'run', 'tpl'), vchanDir: w.links.add(2), command: ['/bin/sh', '-c', 'echo t > /etc/tpl-pending; sleep 1000'],
  });
  try {
    const pending = path.join(w.data, 'qubes', 'tpl', 'pending', 'etc', 'tpl-pending');
    for (let i = 0; i < 500 && !fs.existsSync(pending); i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(fs.existsSync(pending), 'the running template wrote its root');
    assert.throws(() => ensureStandalone(w.data, 'sa1', 'tpl'), (e: unknown) => e instanceof SandboxError && e.code === 'STATE' && /template tpl is running; shut it down first/.test(e.message));
    assert.equal(readVolumeInfo(w.data, 'sa1'), undefined, 'nothing made');
    assert.ok(!fs.existsSync(path.join(w.data, 'qubes', 'sa1', 'private')), 'no half copy left');
  } finally {
    await sb.stop();
    w.links.remove(2);
  }
  ensureStandalone(w.data, 'sa1', 'tpl');
  assert.ok(readVolumeInfo(w.data, 'sa1'));
  // the template's last run is in the copy (its layer committed at its stop)
  const layers = fs.readdirSync(path.join(w.data, 'qubes', 'sa1', 'layers'));
  assert.ok(layers.some((l) => fs.existsSync(path.join(w.data, 'qubes', 'sa1', 'layers', l, 'etc', 'tpl-pending'))), layers.join(','));
});
