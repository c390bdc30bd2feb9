#!/usr/bin/env node
// Builds the GUI domain's front end (src/gui/web) into dist/gui-web with
// esbuild: one ES module bundle, one stylesheet, the HTML template. Nothing
// is fetched: Preact comes from node_modules.
import { build } from 'esbuild';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const src = path.join(root, 'src/gui/web');
const out = path.join(root, 'dist/gui-web');
fs.rmSync(out, { recursive: true, force: true });
fs.mkdirSync(out, { recursive: true });
await build({
  entryPoints: { app: path.join(src, 'main.tsx') },
  bundle: true,
  format: 'esm',
  target: 'es2022',
  jsx: 'automatic',
  jsxImportSource: 'preact',
  minify: true,
  sourcemap: true,
  legalComments: 'none',
  outdir: out,
  logLevel: 'warning',
});
await build({ entryPoints: { app: path.join(src, 'styles.css') }, bundle: true, minify: true, outdir: out, logLevel: 'warning' });
fs.copyFileSync(path.join(src, 'index.html'), path.join(out, 'index.html'));
