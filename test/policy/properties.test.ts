/** Property tests of the policy engine's invariants (fast-check). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { decide, decisionToJson, loadRules, memorySource, Policy, PolicySyntaxError } from '../../src/policy/index.js';
import { INFO } from './helpers.js';

const QUBES = ['work', 'personal', 'vault', 'default-dvm', 'sys-usb', 'fedora-41', 'remote', 'sys-relay', 'dom0'];
const SOURCES = ['*', '@anyvm', '@adminvm', '@tag:trusted', '@type:AppVM', '@dispvm:default-dvm', ...QUBES];
const TARGETS = [...SOURCES, '@default', '@dispvm', '@dispvm:@tag:dvm', 'uuid:33333333-3333-3333-3333-333333333333'];
const SERVICES = ['q.A', 'q.B', '*'];
const ARGS = ['*', '+', '+x'];

const arbRule = fc
  .record({
    svc: fc.constantFrom(...SERVICES),
    arg: fc.constantFrom(...ARGS),
    src: fc.constantFrom(...SOURCES),
    tgt: fc.constantFrom(...TARGETS),
    action: fc.constantFrom('allow', 'deny', 'ask', 'allow target=vault', 'ask default_target=vault', 'allow autostart=no', 'deny notify=no', 'ask target=@dispvm'),
  })
  .map((r) => `${r.svc} ${r.svc === '*' ? '*' : r.arg} ${r.src} ${r.tgt} ${r.action}`)
  .filter((line) => !/ @default allow$| @default allow autostart=no$/.test(line));

const arbRequest = fc.record({
  source: fc.constantFrom(...QUBES.filter((q) => q !== 'remote')),
  target: fc.constantFrom('', '@default', '@dispvm', '@adminvm', '@dispvm:default-dvm', 'nobody', ...QUBES),
  svc: fc.constantFrom('q.A', 'q.A+', 'q.A+x', 'q.B+y', 'q.C'),
});

function load(lines: string[]): Policy {
  return new Policy(loadRules(memorySource(new Map([['/p/a.policy', lines.join('\n')]])), { policyDirs: ['/p'], legacyDir: '/l' }));
}

test('adding a rule after the matching rule never changes the decision', () => {
  fc.assert(
    fc.property(fc.array(arbRule, { minLength: 1, maxLength: 12 }), arbRule, arbRequest, (rules, extra, req) => {
      const p1 = load(rules);
      const p2 = load([...rules, extra]);
      const q = { source: req.source, intendedTarget: req.target, serviceAndArg: req.svc };
      const d1 = decisionToJson(decide(p1, q, INFO), INFO);
      const d2 = decisionToJson(decide(p2, q, INFO), INFO);
      if (d1.rule === null) return; // nothing matched: the new rule may
      assert.equal(d2.rule, d1.rule);
      // an ask's candidates come from every rule for the service, as the
      // reference's collect_targets_for_ask: a later rule may add some, so an
      // ask that had none (a deny at that rule) may become an ask
      const matched = rules[Number(d1.rule.split(':').at(-1)) - 1] ?? '';
      if (/\sask(\s|$)/.test(matched)) {
        if (d1.result === 'ask') assert.equal(d2.result, 'ask');
        return;
      }
      assert.deepEqual(d2, d1);
    }),
    // found by seed 1438663362: a loopback ask with no other target, then a rule that offers some
    { numRuns: 400, examples: [[['q.A * * sys-relay ask', 'q.A * @adminvm * allow'], 'q.A * * * allow', { source: 'sys-relay', target: 'sys-relay', svc: 'q.A' }]] },
  );
});

test('a policy with any invalid line anywhere does not load (fail closed), and says where', () => {
  const bad = fc.constantFrom(
    'q.A * @anyvm @anyvm permit',
    'q.A * @anyvm',
    'q+A * @anyvm @anyvm allow',
    'q.A * @anyvm @anyvm allow target=@anyvm',
    '!include nowhere',
    'q.A * @anyvm @default allow',
    'q.A * @anyvm @anyvm allow notify=maybe',
  );
  fc.assert(
    fc.property(fc.array(arbRule, { maxLength: 10 }), bad, fc.nat(), (rules, badLine, at) => {
      const i = rules.length === 0 ? 0 : at % (rules.length + 1);
      const lines = [...rules.slice(0, i), badLine, ...rules.slice(i)];
      assert.throws(() => load(lines), (e: unknown) => e instanceof PolicySyntaxError && e.line === i + 1);
    }),
    { numRuns: 300 },
  );
});

test('deny is the answer whenever no rule matched', () => {
  fc.assert(
    fc.property(fc.array(arbRule, { maxLength: 10 }), arbRequest, (rules, req) => {
      const d = decisionToJson(decide(load(rules), { source: req.source, intendedTarget: req.target, serviceAndArg: req.svc }, INFO), INFO);
      if (d.rule === null) assert.equal(d.result, 'deny');
    }),
    { numRuns: 300 },
  );
});

test('evaluation never throws, whatever the request strings', () => {
  const p = load(['* * @anyvm @anyvm ask', '* * @anyvm @dispvm:@tag:dvm allow', '* * @anyvm @dispvm:default-dvm allow']);
  fc.assert(
    fc.property(fc.string(), fc.string(), fc.string(), fc.option(fc.string(), { nil: undefined }), (source, target, svc, rs) => {
      const d = decide(p, { source, intendedTarget: target, serviceAndArg: svc, requestedSource: rs }, INFO);
      assert.ok(['allow', 'ask', 'deny'].includes(d.result));
    }),
    { numRuns: 2000 },
  );
});
