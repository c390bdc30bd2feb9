/**
 * Group commit and group fsync (src/qubesd/store.ts, synchronous 'GROUP'):
 * the writes made while an fdatasync of the WAL runs share one SQLite
 * commit and the next fdatasync, and a reply waits until its change is
 * committed and on disk. (Its kill -9 guarantee is
 * test/qubesd/durability.test.ts, which runs bin/qubesd in this mode.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Database from 'better-sqlite3';
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

const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

/** The qubes committed in the file, as another connection sees them. */
function committed(file: string): string[] {
  const db = new Database(file, { readonly: true });
  try {
    return (db.prepare('SELECT name FROM qubes ORDER BY name').all() as { name: string }[]).map((x) => x.name);
  } finally {
    db.close();
  }
}

test('GROUP: the writes made while an fdatasync runs share one commit, made when it ends; a failed one is undone alone', async () => {
  const dir = tmp();
  const file = path.join(dir, 'qubes.db');
  const store = new SqliteStore(file, { synchronous: 'GROUP' });
  const r = new Registry(store);
  await r.durable();
  assert.equal(r.durable(), r.durable(), 'nothing written since: the same settled promise');
  r.write(() => r.createQube('TemplateVM', 'tpl', 'black', { creator: 'dom0' }));
  assert.deepEqual(committed(file), ['dom0', 'tpl'], 'no fdatasync running: committed at once');
  const first = r.durable();
  r.write(() => r.setProperty(null, 'default_template', 'tpl'));
  assert.throws(
    () =>
      r.write(() => {
        r.createQube('AppVM', 'half', 'red', { creator: 'dom0' });
        throw new Error('boom');
      }),
    /boom/,
  );
  r.write(() => r.createQube('AppVM', 'a', 'red', { creator: 'dom0' }));
  assert.equal(r.byName('half'), undefined, 'the failed write is undone in the model');
  assert.ok(r.byName('a'), 'the others are not');
  const second = r.durable();
  assert.notEqual(second, first, 'a write made during an fdatasync waits for the next');
  assert.deepEqual(committed(file), ['dom0', 'tpl'], 'nothing more is committed while the fdatasync runs');
  await first;
  assert.deepEqual(committed(file), ['a', 'dom0', 'tpl'], 'one commit when it ended, without the failed write');
  await second;
  store.close();
  const again = new Registry(new SqliteStore(file));
  assert.equal(again.getGlobal('default_template'), 'tpl');
  assert.equal(again.byName('half'), undefined);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('GROUP: commits made while an fdatasync runs share the next one', async () => {
  const dir = tmp();
  const file = path.join(dir, 'qubes.db');
  const store = new SqliteStore(file, { synchronous: 'GROUP' });
  const r = new Registry(store);
  await r.durable();
  const before = store.fdatasyncs;
  const waits: Promise<void>[] = [];
  // one write per turn, each turn a commit of its own, all waited for together
  for (let i = 0; i < 40; i++) {
    r.write(() => r.createQube('StandaloneVM', `q${i}`, 'red', { creator: 'dom0' }));
    waits.push(r.durable());
    await turn();
  }
  await Promise.all(waits);
  const syncs = store.fdatasyncs - before;
  assert.ok(syncs >= 1 && syncs < 40, `40 commits took ${syncs} fdatasyncs`);
  assert.equal(committed(file).length, 41);
  assert.equal(r.durable(), r.durable(), 'all on disk: nothing to wait for');
  store.close();
  const again = new Registry(new SqliteStore(file));
  assert.ok(again.byName('q0') && again.byName('q39'));
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
