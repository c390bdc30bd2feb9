/**
 * The acceptance test: every public case produced by the Qubes reference
 * engine, run through bin/qrexec-policy-eval, compared as
 * the corpus's compare.py compares (JSON types strict,
 * targets_for_ask as a set).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { corpusDir } from '../conformance/corpus.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const EVAL = path.join(ROOT, 'bin/qrexec-policy-eval');

function run(caseDir: string): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const args = ['--policy-dir', path.join(caseDir, 'policy.d'), '--system-info', path.join(caseDir, 'system-info.json')];
    if (fs.existsSync(path.join(caseDir, 'legacy'))) args.push('--legacy-dir', path.join(caseDir, 'legacy'));
    const p = spawn(EVAL, args, { cwd: os.tmpdir(), stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, out, err }));
    p.stdin.end(fs.readFileSync(path.join(caseDir, 'queries.jsonl')));
  });
}

function same(a: unknown, b: unknown, key?: string): boolean {
  if (key === 'targets_for_ask' && Array.isArray(a) && Array.isArray(b)) {
    return b.every((x) => typeof x === 'string') && new Set(a).size === new Set(b).size && a.every((x) => b.includes(x));
  }
  if (a === null || b === null || typeof a !== 'object' || typeof b !== 'object') return a === b;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  return ka.every((k) => kb.includes(k) && same((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], k));
}

const jsonl = (p: string): unknown[] =>
  fs.readFileSync(p, 'utf8').split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as unknown);

test('policy conformance: every public case agrees with the Qubes reference', { timeout: 15 * 60_000 }, async () => {
  const CASES = corpusDir();
  const cases = fs.readdirSync(CASES).filter((c) => c.startsWith('case-')).sort();
  assert.ok(cases.length >= 420, `only ${cases.length} cases`);
  let passed = 0;
  const failures: string[] = [];
  const queue = [...cases];
  const worker = async (): Promise<void> => {
    for (let c = queue.shift(); c !== undefined; c = queue.shift()) {
      const dir = path.join(CASES, c);
      const expected = jsonl(path.join(dir, 'expected.jsonl')) as Array<Record<string, unknown>>;
      const { code, out, err } = await run(dir);
      const lines = out.split('\n').filter((l) => l.trim() !== '');
      const isError = expected.length === 1 && 'error' in (expected[0] as object);
      if (isError) {
        if (code === 2 && lines.length === 1 && same(expected[0], JSON.parse(lines[0] as string))) passed++;
        else failures.push(`${c}: expected ${JSON.stringify(expected[0])}, got exit ${code} ${lines[0] ?? ''} ${err.slice(0, 200)}`);
        continue;
      }
      if (code !== 0 || lines.length !== expected.length) {
        failures.push(`${c}: exit ${code}, ${lines.length} lines for ${expected.length} queries: ${err.slice(0, 300)}`);
        continue;
      }
      expected.forEach((want, i) => {
        const got: unknown = JSON.parse(lines[i] as string);
        if (same(want, got)) passed++;
        else failures.push(`${c} query ${i + 1}: expected ${JSON.stringify(want)}, got ${lines[i]}`);
      });
    }
  };
  await Promise.all([worker(), worker(), worker()]);
  console.log(`policy-oracle: ${passed} passed, ${failures.length} failed`);
  assert.deepEqual(failures.slice(0, 20), []);
});
