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

/**
 * xterm.js under the strict CSP (see src/gui/web/csp-styles.ts): its run-time
 * `<style>` elements become constructable stylesheets, and its per-cell
 * `setAttribute('style', …)` goes through the CSSOM. The build fails if the
 * bundled xterm.js no longer has exactly the places this rewrites (an
 * upgrade must be looked at, not silently break the terminal's look).
 */
const cspXterm = {
  name: 'xterm-csp',
  setup(b) {
    b.onLoad({ filter: /[\\/]@xterm[\\/]xterm[\\/]lib[\\/]xterm\.mjs$/ }, async (args) => {
      let code = fs.readFileSync(args.path, 'utf8');
      let styles = 0;
      let attrs = 0;
      code = code.replace(/([A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*)\.createElement\("style"\)/g, (_m, doc) => (styles++, `__qguiStyle(${doc})`));
      code = code.replace(/([A-Za-z_$][\w$]*)\.setAttribute\("style",`\$\{\1\.getAttribute\("style"\)\|\|""\}\$\{([A-Za-z_$][\w$]*)\};`\)/g, (_m, el, s) => (attrs++, `${el}.style.cssText+=\`\${${s}};\``));
      if (styles !== 3 || attrs !== 1) throw new Error(`xterm-csp: expected 3 style elements and 1 style attribute in ${args.path}, found ${styles} and ${attrs}`);
      const shim = JSON.stringify(path.join(src, 'csp-styles.ts'));
      return { contents: `import { cspStyleElement as __qguiStyle } from ${shim};\n${code}`, loader: 'js', resolveDir: path.dirname(args.path) };
    });
  },
};

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
  plugins: [cspXterm],
});
await build({ entryPoints: { app: path.join(src, 'styles.css') }, bundle: true, minify: true, outdir: out, logLevel: 'warning' });
fs.copyFileSync(path.join(src, 'index.html'), path.join(out, 'index.html'));
