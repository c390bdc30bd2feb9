/**
 * The default policy for the services every qube has (policy/): it lints
 * clean, and decides as specified: qubes.Filecopy ask, qubes.GetDate allow
 * target=dom0, qubes.OpenInVM/OpenURL to @dispvm (ask elsewhere),
 * qubes.ConnectTCP deny unless configured, qubes.VMShell deny between qubes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { ROOT } from './system.js';

const POLICY = path.join(ROOT, 'policy');

test('the shipped services policy lints clean', () => {
  const r = spawnSync(path.join(ROOT, 'bin/qubes-policy-lint'), [path.join(POLICY, '80-services-default.policy')], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stdout + r.stderr);
});

test('the shipped services policy decides as the Qubes defaults do', () => {
  const cases: [string, string, string, Record<string, unknown>][] = [
    ['work', '@default', 'qubes.Filecopy+', { result: 'ask' }],
    ['work', 'personal', 'qubes.Filecopy+allow-all-names', { result: 'ask' }],
    ['work', 'dom0', 'qubes.GetDate+', { result: 'allow', target: 'dom0' }],
    ['vault', '@default', 'qubes.GetDate+', { result: 'allow', target: 'dom0' }],
    ['work', '@dispvm', 'qubes.OpenInVM+', { result: 'allow', target: '@dispvm:default-dvm' }],
    ['work', '@dispvm', 'qubes.OpenURL+', { result: 'allow', target: '@dispvm:default-dvm' }],
    ['work', 'personal', 'qubes.OpenURL+', { result: 'ask' }],
    ['work', 'personal', 'qubes.OpenInVM+', { result: 'ask' }],
    ['work', 'sys-net', 'qubes.ConnectTCP+22', { result: 'deny' }],
    ['work', '@default', 'qubes.ConnectTCP+443', { result: 'deny' }],
    ['work', 'personal', 'qubes.VMShell+', { result: 'deny' }],
    ['work', '@dispvm', 'qubes.VMShell+WaitForSession', { result: 'deny' }],
    ['personal', 'work', 'qubes.VMExec+ls', { result: 'deny' }],
  ];
  const input = cases.map(([source, target, svc]) => JSON.stringify({ source, intended_target: target, service_and_arg: svc })).join('\n') + '\n';
  const r = spawnSync(path.join(ROOT, 'bin/qrexec-policy-eval'), ['--policy-dir', POLICY, '--system-info', path.join(ROOT, 'examples/system-info.json')], { input, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const got = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  cases.forEach(([source, target, svc, want], i) => {
    for (const [k, v] of Object.entries(want)) assert.equal(got[i]?.[k], v, `${source} -> ${target} ${svc}: ${k}`);
    assert.match(String(got[i]?.['rule']), /^80-services-default\.policy:\d+$/);
  });
});
