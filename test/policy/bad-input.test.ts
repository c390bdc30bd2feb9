/**
 * Hostile or broken policy files on a real disk: each must give a clear
 * error with file and line (or load cleanly where the reference does),
 * never a crash, never a partial policy.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadRules, memorySource, PolicyIoError, PolicySyntaxError, type PolicySource } from '../../src/policy/index.js';
import { diskSource, loadPolicyFromDisk } from '../../src/policy-files/disk.js';

let root: string;
let n = 0;
function dir(files: Record<string, string | Buffer>): string {
  const d = path.join(root, `p${n++}`);
  fs.mkdirSync(d);
  for (const [name, content] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(d, name)), { recursive: true });
    fs.writeFileSync(path.join(d, name), content);
  }
  return d;
}
function loadErr(d: string): PolicySyntaxError {
  try {
    loadPolicyFromDisk({ policyDirs: [d], legacyDir: path.join(d, 'legacy') });
  } catch (e) {
    assert.ok(e instanceof PolicySyntaxError, `not a PolicySyntaxError: ${String(e)}`);
    return e;
  }
  assert.fail('policy loaded but should not');
}

before(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'policy-bad-'));
});
after(() => fs.rmSync(root, { recursive: true, force: true }));

test('missing include target: error at the !include line', () => {
  const e = loadErr(dir({ 'a.policy': '\n!include include/nope\n' }));
  assert.equal(path.basename(e.file), 'a.policy');
  assert.equal(e.line, 2);
  assert.match(e.detail, /^not a file: .*include\/nope$/);
});

test('self-include and include cycles are errors, not stack overflows', () => {
  const self = loadErr(dir({ 'a.policy': '!include a.policy\n' }));
  assert.equal(self.line, 1);
  assert.match(self.detail, /include loop/);
  const cyc = loadErr(dir({ 'a.policy': '!include include/x\n', 'include/x': '\n!include include/y\n', 'include/y': '!include include/x\n' }));
  assert.equal(path.basename(cyc.file), 'y');
  assert.equal(cyc.line, 1);
  const svc = loadErr(dir({ 'a.policy': '!include-service q.S * include/x\n', 'include/x': '$include:include/x\n' }));
  assert.match(svc.detail, /include loop/);
});

test('the same file included twice is fine', () => {
  const d = dir({ 'a.policy': '!include include/x\n!include include/x\n', 'include/x': 'q.S * @anyvm @anyvm deny\n' });
  assert.equal(loadPolicyFromDisk({ policyDirs: [d] }).rules.length, 2);
});

test('symlink loop in !include-dir', () => {
  const d = dir({ 'a.policy': '!include-dir include/loop\n' });
  fs.mkdirSync(path.join(d, 'include'));
  fs.symlinkSync('loop2', path.join(d, 'include/loop'));
  fs.symlinkSync('loop', path.join(d, 'include/loop2'));
  const e = loadErr(d);
  assert.equal(e.line, 1);
  assert.equal(path.basename(e.file), 'a.policy');
});

test('a directory that includes itself through !include-dir', () => {
  const d = dir({ 'a.policy': '!include-dir include\n', 'include/b.policy': '!include-dir include\n' });
  assert.match(loadErr(d).detail, /include loop/);
});

test('1 MB line: a syntax error with its line number, quickly', () => {
  const long = 'q.S * @anyvm @anyvm allow ' + 'x'.repeat(1024 * 1024);
  const e = loadErr(dir({ 'a.policy': `q.S * @anyvm @anyvm deny\n${long}\n` }));
  assert.equal(e.line, 2);
  assert.match(e.detail, /invalid action parameter syntax/);
  // and a valid 1 MB line loads
  const ok = 'q.S * @anyvm ' + 'v'.repeat(1024 * 1024) + ' deny';
  assert.equal(loadPolicyFromDisk({ policyDirs: [dir({ 'a.policy': ok })] }).rules.length, 1);
});

test('NUL bytes: in a service name an error, in a qube name just a name', () => {
  const e = loadErr(dir({ 'a.policy': 'q.\0S * @anyvm @anyvm allow\n' }));
  assert.equal(e.line, 1);
  assert.match(e.detail, /contains invalid characters/);
  const p = loadPolicyFromDisk({ policyDirs: [dir({ 'a.policy': 'q.S * wo\0rk @anyvm allow\n' })] });
  assert.equal(p.rules[0]?.source.text, 'wo\0rk');
});

test('invalid UTF-8: error at the line with the bad byte', () => {
  const bytes = Buffer.concat([Buffer.from('q.S * @anyvm @anyvm deny\n# ok\nq.S * w'), Buffer.from([0xff, 0xfe]), Buffer.from(' @anyvm deny\n')]);
  const e = loadErr(dir({ 'a.policy': bytes }));
  assert.equal(e.line, 3);
  assert.equal(e.detail, 'invalid UTF-8');
});

test('CRLF and lone CR line ends count lines like the reference', () => {
  const e = loadErr(dir({ 'a.policy': 'q.S * @anyvm @anyvm deny\r\n\r\nbad line\r' }));
  assert.equal(e.line, 3);
});

test('unreadable files: an error naming the file, nothing loaded', () => {
  const files = new Map([['/p/a.policy', 'q.S * @anyvm @anyvm deny\n'], ['/p/b.policy', 'x']]);
  const mem = memorySource(files);
  const src: PolicySource = {
    ...mem,
    readFile(p) {
      if (p.endsWith('b.policy')) throw new PolicyIoError(p, '[Errno 13] EACCES permission denied');
      return mem.readFile(p);
    },
  };
  assert.throws(
    () => loadRules(src, { policyDirs: ['/p'], legacyDir: '/l' }),
    (e: unknown) => e instanceof PolicySyntaxError && e.file === '/p/b.policy' && /EACCES/.test(e.detail),
  );
});

test('a missing policy directory is an error, not an empty policy', () => {
  assert.throws(() => loadRules(diskSource, { policyDirs: [path.join(root, 'nope')], legacyDir: '/l' }), PolicySyntaxError);
});

test('!compat-4.0 with a missing legacy directory is an error at the directive', () => {
  const e = loadErr(dir({ 'a.policy': '\n\n!compat-4.0\n' }));
  assert.equal(e.line, 3);
});

test('100,000-file directory loads (ignored and valid files)', () => {
  const d = path.join(root, 'big');
  fs.mkdirSync(d);
  for (let i = 0; i < 100_000; i++) {
    fs.writeFileSync(path.join(d, i % 2 ? `f${i}.policy` : `f${i}.txt`), i % 2 ? `q.S${i} * @anyvm @anyvm deny\n` : 'garbage');
  }
  const p = loadPolicyFromDisk({ policyDirs: [d] });
  assert.equal(p.rules.length, 50_000);
  assert.equal(p.rules[0]?.service, 'q.S1');
});
