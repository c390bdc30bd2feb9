/**
 * Policy tests (ours, not in the reference): files of expected decisions,
 * `tests/*.test` in the policy directory, run on every Replace and Remove
 * (a change that breaks one is refused, the failing lines named) and by
 * `qrexec-policy-test DIR`.
 *
 * One expectation a line, `#` starts a comment:
 *   SERVICE[+ARG] SOURCE TARGET RESULT [target=QUBE]
 * RESULT is allow, ask or deny; `target=` checks an allow's resolved target.
 * E.g. `qubes.Filecopy work vault ask` or `qubes.Gpg+sign work @default allow target=vault`.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { decide, decisionToJson, type Policy, type SystemInfo } from '../policy/index.js';
import { PolicyAdminTestFailedException } from './errors.js';
import type { ChangeCheck } from './admin.js';

export interface PolicyTestCase {
  readonly file: string;
  readonly line: number;
  readonly text: string;
  readonly serviceAndArg: string;
  readonly source: string;
  readonly target: string;
  readonly result: 'allow' | 'ask' | 'deny';
  readonly resolvedTarget: string | null;
}

/** A malformed test file line. */
export class PolicyTestSyntaxError extends Error {
  override name = 'PolicyTestSyntaxError';
}

export function parseTestFile(text: string, file: string): PolicyTestCase[] {
  const out: PolicyTestCase[] = [];
  text.split('\n').forEach((raw, i) => {
    const t = raw.replace(/#.*/, '').trim();
    if (t === '') return;
    const w = t.split(/\s+/);
    const [serviceAndArg, source, target, result, extra, ...more] = w;
    const bad = (why: string): never => {
      throw new PolicyTestSyntaxError(`${file}:${i + 1}: ${why}`);
    };
    if (serviceAndArg === undefined || source === undefined || target === undefined || result === undefined || more.length > 0) bad('want SERVICE[+ARG] SOURCE TARGET RESULT [target=QUBE]');
    if (result !== 'allow' && result !== 'ask' && result !== 'deny') bad(`result must be allow, ask or deny, not ${result}`);
    let resolvedTarget: string | null = null;
    if (extra !== undefined) {
      if (!extra.startsWith('target=') || result !== 'allow') bad('only an allow can check target=QUBE');
      resolvedTarget = extra.slice('target='.length);
    }
    out.push({ file, line: i + 1, text: t, serviceAndArg: serviceAndArg as string, source: source as string, target: target as string, result: result as PolicyTestCase['result'], resolvedTarget });
  });
  return out;
}

/** Every `*.test` file of DIR/tests, sorted. */
export function loadTestDir(policyDir: string): PolicyTestCase[] {
  const dir = path.join(policyDir, 'tests');
  let names: string[];
  try {
    names = fs.readdirSync(dir).filter((n) => n.endsWith('.test')).sort();
  } catch {
    return [];
  }
  return names.flatMap((n) => parseTestFile(fs.readFileSync(path.join(dir, n), 'utf8'), path.join(dir, n)));
}

/** `file:line: TEXT: got RESULT` for every expectation the policy does not meet. */
export function runPolicyTests(policy: Policy, info: SystemInfo, cases: readonly PolicyTestCase[]): string[] {
  const failures: string[] = [];
  for (const c of cases) {
    const j = decisionToJson(decide(policy, { source: c.source, intendedTarget: c.target, serviceAndArg: c.serviceAndArg }, info), info);
    const got = j.result === 'allow' ? `allow target=${j.target}` : j.result;
    const ok = j.result === c.result && (c.resolvedTarget === null || (j.result === 'allow' && j.target === c.resolvedTarget));
    if (!ok) failures.push(`${path.basename(c.file)}:${c.line}: ${c.text}: got ${got}${j.rule ? ` (${j.rule})` : ''}`);
  }
  return failures;
}

/** The check run on every change; `info` gives the qubes (null: tests cannot run, the change is refused). */
export function policyTestsCheck(policyDir: string, info: () => SystemInfo | null): ChangeCheck {
  return (c) => {
    let cases: PolicyTestCase[];
    try {
      cases = loadTestDir(policyDir);
    } catch (e) {
      throw new PolicyAdminTestFailedException(`Policy tests cannot be read: ${e instanceof Error ? e.message : String(e)}`);
    }
    if (cases.length === 0) return;
    const i = info();
    if (i === null) throw new PolicyAdminTestFailedException('Policy tests cannot run: no system info');
    const failures = runPolicyTests(c.policy, i, cases);
    if (failures.length > 0) throw new PolicyAdminTestFailedException(`Policy tests failed:\n${failures.join('\n')}`);
  };
}
