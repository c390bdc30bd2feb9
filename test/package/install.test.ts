/**
 * `npm install` builds better-sqlite3 from source with nothing downloaded:
 * npm does not run the package's own install script (which would try a
 * prebuilt download, then let node-gyp fetch the Node headers), and our
 * `prepare` step builds it against the headers of the running Node.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const SCRIPT = path.join(ROOT, 'scripts', 'build-sqlite.mjs');

function dryRun(env: NodeJS.ProcessEnv): { nodedir: string | null; command: string[] } {
  const run = spawnSync(process.execPath, [SCRIPT, '--dry-run'], { encoding: 'utf8', env });
  assert.equal(run.status, 0, run.stderr);
  assert.equal(run.stderr, '');
  return JSON.parse(run.stdout) as { nodedir: string | null; command: string[] };
}

test('package.json: better-sqlite3 install script off, built by prepare', () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
    allowScripts: Record<string, boolean>;
    scripts: Record<string, string>;
  };
  assert.equal(pkg.allowScripts['better-sqlite3'], false);
  assert.match(pkg.scripts['prepare'] ?? '', /node scripts\/build-sqlite\.mjs/);
});

test('with no nodedir configured, node-gyp is pointed at the running Node’s own headers', () => {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.toLowerCase() === 'npm_config_nodedir') delete env[k];
  const plan = dryRun(env);
  assert.ok(plan.nodedir, 'a nodedir was found, so node-gyp downloads nothing');
  const header = fs.readFileSync(path.join(plan.nodedir, 'include', 'node', 'node_version.h'), 'utf8');
  const v = (n: string) => header.match(new RegExp(`^#define NODE_${n}_VERSION (\\d+)$`, 'm'))?.[1];
  assert.equal(`${v('MAJOR')}.${v('MINOR')}.${v('PATCH')}`, process.versions.node);
  assert.ok(plan.command.includes(`--nodedir=${plan.nodedir}`));
  assert.ok(fs.existsSync(plan.command[1] ?? ''), 'node-gyp (bundled with npm) exists');
});

test('npm_config_nodedir, when set, wins', () => {
  const plan = dryRun({ ...process.env, npm_config_nodedir: '/opt/node-headers' });
  assert.equal(plan.nodedir, '/opt/node-headers');
});

test('the module built by npm install loads', async () => {
  const { default: Database } = await import('better-sqlite3');
  const db = new Database(':memory:');
  assert.equal((db.prepare('select 1 + 1 as two').get() as { two: number }).two, 2);
  db.close();
});
