// The impact diff against brute force: random old/new versions of one file in a random
// policy, every (service, argument, source, target) evaluated with both (fast-check).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { loadRules, memorySource, parseSystemInfo, Policy, type SystemInfo } from '../../src/policy/index.js';
import { impactDiff, summarize, targetsOf } from '../../src/policyapi/diff.js';

let uuids = 0;
const dom = (type: string, tags: string[] = [], dvm = false): object => ({ tags, type, template_for_dispvms: dvm, default_dispvm: dvm ? null : 'dvm', icon: 'x', label: 'red', guivm: null, relayvm: null, transport_rpc: null, internal: null, power_state: 'Running', uuid: `00000000-0000-0000-0000-${String(++uuids).padStart(12, '0')}` });
const info: SystemInfo = parseSystemInfo(({ domains: { dom0: dom('AdminVM'), a: dom('AppVM', ['t']), b: dom('AppVM'), c: dom('AppVM', ['t']), dvm: dom('AppVM', [], true) } }));

const service = fc.constantFrom('s.A', 's.B', '*');
const argument = fc.constantFrom('*', '+x', '+y', '+');
const source = fc.constantFrom('a', 'b', '@anyvm', '@tag:t', '@type:AppVM');
const target = fc.constantFrom('a', 'b', 'c', '@anyvm', '@default', '@dispvm', '@dispvm:dvm', '@adminvm', '@tag:t');
const action = fc.constantFrom('allow', 'deny', 'ask', 'allow target=b', 'ask default_target=c', 'allow target=dom0', 'deny notify=no', 'allow user=u');
// the engine refuses `* +ARG`: a `*` service always takes `*` arguments
const rule = fc.tuple(service, argument, source, target, action).map(([s, a, ...rest]) => [s, s === '*' ? '*' : a, ...rest].join(' '));
const file = fc.array(rule, { maxLength: 6 }).map((l) => l.join('\n') + '\n');

function load(files: Record<string, string>): Policy {
  return new Policy(loadRules(memorySource(new Map(Object.entries(files))), { policyDirs: ['/p'], legacyDir: '/legacy' }));
}

void test('impact diff = the decisions that differ when both versions are evaluated on every request', () => {
  fc.assert(
    fc.property(file, file, file, file, (before, oldF, newF, after) => {
      let oldP: Policy;
      let newP: Policy;
      try {
        oldP = load({ '/p/10-a.policy': before, '/p/20-x.policy': oldF, '/p/30-z.policy': after });
        newP = load({ '/p/10-a.policy': before, '/p/20-x.policy': newF, '/p/30-z.policy': after });
      } catch {
        return; // a combination the engine refuses: not a diff case
      }
      const touched = [...oldP.rules, ...newP.rules].filter((r) => r.file === '/p/20-x.policy');
      const d = impactDiff(oldP, newP, touched, info);
      const got = new Set(d.services.flatMap((g) => g.changes.map((c) => `${g.service} ${g.argument} ${c.source} ${c.target} ${c.old} ${c.new}`)));
      const all = [...oldP.rules, ...newP.rules];
      const named = new Set(all.map((r) => r.service));
      const argNamed = (sv: string, a: string): boolean => all.some((r) => (r.service === sv || r.service === null) && r.argument === a);
      const want = new Set<string>();
      for (const s of ['s.A', 's.B', 's.Z']) {
        for (const a of ['+x', '+y', '+', '+zz']) {
          for (const src of ['a', 'b', 'c', 'dvm']) {
            for (const t of targetsOf(info)) {
              const sa = a === '+' ? s : s + a;
              const o = summarize(oldP, src, t, sa, info);
              const n = summarize(newP, src, t, sa, info);
              // a request no rule names by service (argument) is listed as * (that service's *)
              if (o !== n) want.add(`${named.has(s) ? s : '*'} ${a === '+' || argNamed(s, a) ? a : '*'} ${src} ${t} ${o} ${n}`);
            }
          }
        }
      }
      assert.deepEqual([...got].sort(), [...want].sort());
      assert.equal(d.total, want.size);
    }),
    { numRuns: 300 },
  );
});
