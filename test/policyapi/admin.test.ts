// The Policy API's services, exactly as the reference answers (qrexec/policy/admin.py,
// qrexec/tests/policy/admin.py): replies, tokens, file names, validation, errors.
import { test, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { PolicyAdmin, type PolicyChange } from '../../src/policyapi/admin.js';

let dir: string;
let admin: PolicyAdmin;
let changes: PolicyChange[];
const sha = (s: string): string => 'sha256:' + createHash('sha256').update(s).digest('hex');

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'policyapi-'));
  fs.mkdirSync(path.join(dir, 'include'));
  changes = [];
  admin = new PolicyAdmin({ dir, onChange: (c) => changes.push(c) });
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const call = (service: string, arg = '', payload: string | Buffer = ''): { code: number; out: string; err: string } => {
  const r = admin.handle(service, arg, Buffer.isBuffer(payload) ? payload : Buffer.from(payload), 'mgmt');
  return { code: r.code, out: r.stdout.toString(), err: r.stderr };
};
const write = (rel: string, text: string): void => fs.writeFileSync(path.join(dir, rel), text);
const ok = (out = ''): { code: number; out: string; err: string } => ({ code: 0, out, err: '' });
const fail = (err: string): { code: number; out: string; err: string } => ({ code: 1, out: '', err });

void test('List / include.List: sorted names, .policy stripped, only regular files', () => {
  write('b.policy', '');
  write('a.policy', '');
  write('c.txt', '');
  fs.mkdirSync(path.join(dir, 'd.policy'));
  write('include/inc2', '');
  write('include/inc1', '');
  assert.deepEqual(call('policy.List'), ok('a\nb\n'));
  assert.deepEqual(call('policy.include.List'), ok('inc1\ninc2\n'));
  assert.deepEqual(call('policy.List', 'x'), fail('PolicyAdminProtocolException Unexpected argument'));
  assert.deepEqual(call('policy.List', '', 'x'), fail('PolicyAdminProtocolException Unexpected payload'));
});

void test('Get: token line then content; missing file; bad names', () => {
  write('file1.policy', '* * work vault allow\n');
  assert.deepEqual(call('policy.Get', 'file1'), ok(`${sha('* * work vault allow\n')}\n* * work vault allow\n`));
  write('include/inc', 'work vault allow\n');
  assert.deepEqual(call('policy.include.Get', 'inc'), ok(`${sha('work vault allow\n')}\nwork vault allow\n`));
  assert.deepEqual(call('policy.Get', 'nope'), fail(`PolicyAdminFileNotFoundException Not found: ${fs.realpathSync(dir)}/nope.policy`));
  assert.deepEqual(
    call('policy.Get', 'a.b'),
    fail('PolicyAdminInvalidFileNameException Invalid policy file name: a.b\nNames must contain only alphanumeric characters, underscore and hyphen.'),
  );
  assert.deepEqual(
    call('policy.Get', 'a/b'),
    fail('PolicyAdminProtocolException Invalid argument: "a/b"\nValid characters are letters, numbers, dot, plus, hyphen and underline'),
  );
  assert.deepEqual(call('policy.Get', 'file1', 'x'), fail('PolicyAdminProtocolException Unexpected payload'));
  assert.deepEqual(call('policy.Nope'), fail('PolicyAdminProtocolException unrecognized method: policy.Nope'));
});

void test('Get: a symlink leading out of the directory is refused', () => {
  const outside = fs.mkdtempSync(path.join(os.tmpdir(), 'policyapi-out-'));
  fs.writeFileSync(path.join(outside, 'x.policy'), 'secret');
  fs.symlinkSync(path.join(outside, 'x.policy'), path.join(dir, 'link.policy'));
  assert.deepEqual(call('policy.Get', 'link'), fail(`PolicyAdminInvalidFilePathException Expecting a path inside ${fs.realpathSync(dir)}`));
  fs.rmSync(outside, { recursive: true });
});

void test('Replace: tokens any/new/sha256, mismatches, payload without token', () => {
  assert.deepEqual(call('policy.Replace', 'f', 'no newline'), fail('PolicyAdminProtocolException Payload needs to include first line with token'));
  assert.deepEqual(call('policy.Replace', 'f', 'bogus\n'), fail('PolicyAdminProtocolException Unrecognized token'));
  assert.deepEqual(call('policy.Replace', 'f', `${sha('')}\n`), fail("PolicyAdminTokenException File doesn't exist, but token isn't 'new'"));
  assert.deepEqual(call('policy.Replace', 'f', 'new\n* * work vault allow\n'), ok());
  assert.equal(fs.readFileSync(path.join(dir, 'f.policy'), 'utf8'), '* * work vault allow\n');
  assert.equal((fs.statSync(path.join(dir, 'f.policy')).mode & 0o777).toString(8), '664');
  assert.deepEqual(call('policy.Replace', 'f', 'new\nx'), fail("PolicyAdminTokenException File exists but token is 'new'"));
  assert.deepEqual(call('policy.Replace', 'f', `${sha('other')}\n`), fail('PolicyAdminTokenException Token mismatch'));
  assert.deepEqual(call('policy.Replace', 'f', `${sha('* * work vault allow\n')}\n* * work vault deny\n`), ok());
  assert.deepEqual(call('policy.Replace', 'f', 'any\n* * work vault ask\n'), ok());
  assert.equal(fs.readFileSync(path.join(dir, 'f.policy'), 'utf8'), '* * work vault ask\n');
  assert.deepEqual(
    changes.map((c) => [c.caller, c.name, c.oldToken, c.newToken]),
    [
      ['mgmt', 'f', null, sha('* * work vault allow\n')],
      ['mgmt', 'f', sha('* * work vault allow\n'), sha('* * work vault deny\n')],
      ['mgmt', 'f', sha('* * work vault deny\n'), sha('* * work vault ask\n')],
    ],
  );
  assert.deepEqual(fs.readdirSync(dir).sort(), ['f.policy', 'include']);
});

void test('Replace: a change that would not load is refused with file:line and nothing is written', () => {
  write('10-a.policy', '* * work vault allow\n');
  const before = fs.readFileSync(path.join(dir, '10-a.policy'));
  const r = call('policy.Replace', '10-a', 'any\n* * work vault allow\nbad line\n');
  assert.equal(r.code, 1);
  assert.equal(r.err, `PolicyAdminSyntaxException Policy change validation failed: ${fs.realpathSync(dir)}/10-a.policy:2: wrong number of fields`);
  assert.deepEqual(fs.readFileSync(path.join(dir, '10-a.policy')), before);
  // including a file that does not exist
  const inc = call('policy.Replace', '20-b', 'new\n!include include/missing\n');
  assert.equal(inc.code, 1);
  assert.match(inc.err, /^PolicyAdminSyntaxException Policy change validation failed: .*20-b\.policy:1: /);
  assert.equal(fs.existsSync(path.join(dir, '20-b.policy')), false);
  // include-service file in the wrong syntax
  write('include/svc', 'work vault allow\n');
  assert.deepEqual(call('policy.Replace', '30-c', 'new\n!include-service qubes.X * include/svc\n'), ok());
  const wrong = call('policy.include.Replace', 'svc', 'any\n* * work vault allow\n');
  assert.equal(wrong.code, 1);
  assert.match(wrong.err, /^PolicyAdminSyntaxException Policy change validation failed: .*include\/svc:1: /);
  assert.equal(changes.length, 1);
});

void test('Remove: tokens, missing file, a still-included file', () => {
  assert.deepEqual(call('policy.Remove', 'f', 'any'), fail(`PolicyAdminFileNotFoundException Not found: ${fs.realpathSync(dir)}/f.policy`));
  assert.deepEqual(call('policy.Remove', 'f', sha('x')), fail("PolicyAdminTokenException File doesn't exist, but token isn't 'new'"));
  write('f.policy', 'a b c\n'.replace('a b c', '* * work vault allow'));
  assert.deepEqual(call('policy.Remove', 'f', sha('x')), fail('PolicyAdminTokenException Token mismatch'));
  assert.deepEqual(call('policy.Remove', 'f', 'new'), fail("PolicyAdminTokenException File exists but token is 'new'"));
  assert.deepEqual(call('policy.Remove', 'f', sha('* * work vault allow\n')), ok());
  assert.equal(fs.existsSync(path.join(dir, 'f.policy')), false);
  write('include/inc', '* * work vault allow\n');
  write('10-x.policy', '!include include/inc\n');
  const r = call('policy.include.Remove', 'inc', 'any');
  assert.equal(r.code, 1);
  assert.match(r.err, /^PolicyAdminSyntaxException Policy change validation failed: .*10-x\.policy:1: .*including a file that will be removed/);
  assert.equal(fs.existsSync(path.join(dir, 'include/inc')), true);
});

void test('GetFiles: files mentioning the service (or *), in load order, unique', () => {
  write('10-a.policy', 'qubes.A * work vault allow\n* * work vault deny\n');
  write('20-b.policy', 'qubes.B * work vault allow\n!include include/i\n');
  write('include/i', 'qubes.A +x work vault allow\n');
  assert.deepEqual(call('policy.GetFiles', 'qubes.A'), ok('10-a\ni\n'));
  assert.deepEqual(call('policy.GetFiles', 'qubes.B'), ok('10-a\n20-b\n'));
  assert.deepEqual(call('policy.GetFiles'), fail('PolicyAdminProtocolException Service cannot be empty.'));
  assert.deepEqual(call('policy.GetFiles', 'a+b'), fail("PolicyAdminProtocolException Service 'a+b' contains invalid characters: ('+',)"));
});

void test('internal errors: exit 2 with the reference text, details only in the log', () => {
  fs.rmSync(path.join(dir, 'include'), { recursive: true });
  const r = call('policy.include.List');
  assert.equal(r.code, 2);
  assert.equal(r.err, "Internal error. See 'the qrexec-host log' in dom0 for details.");
});
