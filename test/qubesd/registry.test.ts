/** The registry's model and store: reload, migrations, rollback of a failed change. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { Registry, SqliteStore, SCHEMA_VERSION, migrate, QubesValueError } from '../../src/qubesd/index.js';

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'qubesd-reg-'));
}

test('a fresh store holds dom0 and the 8 labels; everything survives a reopen', () => {
  const dir = tmp();
  const file = path.join(dir, 'qubes.db');
  let store = new SqliteStore(file);
  let r = new Registry(store);
  assert.equal(r.dom0.klass, 'AdminVM');
  assert.deepEqual([...r.labels.values()].map((l) => l.name), ['red', 'orange', 'yellow', 'green', 'gray', 'blue', 'purple', 'black']);
  r.write(() => r.createQube('TemplateVM', 'tpl', 'black', { creator: 'dom0' }));
  r.write(() => r.setProperty(null, 'default_template', 'tpl'));
  const w = r.write(() => r.createQube('AppVM', 'work', 'red', { creator: 'dom0' }));
  r.write(() => r.setFeature(w, 'f', 'v'));
  r.write(() => r.setProperty(w, 'vcpus', 4));
  store.close();
  store = new SqliteStore(file);
  r = new Registry(store);
  const w2 = r.byName('work');
  assert.ok(w2);
  assert.equal(w2.uuid, w.uuid);
  assert.equal(w2.get('template'), 'tpl');
  assert.equal(w2.get('vcpus'), 4);
  assert.equal(w2.features.get('f'), 'v');
  assert.ok(w2.tags.has('created-by-dom0'));
  assert.equal(store.version, SCHEMA_VERSION);
  store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('migrations: a version-1 file (no labels table) is brought up to date, its qubes kept', () => {
  const dir = tmp();
  const file = path.join(dir, 'qubes.db');
  const db = new Database(file);
  migrate(db, 1);
  db.prepare('INSERT INTO qubes (qid, name, uuid, klass) VALUES (0, ?, ?, ?)').run('dom0', '00000000-0000-0000-0000-000000000000', 'AdminVM');
  db.prepare('INSERT INTO qubes (qid, name, uuid, klass) VALUES (5, ?, ?, ?)').run('old', '11111111-1111-1111-1111-111111111111', 'StandaloneVM');
  db.prepare('INSERT INTO props (qid, name, value) VALUES (5, ?, ?)').run('label', '"green"');
  assert.equal(db.pragma('user_version', { simple: true }), 1);
  assert.throws(() => db.prepare('SELECT * FROM labels').all());
  db.close();
  const store = new SqliteStore(file);
  assert.equal(store.version, SCHEMA_VERSION);
  const r = new Registry(store);
  assert.equal(r.byName('old')?.get('label'), 'green');
  assert.equal(r.label('green').color, '0x73d216');
  store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a change that fails half-way leaves neither the store nor the model changed', () => {
  const dir = tmp();
  const store = new SqliteStore(path.join(dir, 'qubes.db'));
  const r = new Registry(store);
  const q = r.write(() => r.createQube('StandaloneVM', 'sa', 'red', { creator: 'dom0' }));
  assert.throws(
    () =>
      r.write(() => {
        r.addTag(q, 'first');
        throw new QubesValueError('boom');
      }),
    /boom/,
  );
  assert.equal(r.byName('sa')?.tags.has('first'), false);
  const again = new Registry(store);
  assert.equal(again.byName('sa')?.tags.has('first'), false);
  store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a newer schema than this qubesd knows is refused', () => {
  const dir = tmp();
  const file = path.join(dir, 'qubes.db');
  const db = new Database(file);
  db.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
  db.close();
  assert.throws(() => new SqliteStore(file), /newer than this qubesd/);
  fs.rmSync(dir, { recursive: true, force: true });
});
