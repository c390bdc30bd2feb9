import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PolicySyntaxError } from '../../src/policy/index.js';
import { policyOf } from './helpers.js';

/** [policy line, expected error detail (line 2 of a.policy), or null if valid] */
const TABLE: Array<[string, string | null]> = [
  ['qubes.Filecopy * @anyvm @anyvm ask', null],
  ['qubes.Filecopy\t+\twork\tvault\tallow', null],
  ['qubes.Filecopy +arg @tag:x @type:AppVM deny notify=no', null],
  ['* * @anyvm @dispvm:@tag:dvm allow autostart=no notify=yes user=root', null],
  ['* * @anyvm @default ask target=vault default_target=vault user=', null],
  ['* * @anyvm @default allow target=@dispvm', null],
  ['q.S * work vault', 'wrong number of fields'],
  ['q.S', 'wrong number of fields'],
  ['q.S * work vault permit', 'invalid action: permit'],
  ['q.S * work vault Allow', 'invalid action: Allow'],
  ['q+S * work vault allow', "service 'q+S' contains invalid characters: ('+',)"],
  ['q/S * work vault allow', "service 'q/S' contains invalid characters: ('/',)"],
  ['q.S arg work vault allow', "argument 'arg' does not start with +"],
  ['q.S +a/b work vault allow', "argument '+a/b' contains invalid characters: ('/',)"],
  ['* +arg work vault allow', 'only * argument allowed for * service'],
  ['q.S * @default vault allow', "invalid source token: '@default'"],
  ['q.S * work @tag: allow', "invalid empty @tag: token: '@tag:'"],
  ['q.S * work vault allow target=@anyvm', "invalid redirect token: '@anyvm'"],
  ['q.S * work vault allow target=', 'invalid empty redirect token'],
  ['q.S * work vault ask default_target=@tag:x', "invalid redirect token: '@tag:x'"],
  ['q.S * work vault allow notify', "invalid action parameter syntax: 'notify'"],
  ['q.S * work vault allow notify=yes notify=no', "parameter given twice: 'notify'"],
  ['q.S * work vault allow notify=maybe', "'notify' is 'maybe', but can be only 'yes' or 'no'"],
  ['q.S * work vault deny autostart=1', "'autostart' is '1', but can be only 'yes' or 'no'"],
  ['q.S * work vault deny target=vault', "invalid parameters for action Deny: ['target=vault']"],
  ['q.S * work vault allow default_target=vault', "invalid parameters for action Allow: ['default_target=vault']"],
  ['q.S * work vault ask color=red', "invalid parameters for action Ask: ['color=red']"],
  ['q.S * work @default allow', 'allow action for @default rule must specify target= option'],
  ['!include', 'invalid number of params'],
  ['!include a b', 'invalid number of params'],
  ['!include-dir', 'invalid number of params'],
  ['!include-service q.S *', 'invalid number of params'],
  ['!compat-4.0 now', 'invalid number of params'],
  ['!include-everything x', 'invalid directive'],
  ['!include missing', 'not a file: /p/missing'],
  ['!include-dir missing', 'not a directory: /p/missing'],
  ['!include-service q+S * x', "service 'q+S' contains invalid characters: ('+',)"],
  ['q.S * work vault allow # comment', "invalid action parameter syntax: '#'"],
];

for (const [line, want] of TABLE) {
  test(`rule ${JSON.stringify(line)} → ${want ?? 'valid'}`, () => {
    const files = { 'a.policy': `# first line\n${line}\n` };
    if (want === null) {
      assert.equal(policyOf(files).rules.length, 1);
      return;
    }
    assert.throws(
      () => policyOf(files),
      (e: unknown) => {
        assert.ok(e instanceof PolicySyntaxError, String(e));
        assert.equal(e.message, `/p/a.policy:2: ${want}`);
        assert.equal(e.line, 2);
        return true;
      },
    );
  });
}

test('an error in a file sorted after valid ones still fails the whole load', () => {
  assert.throws(
    () => policyOf({ '10-a.policy': 'q.S * @anyvm @anyvm allow\n', '90-z.policy': '\n\nq.S * work vault allow target=@anyvm\n' }),
    (e: unknown) => e instanceof PolicySyntaxError && e.file === '/p/90-z.policy' && e.line === 3,
  );
});

test('invalid policy file names fail the load; ignored names do not', () => {
  assert.throws(
    () => policyOf({ 'Upper.policy': '* * @anyvm @anyvm allow\n' }),
    (e: unknown) => e instanceof PolicySyntaxError && e.file === '/p/Upper.policy' && e.line === null,
  );
  const p = policyOf({ 'README': 'garbage', '.hidden.policy': 'garbage', 'x.policy.rpmsave': 'garbage', 'ok.policy': '' });
  assert.equal(p.rules.length, 0);
});

test('comments, blank lines, whitespace kinds and line ends', () => {
  const text = '  # indented comment\r\n\r\nq.A\t*\x0b@anyvm\x0c@anyvm\x1fallow\rq.B * @anyvm @anyvm deny\n   \nq.C * @anyvm @anyvm ask';
  const p = policyOf({ 'a.policy': text });
  assert.deepEqual(
    p.rules.map((r) => [r.service, r.line]),
    [['q.A', 3], ['q.B', 4], ['q.C', 6]],
  );
});
