// The loader's per-file cache: a load with the cache (after any sequence of changes to
// files, included files and their presence) gives exactly the rules, or the error, of a
// load without it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { LoadCache, loadRules, memorySource } from '../../src/policy/index.js';

const line = fc.constantFrom(
  's.A * @anyvm @anyvm allow',
  's.B +x work vault deny',
  '!include include/x',
  '!include include/y',
  '!include-service s.C * include/z',
  'bad line',
  '',
);
const svcLine = fc.constantFrom('work vault allow', '@anyvm @anyvm deny', 'bad');
const text = fc.array(line, { maxLength: 4 }).map((l) => l.join('\n') + '\n');
const change = fc.oneof(
  fc.tuple(fc.constantFrom('/p/10-a.policy', '/p/20-b.policy', '/p/include/x', '/p/include/y'), fc.option(text)),
  fc.tuple(fc.constant('/p/include/z'), fc.option(fc.array(svcLine, { maxLength: 3 }).map((l) => l.join('\n') + '\n'))),
);

function load(files: Map<string, string>, cache?: LoadCache): string {
  try {
    const rules = loadRules(memorySource(files), { policyDirs: ['/p'], legacyDir: '/legacy', ...(cache ? { cache } : {}) });
    return rules.map((r) => `${r.file}:${r.line}:${r.text}:${r.service ?? '*'}`).join('\n');
  } catch (e) {
    return `error ${(e as Error).message}`;
  }
}

void test('a cached load equals an uncached load after every change', () => {
  fc.assert(
    fc.property(fc.array(change, { minLength: 1, maxLength: 12 }), (changes) => {
      const files = new Map<string, string>([['/p/keep.txt', '']]);
      const cache = new LoadCache();
      for (const [path, content] of changes) {
        if (content === null) files.delete(path);
        else files.set(path, content);
        assert.equal(load(files, cache), load(files));
      }
    }),
    { numRuns: 500 },
  );
});
