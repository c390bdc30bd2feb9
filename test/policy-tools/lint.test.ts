/** qubes-policy-lint: line-by-line checks, messages as the reference prints them. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import fc from 'fast-check';
import {
  formatDiagnostic,
  includePathProblem,
  lintPolicyText,
  loadRulesFromFiles,
  PolicySyntaxError,
} from '../../src/policy/index.js';

const BIN = path.resolve(import.meta.dirname, '../../../bin/qubes-policy-lint');

function lint(text: string, includeService = false): string[] {
  return lintPolicyText(text, 'f.policy', { includeService }).map((d) => formatDiagnostic(d));
}

const INVALID_PATH = (p: string): string =>
  `invalid path ${p}, only paths inside the directories /etc/qubes/policy.d and /etc/qubes/policy.d/include are considered`;

test('a valid policy has no diagnostics', () => {
  const text = [
    '# comment',
    '',
    'qubes.Filecopy * @anyvm @anyvm ask',
    'qubes.Gpg * @tag:work vault allow notify=yes',
    'qubes.OpenURL * @anyvm @dispvm allow',
    'qubes.VMShell * @anyvm @default allow target=dom0',
    'qubes.GetDate * @anyvm @adminvm allow user=root',
    '!include include/admin-local-ro',
    '!include-service admin.vm.List * include/admin-global-ro',
    '!include-dir anything',
    '* * @anyvm @anyvm deny',
  ].join('\n');
  assert.deepEqual(lint(text), []);
});

test('every problem is reported with its line, in order (table)', () => {
  const cases: Array<[string, string]> = [
    ['qubes.F$o * @anyvm @anyvm allow', "service 'qubes.F$o' contains invalid characters: ('$',)"],
    ['qubes.Foo+bar * @anyvm @anyvm allow', "service 'qubes.Foo+bar' contains invalid characters: ('+',)"],
    ['qubes.Foo bar @anyvm @anyvm allow', "argument 'bar' does not start with +"],
    ['qubes.Foo +b!r @anyvm @anyvm allow', "argument '+b!r' contains invalid characters: ('!',)"],
    ['* +bar @anyvm @anyvm allow', 'only * argument allowed for * service'],
    ['qubes.Foo * @default @anyvm allow', "invalid source token: '@default'"],
    ['qubes.Foo * @anyvm @foo allow', "invalid target token: '@foo'"],
    ['qubes.Foo * @anyvm @tag: allow', "invalid empty @tag: token: '@tag:'"],
    ['qubes.Foo * @anyvm @anyvm permit', 'invalid action: permit'],
    ['qubes.Foo * @anyvm @anyvm allow foo', "invalid action parameter syntax: 'foo'"],
    ['qubes.Foo * @anyvm @anyvm allow notify=maybe', "'notify' is 'maybe', but can be only 'yes' or 'no'"],
    ['qubes.Foo * @anyvm @anyvm deny target=vault', "invalid parameters for action Deny: ['target=vault']"],
    ['qubes.Foo * @anyvm @anyvm allow target=@anyvm', "invalid redirect token: '@anyvm'"],
    ['qubes.Foo * @anyvm @anyvm allow target=a target=b', "parameter given twice: 'target'"],
    ['qubes.Foo * @anyvm @default allow', 'allow action for @default rule must specify target= option'],
    ['qubes.Foo * @anyvm', 'wrong number of fields'],
    ['!include a b', 'invalid number of params'],
    ['!include-service a b', 'invalid number of params'],
    ['!include-dir', 'invalid number of params'],
    ['!compat-4.0 x', 'invalid number of params'],
    ['!foo', 'invalid directive'],
    ['!include /etc/qubes/policy.d/include/x', INVALID_PATH('/etc/qubes/policy.d/include/x')],
    ['!include include/a/b', INVALID_PATH('include/a/b')],
    ['!include-service a +b ../x', INVALID_PATH('../x')],
    ['!include-service a+ +b c', "service 'a+' contains invalid characters: ('+',)"],
  ];
  const text = cases.map(([line]) => line).join('\n') + '\n';
  const expected = cases.map(([, msg], i) => `f.policy:${i + 1}: error: ${msg}`);
  assert.deepEqual(lint(text), expected);
});

test('-s appends the stripped offending line', () => {
  const d = lintPolicyText('  foo bar baz  \n', 'x', {});
  assert.equal(formatDiagnostic(d[0]!, true), 'x:1: error: wrong number of fields: foo bar baz');
});

test('!compat-4.0 gives a warning, not an error', () => {
  const d = lintPolicyText('!compat-4.0\n', 'x', {});
  assert.deepEqual(
    d.map((x) => formatDiagnostic(x)),
    ['x:1: warning: !compat-4.0 directive is transitional and will be deprecated'],
  );
});

test('include-service mode: old syntax, $-tokens, commas, $include:', () => {
  const text = [
    '$anyvm $anyvm allow',
    '@anyvm vault ask,default_target=vault',
    'work @dispvm allow,user=root',
    '!include include/other',
    '$include:include/other',
    '$include:/etc/qubes-rpc/policy/include/x',
    '@anyvm vault',
    '@anyvm vault allow,target=$anyvm',
    '!include-service a b c',
    '!compat-4.0',
    '* * @anyvm @anyvm allow',
  ].join('\n');
  assert.deepEqual(lint(text, true), [
    `f.policy:6: error: ${INVALID_PATH('/etc/qubes-rpc/policy/include/x')}`,
    'f.policy:7: error: wrong number of fields',
    "f.policy:8: error: invalid redirect token: '@anyvm'",
    'f.policy:9: error: invalid directive',
    'f.policy:10: error: invalid directive',
    'f.policy:11: error: invalid action: @anyvm',
  ]);
});

test('line ends: \\n, \\r\\n and lone \\r count as in Python', () => {
  assert.deepEqual(lint('a\r\nb\rc\n'), [
    'f.policy:1: error: wrong number of fields',
    'f.policy:2: error: wrong number of fields',
    'f.policy:3: error: wrong number of fields',
  ]);
});

test('invalid UTF-8 is reported on its line and the rest is still checked', () => {
  const bytes = new Uint8Array([...Buffer.from('ok * @anyvm @anyvm allow\n'), 0xff, 0x0a, ...Buffer.from('x y\n')]);
  assert.deepEqual(
    lintPolicyText(bytes, 'f', {}).map((d) => formatDiagnostic(d)),
    ['f:2: error: invalid UTF-8', 'f:3: error: wrong number of fields'],
  );
});

test('include path rule (table)', () => {
  const ok = ['x', 'include/x', './include/x', 'include//x', 'include/x/'];
  for (const p of ok) assert.equal(includePathProblem(p), null, p);
  assert.equal(includePathProblem('/abs/x'), INVALID_PATH('/abs/x'));
  assert.equal(includePathProblem('a/b'), INVALID_PATH('a/b'));
  assert.equal(includePathProblem('include/./a/b'), INVALID_PATH('include/a/b'));
});

// Property: on files without directives, lint finds an error iff the loader
// refuses the file, and its first error is the loader's error.
const LINES = [
  'q.A * @anyvm @anyvm allow',
  'q.A +x work vault ask default_target=vault',
  'q.B * @tag:t @dispvm allow',
  '* * @anyvm @adminvm deny notify=no',
  '# a comment',
  '',
  'q.A * @anyvm @default allow',
  'q.A * @anyvm',
  'q.A x @anyvm @anyvm allow',
  'q.A * @foo @anyvm allow',
  'q.A * @anyvm @anyvm allow target=@tag:x',
  'q.A * @anyvm @anyvm deny user=x',
  'q+A * @anyvm @anyvm allow',
  'q.A * @anyvm @anyvm ask notify=1',
];

test('property: lint agrees with the loader on the first error', () => {
  fc.assert(
    fc.property(fc.array(fc.constantFrom(...LINES), { maxLength: 15 }), (lines) => {
      const text = lines.join('\n');
      const diags = lintPolicyText(text, '/p/a.policy', {}).filter((d) => d.severity === 'error');
      let loaderError: PolicySyntaxError | null = null;
      try {
        loadRulesFromFiles(new Map([['/p/a.policy', text]]), '/p/a.policy');
      } catch (e) {
        if (!(e instanceof PolicySyntaxError)) throw e;
        loaderError = e;
      }
      if (loaderError === null) {
        assert.deepEqual(diags, []);
      } else {
        assert.ok(diags.length > 0);
        assert.equal(diags[0]!.line, loaderError.line);
        assert.equal(diags[0]!.message, loaderError.detail);
        // and each bad line is reported exactly once
        const bad = lines.flatMap((l, i) => {
          try {
            loadRulesFromFiles(new Map([['/m', l]]), '/m');
            return [];
          } catch {
            return [i + 1];
          }
        });
        assert.deepEqual(diags.map((d) => d.line), bad);
      }
    }),
    { numRuns: 300 },
  );
});

test('CLI: files, stdin, -s, missing file, exit status', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lint-'));
  try {
    const good = path.join(dir, '10-good.policy');
    const bad = path.join(dir, '20-bad.policy');
    fs.writeFileSync(good, 'qubes.Filecopy * @anyvm @anyvm ask\n');
    fs.writeFileSync(bad, 'qubes.Filecopy * @anyvm\nqubes.Gpg * work vault permit\n');
    let r = spawnSync(BIN, [good], { encoding: 'utf8' });
    assert.equal(r.status, 0);
    assert.equal(r.stdout, '');
    r = spawnSync(BIN, ['-s', bad, good, path.join(dir, 'missing'), '-'], {
      encoding: 'utf8',
      input: '!compat-4.0\nx\n',
    });
    assert.equal(r.status, 1);
    assert.equal(
      r.stdout,
      [
        `${bad}:1: error: wrong number of fields: qubes.Filecopy * @anyvm`,
        `${bad}:2: error: invalid action: permit: qubes.Gpg * work vault permit`,
        `${path.join(dir, 'missing')}:0: error: File does not exist.`,
        '-:2: error: wrong number of fields: x',
        '',
      ].join('\n'),
    );
    assert.match(r.stderr, /^-:1: warning: !compat-4\.0 directive is transitional/m);
    r = spawnSync(BIN, [], { encoding: 'utf8' });
    assert.equal(r.status, 2);
    assert.match(r.stderr, /required: FILE/);
    r = spawnSync(BIN, ['--help'], { encoding: 'utf8' });
    assert.equal(r.status, 0);
    assert.match(r.stdout, /^usage: qubes-policy-lint/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
