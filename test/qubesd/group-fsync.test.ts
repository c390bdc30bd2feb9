/**
 * Group fsync (src/qubesd/store.ts, synchronous 'GROUP'): the Sets that
 * arrive while an fdatasync of the WAL runs share the next one, and a reply
 * waits until its change is on disk. (Its kill -9 guarantee is
 * test/qubesd/durability.test.ts, which runs bin/qubesd in this mode.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ADMIN_METHODS, dispatch, Registry, SqliteStore, type ApiContext, type PowerControl } from '../../src/qubesd/index.js';

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'qubesd-group-'));
}

const settled = async (p: Promise<unknown>): Promise<boolean> => {
  let done = false;
  void p.then(
    () => (done = true),
    () => (done = true),
  );
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  return done;
};

test('GROUP: commits made while an fdatasync runs share the next one; nothing new to sync resolves at once', async () => {
  const dir = tmp();
  const store = new SqliteStore(path.join(dir, 'qubes.db'), { synchronous: 'GROUP' });
  const r = new Registry(store);
  await r.durable();
  assert.equal(r.durable(), r.durable(), 'nothing committed since: the same settled promise');
  r.write(() => r.createQube('TemplateVM', 'tpl', 'black', { creator: 'dom0' }));
  const first = r.durable();
  assert.equal(r.durable(), first, 'no commit since: the running fdatasync covers it');
  r.write(() => r.setProperty(null, 'default_template', 'tpl'));
  const second = r.durable();
  assert.notEqual(second, first, 'a commit after the fdatasync started waits for the next');
  r.write(() => r.createQube('AppVM', 'a', 'red', { creator: 'dom0' }));
  r.write(() => r.createQube('AppVM', 'b', 'red', { creator: 'dom0' }));
  assert.equal(r.durable(), second, 'every commit made meanwhile shares that next fdatasync');
  await second;
  assert.equal(await settled(first), true);
  store.close();
  const again = new Registry(new SqliteStore(path.join(dir, 'qubes.db')));
  assert.ok(again.byName('a') && again.byName('b'));
  fs.rmSync(dir, { recursive: true, force: true });
});

test('FULL: durable at commit, nothing to wait for', async () => {
  const dir = tmp();
  const store = new SqliteStore(path.join(dir, 'qubes.db'));
  const r = new Registry(store);
  r.write(() => r.createQube('TemplateVM', 'tpl', 'black', { creator: 'dom0' }));
  assert.equal(await settled(r.durable()), true);
  store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('an Admin API reply waits until the change is on disk; a failed fdatasync sends no reply', async () => {
  const dir = tmp();
  const store = new SqliteStore(path.join(dir, 'qubes.db'), { synchronous: 'GROUP' });
  // the test decides when the disk has it
  let release: (ok: boolean) => void = () => undefined;
  const real = store.sync.bind(store);
  store.sync = () =>
    new Promise<void>((resolve, reject) => {
      release = (ok) => (ok ? real().then(resolve, reject) : reject(new Error('EIO')));
    });
  const registry = new Registry(store);
  const ctx: ApiContext = { registry, power: {} as PowerControl };
  const call = (method: string, dest: string, arg: string, payload = ''): ReturnType<typeof dispatch> =>
    dispatch(ctx, ADMIN_METHODS, { method, arg, src: Buffer.from('dom0'), dest: Buffer.from(dest), payload: Buffer.from(payload) }, () => undefined, new Promise(() => undefined));
  const created = call('admin.vm.Create.StandaloneVM', 'dom0', '', 'name=sa label=red');
  assert.equal(await settled(created), false, 'replied before the change was on disk');
  release(true);
  assert.deepEqual(await created, { ok: null });
  const set = call('admin.vm.property.Set', 'sa', 'vcpus', '3');
  assert.equal(await settled(set), false);
  release(false);
  assert.deepEqual(await set, { abort: true }, 'a change whose fdatasync failed is not acknowledged');
  store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});
