/**
 * The vendored conformance corpus unpacks completely, and the reader refuses
 * what it must not unpack.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { corpusDir, untar } from './corpus.js';

function walk(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? walk(p) : [p];
  });
}

test('the corpus unpacks: 420 cases, 275 daemon vectors, the contract and compare.py', () => {
  const dir = corpusDir();
  assert.equal(corpusDir(), dir, 'unpacked once per process');
  const files = walk(dir);
  assert.equal(files.length, 4894);
  const cases = fs.readdirSync(dir).filter((c) => c.startsWith('case-'));
  assert.equal(cases.length, 420);
  assert.equal(files.filter((f) => f.endsWith('/daemon-expected.jsonl')).length, 275);
  assert.match(fs.readFileSync(path.join(dir, 'README.md'), 'utf8'), /qrexec policy oracle: I\/O contract/);
  assert.ok(fs.statSync(path.join(dir, 'compare.py')).mode & 0o100, 'compare.py stays executable');
  for (const c of cases) assert.ok(fs.existsSync(path.join(dir, c, 'expected.jsonl')), c);
});

function header(name: string, size: number, type: string): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0);
  h.write('0000644\0', 100);
  h.write(size.toString(8).padStart(11, '0') + '\0', 124);
  h.write(type, 156);
  h.write('ustar\0', 257);
  return h;
}

test('the tar reader refuses paths outside its directory and unknown entry types', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'untar-'));
  try {
    const body = Buffer.alloc(512);
    body.write('x');
    assert.throws(() => untar(Buffer.concat([header('../evil', 1, '0'), body, Buffer.alloc(1024)]), tmp), /outside the archive/);
    assert.throws(() => untar(Buffer.concat([header('link', 0, '2'), Buffer.alloc(1024)]), tmp), /unsupported entry type/);
    assert.throws(() => untar(Buffer.concat([header('short', 600, '0'), body]), tmp), /truncated/);
    assert.equal(untar(Buffer.concat([header('ok/a', 1, '0'), body, Buffer.alloc(1024)]), tmp), 1);
    assert.equal(fs.readFileSync(path.join(tmp, 'ok/a'), 'utf8'), 'x');
    assert.ok(!fs.existsSync(path.join(path.dirname(tmp), 'evil')));
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
