/**
 * The host installs the services' default policy (policy/80-services-default.policy)
 * into its policy directory, demo system or not: once, so that a data dir made
 * by an older version gets it at its next start, while a copy the user edited
 * is never overwritten and one the user removed is not put back.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT } from '../e2e/harness.js';
import { INSTALLED_DEFAULTS_FILE, SERVICES_POLICY, ensureDemoPolicy, ensureServicesPolicy } from '../../src/host/demo-system.js';

const SHIPPED = fs.readFileSync(path.join(ROOT, 'policy', SERVICES_POLICY), 'utf8');

/** qrexec-policy-eval over `dir` for one call: its JSON answer. */
function decide(dir: string, source: string, target: string, svc: string): Record<string, unknown> {
  const input = `${JSON.stringify({ source, intended_target: target, service_and_arg: svc })}\n`;
  const r = spawnSync(path.join(ROOT, 'bin/qrexec-policy-eval'), ['--policy-dir', dir, '--system-info', path.join(ROOT, 'examples/system-info.json')], { input, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout.trim()) as Record<string, unknown>;
}

function withDir(f: (dir: string) => void): void {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'svc-policy-'));
  try {
    f(path.join(d, 'policy.d'));
  } finally {
    fs.rmSync(d, { recursive: true, force: true });
  }
}

void test('a host without the demo system: the services policy is installed as shipped, and decides', () => {
  withDir((dir) => {
    assert.equal(ensureServicesPolicy(dir), true);
    assert.equal(fs.readFileSync(path.join(dir, SERVICES_POLICY), 'utf8'), SHIPPED);
    assert.deepEqual(fs.readdirSync(dir).sort(), [INSTALLED_DEFAULTS_FILE, SERVICES_POLICY].sort());
    const d = decide(dir, 'work', 'dom0', 'qubes.GetDate+');
    assert.equal(d['result'], 'allow');
    assert.equal(d['target'], 'dom0');
    assert.match(String(d['rule']), /^80-services-default\.policy:\d+$/);
    assert.equal(decide(dir, 'work', 'personal', 'qubes.VMShell+')['result'], 'deny');
    // a second start changes nothing
    assert.equal(ensureServicesPolicy(dir), false);
    assert.equal(fs.readFileSync(path.join(dir, SERVICES_POLICY), 'utf8'), SHIPPED);
  });
});

void test('a data dir made before the services policy existed gets it at the next start; its own files are kept', () => {
  withDir((dir) => {
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, '30-user.policy'), 'qubes.Filecopy * work personal allow\n');
    assert.equal(ensureServicesPolicy(dir), true);
    assert.equal(fs.readFileSync(path.join(dir, '30-user.policy'), 'utf8'), 'qubes.Filecopy * work personal allow\n');
    assert.equal(decide(dir, 'work', 'personal', 'qubes.Filecopy+')['result'], 'allow');
    assert.equal(decide(dir, 'personal', 'work', 'qubes.Filecopy+')['result'], 'ask');
  });
});

void test('the services policy the user edited is never overwritten, and one the user removed is not put back', () => {
  withDir((dir) => {
    ensureServicesPolicy(dir);
    fs.writeFileSync(path.join(dir, SERVICES_POLICY), 'qubes.GetDate * @anyvm @anyvm deny\n');
    assert.equal(ensureServicesPolicy(dir), false);
    assert.equal(fs.readFileSync(path.join(dir, SERVICES_POLICY), 'utf8'), 'qubes.GetDate * @anyvm @anyvm deny\n');
    fs.unlinkSync(path.join(dir, SERVICES_POLICY));
    assert.equal(ensureServicesPolicy(dir), false);
    assert.ok(!fs.existsSync(path.join(dir, SERVICES_POLICY)));
  });
  // a copy that was there before any record (an older host's demo): kept as it is, and recorded
  withDir((dir) => {
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, SERVICES_POLICY), '# mine\n');
    assert.equal(ensureServicesPolicy(dir), false);
    assert.equal(fs.readFileSync(path.join(dir, SERVICES_POLICY), 'utf8'), '# mine\n');
    assert.equal(fs.readFileSync(path.join(dir, INSTALLED_DEFAULTS_FILE), 'utf8'), `${SERVICES_POLICY}\n`);
  });
});

void test('with the demo system (its policy first, as npm start does): one copy, recorded', () => {
  withDir((dir) => {
    ensureDemoPolicy(dir);
    assert.equal(ensureServicesPolicy(dir), false);
    assert.equal(fs.readFileSync(path.join(dir, SERVICES_POLICY), 'utf8'), SHIPPED);
    assert.equal(fs.readFileSync(path.join(dir, INSTALLED_DEFAULTS_FILE), 'utf8'), `${SERVICES_POLICY}\n`);
  });
});
