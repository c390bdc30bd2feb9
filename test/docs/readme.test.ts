/**
 * The README's command blocks run as written, from the root of the
 * checkout, and print what the README shows (see blocks.ts for the rules and
 * the skip marker); so do those of the docs/ pages listed below. Links to
 * files of the repository point to files that exist, nothing points to the
 * design folder beside the project (a clone does not have it), and
 * docs/CLI.md has a section for every command in bin/.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { commandBlocks, outputMatches, runBash, runSession, sessionSteps, strayMarkers } from './blocks.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

/** Pages whose blocks are run. */
const PAGES = ['README.md', 'docs/POLICY.md', 'docs/POLICY-EVAL.md', 'docs/CLI.md', 'docs/QREXEC.md', 'docs/POLICY-DAEMON.md'];
const BLOCK_TIMEOUT_MS = 120_000;

const read = (p: string): string => fs.readFileSync(path.join(ROOT, p), 'utf8');

test('the block reader: sessions, wildcards, skip markers', () => {
  const page = [
    '<!-- doc-test: skip (runs forever) -->',
    '```sh',
    'npm start',
    '```',
    '```console',
    '$ echo a \\',
    '    b',
    'a b',
    '...',
    '$ true',
    '```',
    '```json',
    '{}',
    '```',
  ].join('\n');
  const blocks = commandBlocks(page);
  assert.deepEqual(blocks.map((b) => [b.lang, b.skip]), [['sh', 'runs forever'], ['console', undefined]]);
  const steps = sessionSteps(blocks[1]?.body ?? '');
  assert.deepEqual(steps, [{ command: 'echo a \\\n    b', expected: ['a b', '...'] }, { command: 'true', expected: [] }]);
  assert.ok(outputMatches(['a', '...', 'z'], ['a', 'b', 'c', 'z']));
  assert.ok(outputMatches(['a', '...'], ['a']));
  assert.ok(!outputMatches(['a', 'b'], ['a', 'c']));
  assert.ok(!outputMatches(['a'], ['a', 'extra']));
  assert.deepEqual(strayMarkers('<!-- doc-test: skip -->\n```sh\nx\n```\n<!-- doc-test: skip (why) -->\n\n```sh\n```'), [1, 5]);
});

test('a session that prints something else fails the check', async () => {
  const steps = sessionSteps('$ echo one; echo two >&2\none\ntwo\n$ echo three\nfour');
  const { outputs } = await runSession(steps, ROOT, 20_000);
  assert.ok(outputMatches(steps[0]?.expected ?? [], outputs[0] ?? []), JSON.stringify(outputs));
  assert.ok(!outputMatches(steps[1]?.expected ?? [], outputs[1] ?? []));
});

for (const page of PAGES) {
  describe(`${page}: every command block runs as written`, () => {
    const text = read(page);
    test('skip markers are well-formed and sit just before a block', () => {
      assert.deepEqual(strayMarkers(text), []);
    });
    const blocks = commandBlocks(text);
    for (const b of blocks) {
      const name = `${page}:${b.line} (${b.lang})`;
      if (b.skip !== undefined) {
        test(`${name}: not run: ${b.skip}`, () => undefined);
        continue;
      }
      test(name, async () => {
        if (b.lang === 'console') {
          const steps = sessionSteps(b.body);
          assert.ok(steps.length > 0, 'a console block without "$ " commands');
          const { outputs, raw } = await runSession(steps, ROOT, BLOCK_TIMEOUT_MS);
          steps.forEach((s, i) => {
            const got = outputs[i] ?? [];
            assert.ok(
              outputMatches(s.expected, got),
              `${name}: $ ${s.command}\n--- the page shows:\n${s.expected.join('\n')}\n--- it prints:\n${got.join('\n')}\n--- whole session:\n${raw}`,
            );
          });
        } else {
          const r = await runBash(b.body, ROOT, BLOCK_TIMEOUT_MS, ['-e', '-o', 'pipefail']);
          assert.equal(r.code, 0, `${name} exits ${r.code}:\n${b.body}\n--- output:\n${r.output}`);
        }
      });
    }
  });
}

test('README.md and docs/ link only to files that exist, and never outside the clone', () => {
  const pages = ['README.md', ...fs.readdirSync(path.join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];
  const bad: string[] = [];
  for (const page of pages) {
    const text = read(page);
    for (const m of text.matchAll(/\]\(([^)#\s]+)(#[^)]*)?\)/g)) {
      const target = m[1] as string;
      if (/^[a-z]+:/.test(target)) continue; // https:, mailto:
      const resolved = path.resolve(ROOT, path.dirname(page), target);
      // a user's clone has nothing beside it: a link may not leave the repository
      if (path.relative(ROOT, resolved).startsWith('..')) bad.push(`${page} links outside the clone: ${target}`);
      else if (!fs.existsSync(resolved)) bad.push(`${page} links to missing ${target}`);
    }
  }
  assert.deepEqual(bad, []);
});

test('README.md names no file the project does not have (e.g. a stale .npmrc setting)', () => {
  const text = read('README.md');
  const bad: string[] = [];
  for (const m of text.matchAll(/`((?:\.[\w-]+rc)|(?:(?:src|test|docs|bin|bench|examples|native)\/[\w./+-]+))`/g)) {
    const p = (m[1] as string).replace(/\/$/, '');
    if (!fs.existsSync(path.join(ROOT, p))) bad.push(p);
  }
  assert.deepEqual(bad, []);
});

test('docs/CLI.md has a section for every command in bin/', () => {
  const text = read('docs/CLI.md');
  const missing = fs
    .readdirSync(path.join(ROOT, 'bin'))
    .filter((n) => !new RegExp(`^#{2,3} \`?${n.replace(/[.+]/g, '\\$&')}\`?\\s*$`, 'm').test(text));
  assert.deepEqual(missing, []);
});
