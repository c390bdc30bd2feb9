/** Watching policy directories and the system info file: what triggers a reload and what must not. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FileSystemInfo, PolicyStore } from '../../src/policyd/index.js';
import { silentLogger } from '../../src/policyd/log.js';
import { loadPolicyFromDisk } from '../../src/policy-files/disk.js';
import { tmpDirs } from './helpers.js';
import { systemInfo } from './fixture.js';

const newDir = tmpDirs();

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(what: string, cond: () => boolean): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > 10_000) assert.fail(`${what} never happened`);
    await sleep(5);
  }
}

test('a busy file next to the policy directory (an audit log, say) causes no reload; the directory itself does', async () => {
  const dir = newDir();
  const policyDir = path.join(dir, 'policy.d');
  fs.mkdirSync(policyDir);
  fs.writeFileSync(path.join(policyDir, '50-a.policy'), 'test.A * @anyvm @anyvm allow\n');
  let loads = 0;
  const store = new PolicyStore({
    policyDirs: [policyDir],
    log: silentLogger,
    pollMs: 0,
    load: () => {
      loads++;
      return loadPolicyFromDisk({ policyDirs: [policyDir] });
    },
  });
  try {
    store.watch();
    assert.equal(loads, 1);
    const sibling = path.join(dir, 'audit.sqlite-journal.1');
    for (let i = 0; i < 50; i++) {
      fs.appendFileSync(sibling, `line ${i}\n`);
      await sleep(2);
    }
    await sleep(150);
    assert.equal(loads, 1, 'writes next to the policy directory reloaded the policy');

    // A change inside reloads.
    fs.writeFileSync(path.join(policyDir, '50-a.policy'), 'test.A * @anyvm @anyvm deny\n');
    await until('reload after a policy write', () => loads === 2);

    // Moved away and replaced by another directory: the new one is loaded and watched.
    const other = path.join(dir, 'new.d');
    fs.mkdirSync(other);
    fs.writeFileSync(path.join(other, '50-b.policy'), 'test.B * @anyvm @anyvm allow\n');
    fs.renameSync(policyDir, path.join(dir, 'old.d'));
    fs.renameSync(other, policyDir);
    await until('reload after the swap', () => {
      const s = store.current;
      return s.ok && s.policy.rules.some((r) => r.service === 'test.B');
    });
    const before = loads;
    fs.writeFileSync(path.join(policyDir, '50-b.policy'), 'test.B * @anyvm @anyvm deny\n');
    await until('reload after a write in the new directory', () => loads > before);
    // The old directory is no longer watched.
    const settled = loads;
    await sleep(100);
    fs.writeFileSync(path.join(dir, 'old.d', '50-a.policy'), 'test.C * @anyvm @anyvm deny\n');
    await sleep(150);
    assert.equal(loads, settled, 'the moved-away directory is still watched');
  } finally {
    store.close();
  }
});

test('system info file: rewritten in place, replaced by a rename, removed and restored; a busy neighbour is ignored', async () => {
  const dir = newDir();
  const file = path.join(dir, 'system-info.json');
  const withQube = (name: string): string => {
    const info = systemInfo() as { domains: Record<string, unknown> };
    info.domains[name] = { ...(info.domains['personal'] as object), uuid: '99999999-9999-9999-9999-999999999999' };
    return JSON.stringify(info);
  };
  fs.writeFileSync(file, withQube('one'));
  const src = new FileSystemInfo(file, silentLogger);
  const has = (name: string): boolean => {
    try {
      return src.get().domains.has(name);
    } catch {
      return false;
    }
  };
  try {
    src.watch();
    assert.ok(has('one'));
    fs.writeFileSync(file, withQube('two'));
    await until('in-place rewrite seen', () => has('two'));
    fs.writeFileSync(file + '.tmp', withQube('three'));
    fs.renameSync(file + '.tmp', file);
    await until('replacement seen', () => has('three'));
    fs.writeFileSync(file, withQube('four'));
    await until('rewrite of the replacement seen', () => has('four'));
    fs.unlinkSync(file);
    await until('removal seen', () => src.lastError !== null);
    assert.throws(() => src.get());
    fs.writeFileSync(file, withQube('five'));
    await until('re-creation seen', () => has('five'));
    for (let i = 0; i < 20; i++) fs.appendFileSync(path.join(dir, 'audit.sqlite-journal.1'), 'x\n');
    await sleep(50);
    assert.ok(has('five'));
  } finally {
    src.close();
  }
});
