import { test } from 'node:test';
import assert from 'node:assert/strict';
import { allowReplyLines, answerAsk, parseSystemInfo, refuseAsk } from '../../src/policy/index.js';
import { ask, INFO, INFO_JSON, policyOf } from './helpers.js';

const allow = (target: string, rule: string, extra: object = {}) => ({
  result: 'allow', target, user: null, autostart: true, notify: false, rule, ...extra,
});
const deny = (rule: string | null, notify = true) => ({ result: 'deny', notify, rule });

test('first match wins, across files in C-locale order', () => {
  const p = policyOf({
    '5-x.policy': 'q.S * @anyvm @anyvm deny\n',
    '40-y.policy': 'q.S * work vault allow\n',
  });
  assert.deepEqual(ask(p, 'work', 'vault', 'q.S'), allow('vault', '40-y.policy:1'));
  assert.deepEqual(ask(p, 'personal', 'vault', 'q.S'), deny('5-x.policy:1'));
});

test('service and argument matching', () => {
  const p = policyOf({
    'a.policy': ['q.S +a work vault allow', 'q.S + work vault allow notify=yes', 'q.S * work vault deny notify=no', '* * work @anyvm allow'].join('\n'),
  });
  assert.deepEqual(ask(p, 'work', 'vault', 'q.S+a'), allow('vault', 'a.policy:1'));
  assert.deepEqual(ask(p, 'work', 'vault', 'q.S+'), allow('vault', 'a.policy:2', { notify: true }));
  assert.deepEqual(ask(p, 'work', 'vault', 'q.S'), allow('vault', 'a.policy:2', { notify: true }));
  assert.deepEqual(ask(p, 'work', 'vault', 'q.S+b'), deny('a.policy:3', false));
  assert.deepEqual(ask(p, 'work', 'vault', 'q.T+b'), allow('vault', 'a.policy:4'));
  assert.deepEqual(ask(p, 'personal', 'vault', 'q.T'), deny(null));
});

test('dom0 spellings, uuid tokens, @anyvm never matches dom0', () => {
  const p = policyOf({
    'a.policy': [
      'q.A * @anyvm @anyvm allow',
      'q.A * @anyvm dom0 allow user=root',
      'q.U * uuid:11111111-1111-1111-1111-111111111111 vault allow',
    ].join('\n'),
  });
  assert.deepEqual(ask(p, 'work', 'dom0', 'q.A'), allow('dom0', 'a.policy:2', { user: 'root' }));
  assert.deepEqual(ask(p, 'work', '@adminvm', 'q.A'), allow('dom0', 'a.policy:2', { user: 'root' }));
  assert.deepEqual(ask(p, 'work', 'uuid:00000000-0000-0000-0000-000000000000', 'q.A'), allow('dom0', 'a.policy:2', { user: 'root' }));
  assert.deepEqual(ask(p, 'work', 'vault', 'q.U'), allow('vault', 'a.policy:3'));
  assert.deepEqual(ask(p, 'uuid:11111111-1111-1111-1111-111111111111', 'vault', 'q.U'), allow('vault', 'a.policy:3'));
  assert.deepEqual(ask(p, 'personal', 'vault', 'q.U'), deny(null));
});

test('@default: unknown and empty targets; allow needs target=', () => {
  const p = policyOf({
    'a.policy': ['q.A * work @default allow target=vault', 'q.B * work @anyvm allow', 'q.C * work @default ask'].join('\n'),
  });
  assert.deepEqual(ask(p, 'work', '', 'q.A'), allow('vault', 'a.policy:1'));
  assert.deepEqual(ask(p, 'work', 'no-such-qube', 'q.A'), allow('vault', 'a.policy:1'));
  assert.deepEqual(ask(p, 'work', '@default', 'q.B'), deny('a.policy:2'));
  // @default expands to no candidate at all: nothing to ask about
  assert.deepEqual(ask(p, 'work', '', 'q.C'), deny('a.policy:3'));
});

test('invalid intended targets are rejected before any rule', () => {
  const p = policyOf({ 'a.policy': '* * @anyvm @anyvm allow\n' });
  for (const t of ['@anyvm', '*', '@tag:x', '@dispvm:', '@type:AppVM']) assert.deepEqual(ask(p, 'work', t, 'q.S'), deny(null, false));
  assert.deepEqual(ask(p, 'work', '@dispvm:vault', 'q.S'), deny(null, true));
});

test('@dispvm resolution', () => {
  const p = policyOf({
    'a.policy': [
      'q.D * @anyvm @dispvm allow',
      'q.R * @anyvm @anyvm allow target=@dispvm',
      'q.T * @anyvm @dispvm:@tag:dvm allow',
      'q.N * @anyvm @anyvm allow target=@dispvm:vault',
    ].join('\n'),
  });
  assert.deepEqual(ask(p, 'work', '@dispvm', 'q.D'), allow('@dispvm:default-dvm', 'a.policy:1'));
  assert.deepEqual(ask(p, 'personal', '@dispvm', 'q.D'), deny('a.policy:1'));
  assert.deepEqual(ask(p, 'work', 'vault', 'q.R'), allow('@dispvm:default-dvm', 'a.policy:2'));
  assert.deepEqual(ask(p, 'work', '@dispvm:default-dvm', 'q.T'), allow('@dispvm:default-dvm', 'a.policy:3'));
  assert.deepEqual(ask(p, 'work', '@dispvm', 'q.T'), allow('@dispvm:default-dvm', 'a.policy:3'));
  assert.deepEqual(ask(p, 'work', 'vault', 'q.N'), deny('a.policy:4'));
});

test('autostart=no, loopback and notify of refusals', () => {
  const p = policyOf({
    'a.policy': [
      'q.A * @anyvm @anyvm allow autostart=no notify=yes',
      'q.B * @anyvm @anyvm allow',
    ].join('\n'),
  });
  assert.deepEqual(ask(p, 'work', 'personal', 'q.A'), deny('a.policy:1', true));
  assert.deepEqual(ask(p, 'work', 'sys-usb', 'q.A'), allow('sys-usb', 'a.policy:1', { autostart: false, notify: true }));
  assert.deepEqual(ask(p, 'work', 'dom0', 'q.A'), deny(null)); // @anyvm does not match dom0
  assert.deepEqual(ask(p, 'work', 'work', 'q.B'), deny('a.policy:2'));
});

test('ask: candidates, default target, denies removing candidates', () => {
  const p = policyOf({
    'a.policy': [
      'q.A * work vault deny',
      'q.A * @anyvm @anyvm ask default_target=@dispvm',
      'q.A * @anyvm personal deny',
      'q.B * @anyvm @anyvm ask target=@adminvm default_target=dom0',
      'q.C * @anyvm @anyvm ask autostart=no',
    ].join('\n'),
  });
  const a = ask(p, 'work', 'personal', 'q.A');
  assert.equal(a.result, 'ask');
  if (a.result !== 'ask') return;
  // vault denied by an earlier rule; personal's later deny cannot remove it;
  // work (the source) and sys-usb (internal) dropped.
  assert.deepEqual(new Set(a.targets_for_ask), new Set(['personal', 'default-dvm', '@dispvm:default-dvm', 'fedora-41', 'remote', 'sys-relay']));
  assert.equal(a.default_target, '@dispvm:default-dvm');
  assert.equal(a.rule, 'a.policy:2');
  const b = ask(p, 'work', 'vault', 'q.B');
  assert.deepEqual(b, { result: 'ask', targets_for_ask: ['dom0'], default_target: 'dom0', user: null, autostart: true, notify: false, rule: 'a.policy:4' });
  const c = ask(p, 'work', 'vault', 'q.C');
  assert.equal(c.result, 'ask');
  if (c.result === 'ask') assert.deepEqual(new Set(c.targets_for_ask), new Set(['remote', 'sys-relay']));
});

test('answering an ask', () => {
  const p = policyOf({ 'a.policy': 'q.A * @anyvm @anyvm ask user=u notify=yes\n' });
  const d = p.evaluate({ source: 'work', intendedTarget: 'vault', serviceAndArg: 'q.A+x' }, INFO);
  assert.equal(d.result, 'ask');
  if (d.result !== 'ask') return;
  const yes = answerAsk(d, 'vault');
  assert.equal(yes.result, 'allow');
  if (yes.result === 'allow') {
    assert.deepEqual(allowReplyLines(yes, INFO), [
      'user=u', 'result=allow', 'target=vault', 'target_uuid=uuid:33333333-3333-3333-3333-333333333333', 'autostart=True', 'requested_target=vault',
    ]);
  }
  assert.equal(answerAsk(d, 'not-offered').result, 'deny');
  const no = refuseAsk(d);
  assert.equal(no.notify, true);
});

test('reply lines: dom0, disposables, RemoteVM relays, requested_source', () => {
  const p = policyOf({
    'a.policy': ['q.A * @anyvm @adminvm allow', 'q.A * @anyvm @dispvm allow', 'q.A * remote vault allow user=x', 'q.A * @anyvm @anyvm allow user=y'].join('\n'),
  });
  const lines = (src: string, tgt: string, rs?: string) => {
    const d = p.evaluate({ source: src, intendedTarget: tgt, serviceAndArg: 'q.A+arg', requestedSource: rs }, INFO);
    assert.equal(d.result, 'allow');
    return d.result === 'allow' ? allowReplyLines(d, INFO) : null;
  };
  assert.deepEqual(lines('work', '@adminvm'), ['user=DEFAULT', 'result=allow', 'target=dom0', 'autostart=True', 'requested_target=@adminvm']);
  assert.deepEqual(lines('work', '@dispvm'), [
    'user=DEFAULT', 'result=allow', 'target=@dispvm:default-dvm', 'target_uuid=@dispvm:uuid:44444444-4444-4444-4444-444444444444', 'autostart=True', 'requested_target=@dispvm',
  ]);
  assert.deepEqual(lines('work', 'remote'), [
    'user=DEFAULT', 'result=allow', 'target=sys-relay', 'target_uuid=uuid:88888888-8888-8888-8888-888888888888', 'autostart=True', 'requested_target=remote', 'service=qubesair.SSHProxy+remote+q.A+arg',
  ]);
  assert.deepEqual(lines('sys-relay', 'vault', 'remote'), [
    'user=x', 'result=allow', 'target=vault', 'target_uuid=uuid:33333333-3333-3333-3333-333333333333', 'autostart=True', 'requested_target=vault', 'policy_source=remote',
  ]);
});

test('requested_source: only a RemoteVM, only through its relay', () => {
  const p = policyOf({ 'a.policy': '* * @anyvm @anyvm allow\n' });
  assert.deepEqual(ask(p, 'sys-relay', 'vault', 'q.A', 'remote'), allow('vault', 'a.policy:1'));
  assert.deepEqual(ask(p, 'work', 'vault', 'q.A', 'remote'), deny(null));
  assert.deepEqual(ask(p, 'sys-relay', 'vault', 'q.A', 'work'), deny(null));
  assert.deepEqual(ask(p, 'sys-relay', 'vault', 'q.A', 'nobody'), deny(null));
});

test('a RemoteVM without transport_rpc is refused at its rule', () => {
  const j = structuredClone(INFO_JSON) as { domains: Record<string, Record<string, unknown>> };
  (j.domains['remote'] as Record<string, unknown>)['transport_rpc'] = null;
  const info = parseSystemInfo(j);
  const p = policyOf({ 'a.policy': '* * @anyvm @anyvm allow\n' });
  const d = p.evaluate({ source: 'work', intendedTarget: 'remote', serviceAndArg: 'q.A' }, info);
  assert.equal(d.result, 'allow');
  if (d.result === 'allow') {
    const r = allowReplyLines(d, info);
    assert.ok(!Array.isArray(r) && r.result === 'deny' && r.rule?.line === 1);
  }
});

test('names that look like Object.prototype members are just unknown qubes', () => {
  const p = policyOf({ 'a.policy': '* * @anyvm @anyvm allow\n* * @anyvm @default allow target=constructor\n' });
  // unknown → @default, which @anyvm matches, but an allow then has no target
  assert.deepEqual(ask(p, 'work', '__proto__', 'q.A'), deny('a.policy:1'));
  assert.deepEqual(ask(p, 'work', 'constructor', 'q.A'), deny('a.policy:1'));
});
