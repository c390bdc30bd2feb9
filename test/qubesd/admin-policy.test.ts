/** The shipped default admin policy is the one generated from the method table, and it parses. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { adminPolicyFiles, methods } from '../../src/qubesd/index.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const DIR = path.join(ROOT, 'examples', 'policy.d');

test('examples/policy.d holds the generated admin policy files', () => {
  for (const [name, text] of adminPolicyFiles()) assert.equal(fs.readFileSync(path.join(DIR, name), 'utf8'), text, name);
});

test('every admin method has one line; writes and executes go to rwx', () => {
  const main = adminPolicyFiles().get('90-admin-default.policy') as string;
  for (const m of methods()) {
    if (!m.name.startsWith('admin.')) continue;
    const line = main.split('\n').find((l) => l.startsWith(`!include-service ${m.name} `));
    assert.ok(line, m.name);
    assert.match(line, m.write || m.execute ? /-rwx$/ : /-ro$/);
  }
  assert.match(main, /^!include-service admin\.vm\.List \* include\/admin-global-ro$/m);
  assert.match(main, /^!include-service admin\.vm\.property\.Set \* include\/admin-local-rwx$/m);
  assert.match(main, /^!include-service admin\.vm\.Start \* include\/admin-local-rwx$/m);
});
