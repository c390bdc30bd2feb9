/**
 * The architecture, checked: imports point one way (STYLE.md "Layout that
 * shows the architecture"), the pure modules touch no Node API, and there
 * are no import cycles.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const SRC = path.join(ROOT, 'src');

function sources(dir = SRC): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sources(p);
    return e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') ? [p] : [];
  });
}

/**
 * Module specifiers a file imports at run time (static imports, re-exports,
 * dynamic imports of literals); `import type` is erased by the compiler and
 * does not count.
 */
function importsOf(file: string, withTypes = false): string[] {
  const text = fs.readFileSync(file, 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/^\s*((?:import|export)\b[^'"]*?)\bfrom\s*['"]([^'"]+)['"]|^\s*import\s*['"]([^'"]+)['"]|\bimport\(\s*['"]([^'"]+)['"]\s*\)/gm)) {
    if (!withTypes && m[1] !== undefined && /^(?:import|export)\s+type\b/.test(m[1].trim())) continue;
    out.push((m[2] ?? m[3] ?? m[4]) as string);
  }
  return out;
}

const area = (file: string): string => path.relative(SRC, file).split(path.sep)[0] as string;

const resolved = (f: string, withTypes: boolean): string[] =>
  importsOf(f, withTypes).map((s) => (s.startsWith('.') ? path.resolve(path.dirname(f), s).replace(/\.js$/, '.ts') : s));
/** file -> what it imports at run time (a path for our files, the specifier for others). */
const graph = new Map<string, string[]>();
/** The same, `import type` included. */
const typedGraph = new Map<string, string[]>();
for (const f of sources()) {
  graph.set(f, resolved(f, false));
  typedGraph.set(f, resolved(f, true));
}

/** True when the dependency `d` is a file in one of the src folders `areas`. */
const inArea = (d: string, areas: readonly string[]): boolean => areas.some((a) => d.startsWith(path.join(SRC, a) + path.sep));

/** Cycles of a graph, each as `a → b → a`. */
function cyclesOf(g: ReadonlyMap<string, readonly string[]>, show: (n: string) => string): string[] {
  const state = new Map<string, 'visiting' | 'done'>();
  const cycles: string[] = [];
  const visit = (f: string, stack: string[]): void => {
    state.set(f, 'visiting');
    for (const d of g.get(f) ?? []) {
      if (!g.has(d)) continue;
      if (state.get(d) === 'visiting') {
        cycles.push([...stack.slice(stack.indexOf(d)), d].map(show).join(' → '));
      } else if (!state.has(d)) {
        visit(d, [...stack, d]);
      }
    }
    state.set(f, 'done');
  };
  for (const f of g.keys()) if (!state.has(f)) visit(f, [f]);
  return cycles;
}

/**
 * Code that runs inside a qube, and what it may use: nothing else (no
 * host-side folder, no npm package), Node's own modules aside.
 */
const QUBE_SIDE = ['agent', 'qube', 'services', 'native', 'vchan', 'protocol', 'common'];

test('src/policy is pure: it imports only itself', () => {
  const bad: string[] = [];
  for (const [f, deps] of graph) {
    if (area(f) !== 'policy') continue;
    for (const d of deps) if (!d.startsWith(path.join(SRC, 'policy') + path.sep)) bad.push(`${path.relative(ROOT, f)} imports ${d}`);
  }
  assert.deepEqual(bad, []);
});

test('src/protocol imports only itself and src/common, and no Node module but node:buffer', () => {
  const bad: string[] = [];
  for (const [f, deps] of graph) {
    if (area(f) !== 'protocol') continue;
    for (const d of deps) {
      const ok = d === 'node:buffer' || ['protocol', 'common'].some((a) => d.startsWith(path.join(SRC, a) + path.sep));
      if (!ok) bad.push(`${path.relative(ROOT, f)} imports ${d}`);
    }
  }
  assert.deepEqual(bad, []);
});

test('src/gui runs inside a qube: it imports only Node modules and qube-side code (no host-side code)', () => {
  const qubeSide = ['gui', ...QUBE_SIDE];
  const bad: string[] = [];
  for (const [f, deps] of graph) {
    if (area(f) !== 'gui' || f.includes(`${path.sep}web${path.sep}`)) continue;
    for (const d of deps) {
      const ok = d.startsWith('node:') || qubeSide.some((a) => d.startsWith(path.join(SRC, a) + path.sep));
      if (!ok) bad.push(`${path.relative(ROOT, f)} imports ${d}`);
    }
  }
  assert.deepEqual(bad, []);
});

test('the GUI front end (src/gui/web) imports only itself, Preact and xterm.js (bundled: no other origin)', () => {
  const bad: string[] = [];
  for (const f of sources(path.join(SRC, 'gui', 'web')).concat(fs.readdirSync(path.join(SRC, 'gui', 'web')).filter((n) => n.endsWith('.tsx')).map((n) => path.join(SRC, 'gui', 'web', n)))) {
    for (const d of importsOf(f)) {
      const ok = d === 'preact' || d.startsWith('preact/') || d === '@xterm/xterm' || (d.startsWith('./') && !d.includes('..'));
      if (!ok) bad.push(`${path.relative(ROOT, f)} imports ${d}`);
    }
  }
  assert.deepEqual(bad, []);
});

test('nothing imports src/cli; only src/cli imports src/host (the host process is the top)', () => {
  const bad: string[] = [];
  for (const [f, deps] of graph) {
    for (const d of deps) {
      if (!d.startsWith(SRC)) continue;
      const to = area(d);
      if (to === 'cli' && area(f) !== 'cli') bad.push(`${path.relative(ROOT, f)} imports ${path.relative(ROOT, d)}`);
      if (to === 'host' && !['cli', 'host'].includes(area(f))) bad.push(`${path.relative(ROOT, f)} imports ${path.relative(ROOT, d)}`);
    }
  }
  assert.deepEqual(bad, []);
});

test('qubesd, the runtime and the host import in one direction: host -> qubesd -> runtime', () => {
  const order = ['runtime', 'qubesd', 'host'];
  const bad: string[] = [];
  for (const [f, deps] of graph) {
    const from = order.indexOf(area(f));
    if (from < 0) continue;
    for (const d of deps) {
      if (!d.startsWith(SRC)) continue;
      const to = order.indexOf(area(d));
      if (to > from) bad.push(`${path.relative(ROOT, f)} imports ${path.relative(ROOT, d)}`);
    }
  }
  assert.deepEqual(bad, []);
});

test('no import cycles between src files, type-only imports included', () => {
  assert.deepEqual(cyclesOf(typedGraph, (x) => path.relative(SRC, x)), []);
});

test('no import cycles between src folders (the folders form layers), type-only imports included', () => {
  const folders = new Map<string, string[]>();
  for (const [f, deps] of typedGraph) {
    const from = area(f);
    const to = folders.get(from) ?? [];
    for (const d of deps) if (d.startsWith(SRC + path.sep) && area(d) !== from && !to.includes(area(d))) to.push(area(d));
    folders.set(from, to);
  }
  assert.deepEqual(cyclesOf(folders, (x) => `src/${x}`), []);
});

test('code that runs inside a qube (src/agent, src/services, src/native, ...) imports nothing host-side', () => {
  const bad: string[] = [];
  for (const [f, deps] of typedGraph) {
    if (!QUBE_SIDE.includes(area(f))) continue;
    for (const d of deps) if (!d.startsWith('node:') && !inArea(d, QUBE_SIDE)) bad.push(`${path.relative(ROOT, f)} imports ${d}`);
  }
  assert.deepEqual(bad, []);
});

test('src/daemon (the host side of qrexec) reaches what dom0 runs through src/services, not src/agent', () => {
  const bad: string[] = [];
  for (const [f, deps] of typedGraph) {
    if (area(f) !== 'daemon') continue;
    for (const d of deps) if (inArea(d, ['agent'])) bad.push(`${path.relative(ROOT, f)} imports ${path.relative(ROOT, d)}`);
  }
  assert.deepEqual(bad, []);
});

test('only the host process and commands import the qubesd server; its clients (src/qubesd-client) import none of it', () => {
  const bad: string[] = [];
  for (const [f, deps] of typedGraph) {
    const from = area(f);
    for (const d of deps) {
      if (!inArea(d, ['qubesd']) || ['qubesd', 'host', 'cli'].includes(from)) continue;
      bad.push(`${path.relative(ROOT, f)} imports ${path.relative(ROOT, d)}`);
    }
    if (from === 'qubesd-client') {
      for (const d of deps) if (!d.startsWith('node:') && !inArea(d, ['qubesd-client', 'common'])) bad.push(`${path.relative(ROOT, f)} imports ${d}`);
    }
  }
  assert.deepEqual(bad, []);
});

test('src/policy compiles without Node types (tsconfig.pure.json)', { timeout: 120_000 }, () => {
  const tsc = path.join(ROOT, 'node_modules/typescript/bin/tsc');
  const r = spawnSync(process.execPath, [tsc, '-p', path.join(ROOT, 'tsconfig.pure.json')], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stdout + r.stderr);
});
