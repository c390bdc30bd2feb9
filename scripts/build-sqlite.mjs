#!/usr/bin/env node
// Builds better-sqlite3's native module from source, against the headers of
// the Node.js that runs this script, with nothing downloaded.
//
// npm does not run better-sqlite3's own install script (package.json
// `allowScripts`): that script first tries to download a prebuilt binary,
// and its node-gyp fallback downloads the Node headers unless it is told
// where they are. This script tells it: the headers installed with the
// running Node (PREFIX/include/node, PREFIX being the directory above
// bin/node), or `npm_config_nodedir` when it is set. Only when neither has
// the headers of this exact Node version does node-gyp fetch them, and this
// script says so first.
//
// Run by `npm install` (the `prepare` script). A module that already loads
// is left alone; `--force` rebuilds it; `--dry-run` prints what it would
// run (one JSON object) and builds nothing.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';

const require = createRequire(import.meta.url);
const force = process.argv.includes('--force');
const dryRun = process.argv.includes('--dry-run');

function fail(message) {
  process.stderr.write(`build-sqlite: ${message}\n`);
  process.exit(1);
}

function loads() {
  try {
    const Database = require('better-sqlite3');
    new Database(':memory:').close();
    return true;
  } catch {
    return false;
  }
}

/** The version in PREFIX/include/node/node_version.h, or undefined. */
function headerVersion(dir) {
  let text;
  try {
    text = fs.readFileSync(path.join(dir, 'include', 'node', 'node_version.h'), 'utf8');
  } catch {
    return undefined;
  }
  const part = (name) => text.match(new RegExp(`^#define NODE_${name}_VERSION (\\d+)$`, 'm'))?.[1];
  const [major, minor, patch] = [part('MAJOR'), part('MINOR'), part('PATCH')];
  return major && minor && patch ? `${major}.${minor}.${patch}` : undefined;
}

function nodeGyp() {
  const candidates = [];
  if (process.env.npm_config_node_gyp) candidates.push(process.env.npm_config_node_gyp);
  if (process.env.npm_execpath) {
    // npm_execpath is npm's bin/npm-cli.js; node-gyp is bundled with npm.
    const npmRoot = path.resolve(fs.realpathSync(process.env.npm_execpath), '..', '..');
    candidates.push(path.join(npmRoot, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  }
  const nodePrefix = path.resolve(path.dirname(process.execPath), '..');
  candidates.push(path.join(nodePrefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  return candidates.find((c) => fs.existsSync(c));
}

let pkgDir;
try {
  pkgDir = path.dirname(require.resolve('better-sqlite3/package.json'));
} catch {
  fail('better-sqlite3 is not installed (run npm install)');
}
const gyp = nodeGyp();
if (gyp === undefined) fail('node-gyp not found (it comes with npm; run this script through `npm install`)');

const wanted = process.versions.node;
const prefix = path.resolve(path.dirname(process.execPath), '..');
const nodedir = process.env.npm_config_nodedir || (headerVersion(prefix) === wanted ? prefix : undefined);
const args = [gyp, 'rebuild', '--release', ...(nodedir ? [`--nodedir=${nodedir}`] : [])];
if (dryRun) {
  process.stdout.write(`${JSON.stringify({ package: pkgDir, nodedir: nodedir ?? null, command: [process.execPath, ...args] })}\n`);
  process.exit(0);
}
if (!force && loads()) process.exit(0);
if (nodedir === undefined) {
  process.stderr.write(
    `build-sqlite: the headers of Node.js ${wanted} are not in ${path.join(prefix, 'include', 'node')}; ` +
      'node-gyp will download them (set npm_config_nodedir to a Node source or headers directory to avoid it)\n',
  );
}

const run = spawnSync(process.execPath, args, { cwd: pkgDir, encoding: 'utf8', env: process.env });
if (run.error) fail(`cannot run node-gyp: ${run.error.message}`);
if (run.status !== 0 || !loads()) {
  process.stderr.write(run.stdout);
  process.stderr.write(run.stderr);
  fail(`building better-sqlite3 failed (node-gyp exit ${run.status}); a C++ compiler, make and python3 are needed`);
}
