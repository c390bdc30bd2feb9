/** qrexec-policy-graph: DOT edges from the engine's decisions, options as the reference's. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import fc from 'fast-check';
import { decide, loadRules, memorySource, parseSystemInfo, Policy, policyGraph, type GraphOptions } from '../../src/policy/index.js';

const INFO = parseSystemInfo({
  domains: {
    dom0: { tags: [], type: 'AdminVM', template_for_dispvms: false, default_dispvm: 'dvm', label: 'black', power_state: 'Running', uuid: '00000000-0000-0000-0000-000000000000' },
    work: { tags: ['w'], type: 'AppVM', template_for_dispvms: false, default_dispvm: 'dvm', label: '0xcc0000', power_state: 'Running', uuid: '11111111-1111-1111-1111-111111111111' },
    personal: { tags: [], type: 'AppVM', template_for_dispvms: false, default_dispvm: 'dvm', label: 'yellow', power_state: 'Running', uuid: '22222222-2222-2222-2222-222222222222' },
    'sys-usb': { tags: [], type: 'AppVM', template_for_dispvms: false, default_dispvm: null, label: 'red', power_state: 'Running', uuid: '33333333-3333-3333-3333-333333333333' },
    dvm: { tags: [], type: 'AppVM', template_for_dispvms: true, default_dispvm: 'dvm', label: 'red', power_state: 'Halted', uuid: '44444444-4444-4444-4444-444444444444' },
  },
});

function graph(policy: string, opts: GraphOptions = {}): string {
  const p = new Policy(loadRules(memorySource(new Map([['/p/10-test.policy', policy]])), { policyDirs: ['/p'], legacyDir: '/l' }));
  return policyGraph(p, INFO, opts);
}

test('allow edges in red, ask only with --include-ask', () => {
  const policy = 'test.Service * work personal allow\ntest.Service * sys-usb personal ask\n';
  assert.equal(
    graph(policy),
    [
      'digraph g {',
      '  "work" [color = "#cc0000", penwidth = 3];',
      '  "personal" [color = "yellow", penwidth = 3];',
      '  "work" -> "personal" [label="test.Service" color=red];',
      '}',
      '',
    ].join('\n'),
  );
  assert.equal(
    graph(policy, { includeAsk: true }),
    [
      'digraph g {',
      '  "work" [color = "#cc0000", penwidth = 3];',
      '  "personal" [color = "yellow", penwidth = 3];',
      '  "work" -> "personal" [label="test.Service" color=red];',
      '  "sys-usb" [color = "red", penwidth = 3];',
      '  "sys-usb" -> "personal" [label="test.Service" color=orange];',
      '}',
      '',
    ].join('\n'),
  );
});

test('keywords are dotted nodes; target= redirects the edge', () => {
  const g = graph('q.Open * personal @dispvm allow\nq.Open * work @anyvm allow target=@dispvm:dvm\n');
  assert.match(g, /^ {2}"@dispvm" \[style = dotted\];$/m);
  assert.match(g, /^ {2}"personal" -> "@dispvm" \[label="q.Open" color=red\];$/m);
  assert.match(g, /^ {2}"work" -> "@dispvm:dvm" \[label="q.Open" color=red\];$/m);
  assert.ok(!g.includes('"work" -> "personal"'));
});

test('--service with and without argument, --source, --target', () => {
  const policy = 'a.S * work personal allow\na.S +x sys-usb personal allow\nb.S * sys-usb personal allow\n';
  const edges = (o: GraphOptions): string[] => graph(policy, o).split('\n').filter((l) => l.includes('->'));
  // a service name covers its arguments
  assert.deepEqual(edges({ services: ['a.S'] }), [
    '  "work" -> "personal" [label="a.S" color=red];',
    '  "sys-usb" -> "personal" [label="a.S" color=red];',
  ]);
  assert.deepEqual(edges({ services: ['b.S'] }), ['  "sys-usb" -> "personal" [label="b.S" color=red];']);
  assert.deepEqual(edges({ services: ['a.S+x'] }), [
    '  "work" -> "personal" [label="a.S" color=red];',
    '  "sys-usb" -> "personal" [label="a.S" color=red];',
  ]);
  assert.deepEqual(edges({ sources: ['sys-usb'] }), [
    '  "sys-usb" -> "personal" [label="a.S" color=red];',
    '  "sys-usb" -> "personal" [label="b.S" color=red];',
  ]);
  assert.deepEqual(edges({ targets: ['work'] }), []);
  assert.deepEqual(edges({ fullOutput: true, services: ['a.S+x'] }), [
    '  "work" -> "personal" [label="a.S allow" color=red];',
    '  "sys-usb" -> "personal" [label="a.S+x allow" color=red];',
  ]);
  assert.deepEqual(edges({ skipLabels: true }), [
    '  "work" -> "personal" [label="" color=red];',
    '  "sys-usb" -> "personal" [label="" color=red];',
  ]);
  assert.throws(() => graph(policy, { targets: ['@anyvm'] }), /--target @anyvm is not a valid actual call target/);
  assert.throws(() => graph(policy, { sources: ['nobody'] }), /--source nobody is not a valid call source/);
});

test('full output shows the action with its parameters, asks included', () => {
  const g = graph('q.A * work @default ask target=personal default_target=personal user=u\n', { fullOutput: true });
  assert.match(g, /"work" -> "personal" \[label="q.A ask target=personal default_target=personal user=u" color=orange\];/);
});

test('loopback calls are not drawn', () => {
  const g = graph('q.A * @anyvm @anyvm allow\n');
  assert.ok(!/"(\w+)" -> "\1"/.test(g));
  assert.ok(g.includes('"work" -> "personal"'));
});

// Property: every edge is a decision of the engine, and asks only add edges.
const RULES = ['q.A * work personal allow', 'q.A * @anyvm @anyvm ask', 'q.A * @tag:w @dispvm allow', '* * @anyvm @adminvm deny', 'q.B +x personal @anyvm allow target=work', 'q.A * @anyvm @anyvm deny', 'q.B * @anyvm dvm allow autostart=no'];
test('property: edges are engine decisions; --include-ask only adds', () => {
  fc.assert(
    fc.property(fc.array(fc.constantFrom(...RULES), { maxLength: 6 }), (lines) => {
      const text = lines.join('\n');
      const p = new Policy(loadRules(memorySource(new Map([['/p/a.policy', text]])), { policyDirs: ['/p'], legacyDir: '/l' }));
      const plain = policyGraph(p, INFO).split('\n');
      const withAsk = new Set(policyGraph(p, INFO, { includeAsk: true }).split('\n'));
      for (const l of plain) assert.ok(withAsk.has(l), l);
      for (const l of plain) {
        const m = /^ {2}"([^"]+)" -> "([^"]+)" \[label="([^"]+)" color=red\];$/.exec(l);
        if (!m) continue;
        const [, s, t, svc] = m as unknown as [string, string, string, string];
        // some request from s for svc (any argument) is allowed to t, directly or by redirect
        const found = ['', '+', '+x'].some((arg) =>
          [...INFO.names, '@dispvm', '@dispvm:dvm', '@default'].some((tt) => {
            const d = decide(p, { source: s, intendedTarget: tt, serviceAndArg: svc + arg }, INFO);
            return d.result === 'allow' && (tt === t || (d.rule.action.type === 'allow' && d.rule.action.target?.text === t));
          }),
        );
        assert.ok(found, l);
      }
    }),
    { numRuns: 100 },
  );
});

test('CLI: nargs lists, --help, bad --target', () => {
  const root = path.resolve(import.meta.dirname, '../../..');
  const bin = path.join(root, 'bin/qrexec-policy-graph');
  const base = ['--policy-dir', path.join(root, 'examples/policy.d'), '--legacy-dir', path.join(root, 'examples/legacy'), '--system-info', path.join(root, 'examples/system-info.json')];
  let r = spawnSync(bin, [...base, '--service', 'qubes.Filecopy', 'qubes.Gpg', '--include-ask', '--source', 'vault', 'work'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^digraph g \{\n/);
  assert.match(r.stdout, /"vault" -> "work" \[label="qubes.Filecopy" color=orange\];/);
  assert.match(r.stdout, /"work" -> "vault" \[label="qubes.Gpg" color=orange\];/);
  assert.ok(!r.stdout.includes('"personal" ->'));
  r = spawnSync(bin, [...base, '--target', '@anyvm'], { encoding: 'utf8' });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--target @anyvm is not a valid actual call target/);
  r = spawnSync(bin, ['--help'], { encoding: 'utf8' });
  assert.equal(r.status, 0);
});
