/**
 * admin.vm.volume.Info's `usage`: the bytes a volume's host directories
 * allocate on disk (as the reference's file pool: st_blocks * 512 of every
 * entry, so a sparse file counts only what was written), measured in the
 * background and cached (src/qubesd/volume-usage.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Runtime } from '../../src/runtime/types.js';
import { allocatedBytes } from '../../src/qubesd/volume-usage.js';
import { startTestQubesd, call, ok } from './helpers.js';

/** `du -s -x -B1`: allocated bytes of the tree (no hard links here, so the same sum). */
const du = (p: string): number => Number(execFileSync('du', ['-s', '-x', '-B1', p], { encoding: 'utf8' }).split('\t')[0]);

function fill(dir: string, kib: number): void {
  fs.mkdirSync(path.join(dir, 'home', 'user'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'home', 'user', `data-${kib}`), Buffer.alloc(kib * 1024, 7));
}

test('allocatedBytes: the tree as du counts it; a sparse file counts what was written; symlinks are not followed', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vol-usage-'));
  try {
    const outside = path.join(dir, 'outside');
    fs.writeFileSync(outside, Buffer.alloc(512 * 1024, 1));
    const vol = path.join(dir, 'vol');
    fill(vol, 100);
    const sparse = path.join(vol, 'sparse.img');
    const fd = fs.openSync(sparse, 'w');
    fs.ftruncateSync(fd, 64 * 1024 * 1024);
    fs.writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 1024 * 1024);
    fs.closeSync(fd);
    fs.symlinkSync(outside, path.join(vol, 'link'));
    const got = await allocatedBytes(vol);
    assert.equal(got, du(vol));
    assert.ok(got >= 100 * 1024 && got < 1024 * 1024, `${got}: the sparse file's 64 MiB and the link's target are not counted`);
    assert.equal(await allocatedBytes(path.join(dir, 'missing')), 0);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('admin.vm.volume.Info: usage of the runtime\'s volume directories, cached, re-measured after a shutdown', async () => {
  const vols = fs.mkdtempSync(path.join(os.tmpdir(), 'vol-dirs-'));
  const runtime: Runtime = {
    name: 'test',
    start: () => {
      throw new Error('not in this test');
    },
    close: async () => undefined,
    volumeDirs: (name, klass) => ({ private: [path.join(vols, name, 'private')], ...(klass === 'TemplateVM' ? { root: [path.join(vols, name, 'root')] } : {}) }),
  };
  fill(path.join(vols, 'work', 'private'), 200);
  fill(path.join(vols, 'fedora', 'root'), 300);
  const t = await startTestQubesd({ runtime });
  try {
    await ok(t, 'admin.vm.Create.TemplateVM', 'dom0', '', 'name=fedora label=black');
    await ok(t, 'admin.vm.Create.AppVM', 'dom0', 'fedora', 'name=work label=red');
    const usage = async (q: string, vol: string): Promise<number> => {
      const r = await call(t, 'admin.vm.volume.Info', q, vol);
      assert.match(r, /^0\0pool=/);
      return Number(/\nusage=(\d+)\n/.exec(r)?.[1]);
    };
    // the first ask queues the walk (created qubes had none yet); the answer never waits for it
    await usage('work', 'private');
    await t.qd.volumes?.idle();
    const privWork = du(path.join(vols, 'work', 'private'));
    assert.equal(await usage('work', 'private'), privWork);
    assert.equal(await usage('work', 'root'), 0, 'an AppVM\'s root has nothing on the disk');
    await usage('fedora', 'root');
    await t.qd.volumes?.idle();
    assert.equal(await usage('fedora', 'root'), du(path.join(vols, 'fedora', 'root')));
    const info = await call(t, 'admin.vm.volume.Info', 'work', 'private');
    assert.match(info, new RegExp(`\nsize=${2 * 1024 ** 3}\nusage=${privWork}\nrw=True\n`));
    // more written: the cached figure stays until the qube shuts down (or the entry ages)
    fill(path.join(vols, 'work', 'private'), 400);
    assert.equal(await usage('work', 'private'), privWork);
    const work = t.qd.registry.byName('work');
    assert.ok(work);
    t.qd.registry.fire(work, 'domain-shutdown', [['exit_code', '0']]);
    await t.qd.volumes?.idle();
    const after = await usage('work', 'private');
    assert.equal(after, du(path.join(vols, 'work', 'private')));
    assert.ok(after >= privWork + 400 * 1024);
  } finally {
    await t.close();
    fs.rmSync(vols, { recursive: true, force: true });
  }
});
