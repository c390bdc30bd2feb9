/** qrexec-policy-explain: decision, matching rule, misses with the failing column, ask trace. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import fc from 'fast-check';
import {
  decide,
  decisionToJson,
  explain,
  explanationToJson,
  formatExplanation,
  loadRules,
  memorySource,
  Policy,
} from '../../src/policy/index.js';
import { INFO } from '../policy/helpers.js';

function load(files: Record<string, string>, legacy: Record<string, string> = {}): Policy {
  const m = new Map<string, string>([['/l/.keep', '']]);
  for (const [k, v] of Object.entries(files)) m.set('/p/' + k, v);
  for (const [k, v] of Object.entries(legacy)) m.set('/l/' + k, v);
  return new Policy(loadRules(memorySource(m), { policyDirs: ['/p'], legacyDir: '/l' }));
}

const POLICY = load({
  '30-user.policy': [
    'q.Gpg * @tag:trusted vault ask default_target=vault', // 1
    'q.Gpg +sign work vault allow', // 2
    'q.Gpg * @type:TemplateVM @anyvm allow', // 3
    'q.Gpg * @anyvm @adminvm allow', // 4
    'q.Other * @anyvm @anyvm allow', // 5
    '* * @adminvm @anyvm allow', // 6
    'q.Gpg * work @dispvm:@tag:nope allow', // 7
    'q.Gpg * work @dispvm:default-dvm allow', // 8
    'q.Gpg * @anyvm @default allow target=vault', // 9
    'q.Gpg * @anyvm @anyvm deny', // 10
  ].join('\n'),
});

test('the matching rule and every earlier rule for the service, with the failing column', () => {
  const x = explain(POLICY, { source: 'personal', intendedTarget: 'work', serviceAndArg: 'q.Gpg+x' }, INFO);
  assert.equal(x.json.result, 'deny');
  assert.equal(x.rule?.line, 10);
  assert.deepEqual(
    x.misses.map((m) => [m.rule.line, m.column, m.why]),
    [
      [1, 'source', "source @tag:trusted: qube 'personal' has no tag 'trusted'"],
      [2, 'argument', "argument +sign: the call's argument is '+x'"],
      [3, 'source', "source @type:TemplateVM: qube 'personal' is of type AppVM"],
      [4, 'target', "target @adminvm: the call is for 'work', not dom0"],
      [6, 'source', "source @adminvm: the caller 'personal' is not dom0"],
      [7, 'source', "source work: the caller is 'personal'"],
      [8, 'source', "source work: the caller is 'personal'"],
      [9, 'target', "target @default: matches only calls that name no target, and the call is for 'work'"],
    ],
  );
  // rule 5 is for another service: not listed
  assert.ok(!x.misses.some((m) => m.rule.line === 5));
});

test('target reasons for disposables and tags (table)', () => {
  const cases: Array<[string, string, string, number, string]> = [
    ['work', '@dispvm', 'q.Gpg', 7, "target @dispvm:@tag:nope: disposable template 'default-dvm' has no tag 'nope'"],
    ['work', '@dispvm:default-dvm', 'q.Gpg', 7, "target @dispvm:@tag:nope: disposable template 'default-dvm' has no tag 'nope'"],
    ['work', 'personal', 'q.Gpg+', 7, "target @dispvm:@tag:nope: matches only disposables, and the call is for 'personal'"],
    ['work', '@dispvm', 'q.Gpg', 4, 'target @adminvm: the call is for a new disposable (@dispvm), not dom0'],
    ['work', '@default', 'q.Gpg', 1, 'target vault: the call is for no particular qube (@default)'],
  ];
  for (const [source, target, svc, line, why] of cases) {
    const x = explain(POLICY, { source, intendedTarget: target, serviceAndArg: svc }, INFO);
    const m = x.misses.find((mm) => mm.rule.line === line);
    assert.equal(m?.why, why, `${source} ${target} ${svc} line ${line}`);
  }
});

test('a rejected request reads no rule', () => {
  const x = explain(POLICY, { source: 'work', intendedTarget: '@anyvm', serviceAndArg: 'q.Gpg' }, INFO);
  assert.equal(x.rule, null);
  assert.deepEqual(x.misses, []);
  assert.deepEqual(x.json, { result: 'deny', notify: false, rule: null });
  assert.match(x.notes[0] ?? '', /refused before any rule/);
});

test('no matching rule: all rules for the service are listed', () => {
  const p = load({ 'a.policy': 'q.A * work vault allow\nq.A * @tag:x @anyvm deny\n' });
  const x = explain(p, { source: 'personal', intendedTarget: 'vault', serviceAndArg: 'q.A' }, INFO);
  assert.equal(x.rule, null);
  assert.equal(x.misses.length, 2);
  assert.ok(x.notes.includes('no rule matched, so the call is denied'));
});

test('allow refused after the match is explained', () => {
  const p = load({ 'a.policy': 'q.A * @anyvm @anyvm allow autostart=no\n' });
  const x = explain(p, { source: 'work', intendedTarget: 'vault', serviceAndArg: 'q.A' }, INFO);
  assert.equal(x.rule?.line, 1);
  assert.equal(x.json.result, 'deny');
  assert.ok(x.notes.some((n) => n.includes('would require autostart')));
});

test('unknown target becomes @default, and that is said', () => {
  const x = explain(POLICY, { source: 'work', intendedTarget: 'nosuchqube', serviceAndArg: 'q.Gpg' }, INFO);
  assert.equal(x.resolved?.intendedTarget, '@default');
  assert.equal(x.rule?.line, 9);
  assert.equal(x.json.result, 'allow');
  assert.ok(x.notes.some((n) => n.includes("'nosuchqube' is not a known qube")));
  assert.ok(x.notes.some((n) => n.includes('target=vault replaces')));
});

test('ask trace: rules last to first, deny removes, allow adds, then adjustments', () => {
  const p = load({
    'a.policy': [
      'q.A * work @anyvm ask', // 1: the matching rule
      'q.A * @anyvm vault deny', // 2
      'q.A * @anyvm @tag:secrets allow', // 3
      'q.A * @anyvm personal deny', // 4
      'q.A * @anyvm @type:AppVM ask', // 5
    ].join('\n'),
  });
  const x = explain(p, { source: 'work', intendedTarget: '@default', serviceAndArg: 'q.A' }, INFO);
  assert.equal(x.json.result, 'ask');
  assert.ok(x.ask);
  assert.deepEqual(x.ask.steps.map((s) => [s.rule.line, s.effect]), [
    [5, 'add'],
    [4, 'remove'],
    [3, 'add'],
    [2, 'remove'],
    [1, 'add'],
  ]);
  assert.deepEqual(x.ask.steps[1]?.changed, ['personal']);
  assert.deepEqual(x.ask.steps[3]?.changed, ['vault']);
  assert.ok(x.ask.adjustments.includes("the caller 'work' is removed"));
  assert.ok(x.ask.adjustments.includes("'sys-usb' is removed: internal qube"));
  assert.ok(x.json.result === 'ask');
  assert.deepEqual(new Set(x.ask.targets), new Set(x.json.targets_for_ask));
  assert.ok(x.ask.targets.includes('vault')); // removed by line 2, added again by line 1
});

test('ask with target= has one fixed choice; autostart=no drops halted qubes', () => {
  const p = load({ 'a.policy': 'q.A * @anyvm @anyvm ask target=vault\nq.B * @anyvm @anyvm ask autostart=no\n' });
  const a = explain(p, { source: 'work', intendedTarget: '', serviceAndArg: 'q.A' }, INFO);
  assert.equal(a.ask?.fixedTarget, 'vault');
  const b = explain(p, { source: 'work', intendedTarget: '', serviceAndArg: 'q.B' }, INFO);
  assert.ok(b.ask?.adjustments.includes("'vault' is removed: autostart=no and it is not running"));
  assert.ok(b.json.result === 'ask');
  assert.deepEqual(new Set(b.ask?.targets), new Set(b.json.targets_for_ask));
});

test('implicit compat-4.0 denies are shown as such', () => {
  const p = load({ 'a.policy': '!compat-4.0\n' }, { 'q.A+x': 'work vault allow\n' });
  const x = explain(p, { source: 'work', intendedTarget: 'personal', serviceAndArg: 'q.A+x' }, INFO);
  assert.equal(x.rule?.line, null);
  const text = formatExplanation(x);
  assert.match(text, /q\.A \+x @anyvm @anyvm deny {2}\(implicit, after the 4\.0 file q\.A\+x\)/);
});

test('JSON form carries the same facts', () => {
  const x = explain(POLICY, { source: 'personal', intendedTarget: 'work', serviceAndArg: 'q.Gpg+x' }, INFO);
  const j = JSON.parse(JSON.stringify(explanationToJson(x))) as {
    decision: unknown;
    rule: { label: string; line: number };
    not_matched: Array<{ label: string; column: string; why: string }>;
  };
  assert.deepEqual(j.decision, { result: 'deny', notify: true, rule: '30-user.policy:10' });
  assert.equal(j.rule.label, '30-user.policy:10');
  assert.equal(j.not_matched.length, 8);
  assert.deepEqual(j.not_matched[0], {
    file: '/p/30-user.policy',
    line: 1,
    label: '30-user.policy:1',
    text: 'q.Gpg * @tag:trusted vault ask default_target=vault',
    column: 'source',
    why: "source @tag:trusted: qube 'personal' has no tag 'trusted'",
  });
});

// Property: the explanation agrees with the engine on random policies.
const QUBES = ['work', 'personal', 'vault', 'default-dvm', 'sys-usb', 'fedora-41', 'dom0'];
const SOURCES = ['*', '@anyvm', '@adminvm', '@tag:trusted', '@type:AppVM', ...QUBES];
const TARGETS = [...SOURCES, '@default', '@dispvm', '@dispvm:default-dvm', '@dispvm:@tag:dvm', 'uuid:33333333-3333-3333-3333-333333333333'];
const arbRule = fc
  .record({
    svc: fc.constantFrom('q.A', 'q.B', '*'),
    arg: fc.constantFrom('*', '+', '+x'),
    src: fc.constantFrom(...SOURCES),
    tgt: fc.constantFrom(...TARGETS),
    action: fc.constantFrom('allow', 'deny', 'ask', 'allow target=vault', 'ask default_target=vault', 'allow autostart=no', 'ask autostart=no', 'deny notify=no', 'ask target=@dispvm'),
  })
  .map((r) => `${r.svc} ${r.svc === '*' ? '*' : r.arg} ${r.src} ${r.tgt} ${r.action}`)
  .filter((line) => !/ @default allow( autostart=no)?$/.test(line));
const arbRequest = fc.record({
  source: fc.constantFrom(...QUBES),
  target: fc.constantFrom('', '@default', '@dispvm', '@adminvm', '@dispvm:default-dvm', 'nobody', ...QUBES),
  svc: fc.constantFrom('q.A', 'q.A+', 'q.A+x', 'q.B+y', 'q.C'),
});

test('property: explanation matches the engine (rule, misses before it, ask choices)', () => {
  fc.assert(
    fc.property(fc.array(arbRule, { maxLength: 12 }), arbRequest, (lines, r) => {
      const p = load({ 'a.policy': lines.join('\n') });
      const req = { source: r.source, intendedTarget: r.target, serviceAndArg: r.svc };
      const x = explain(p, req, INFO);
      assert.deepEqual(x.json, decisionToJson(decide(p, req, INFO), INFO));
      assert.ok(!x.notes.some((n) => n.startsWith('internal:')), x.notes.join('; '));
      if (x.decision.result !== 'deny' || x.decision.rule !== null) assert.equal(x.rule, x.decision.rule);
      if (x.resolved !== null && !x.notes.some((n) => n.startsWith('evaluation fails'))) {
        const rules = p.rulesForService(x.resolved.service);
        const upto = x.rule === null ? rules.length : rules.indexOf(x.rule);
        assert.deepEqual(x.misses.map((m) => m.rule), rules.slice(0, upto));
      }
      if (x.json.result === 'ask') assert.deepEqual(new Set(x.ask?.targets), new Set(x.json.targets_for_ask));
      formatExplanation(x); // never throws
    }),
    { numRuns: 500 },
  );
});

test('CLI: text and --json on the shipped example', () => {
  const root = path.resolve(import.meta.dirname, '../../..');
  const bin = path.join(root, 'bin/qrexec-policy-explain');
  const base = ['--policy-dir', path.join(root, 'examples/policy.d'), '--legacy-dir', path.join(root, 'examples/legacy'), '--system-info', path.join(root, 'examples/system-info.json')];
  let r = spawnSync(bin, [...base, 'personal', 'vault', 'qubes.Gpg'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^request: {2}personal -> vault {2}qubes\.Gpg$/m);
  r = spawnSync(bin, [...base, '--json', 'work', '@default', 'qubes.Gpg'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout) as { decision: { result: string } };
  assert.ok(['allow', 'ask', 'deny'].includes(j.decision.result));
  r = spawnSync(bin, [...base, 'work'], { encoding: 'utf8' });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /expected SOURCE TARGET SERVICE/);
});

test('CLI: 4.0 files are shown under the legacy directory as given (relative stays relative)', () => {
  const root = path.resolve(import.meta.dirname, '../../..');
  const r = spawnSync(
    path.join(root, 'bin/qrexec-policy-explain'),
    ['--policy-dir', 'examples/policy.d', '--legacy-dir', 'examples/legacy', '--system-info', 'examples/system-info.json', 'untrusted', 'personal', 'qubes.StartApp+firefox'],
    { encoding: 'utf8', cwd: root },
  );
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^rule: {5}examples\/legacy\/qubes\.StartApp\+firefox:0$/m);
  assert.match(r.stdout, /^ {2}examples\/legacy\/qubes\.StartApp\+firefox:2: /m);
  assert.doesNotMatch(r.stdout, new RegExp(root.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
});
