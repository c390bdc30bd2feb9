#!/usr/bin/env node
// Bundles the in-qube agent (dist/src/cli/qrexec-agent.js, after tsc) into
// one ES module, dist/src/cli/qrexec-agent.bundle.js, that a bwrap sandbox
// starts: Node then reads and compiles one file instead of some thirty (see
// docs/RUNTIME.md, "Start time"). Same directory as the entry, so the paths
// the code finds from import.meta.url (native/build) stay right.
//
// The build fails if the bundle would hold anything but qube-side code
// (src/agent, services, native, vchan, protocol, common) and Node's own
// modules: the agent imports nothing host-side.
//
// Then a V8 startup snapshot of the same code (`node --build-snapshot`,
// dist/src/cli/qrexec-agent.snapshot.blob): Node starts with the agent's
// modules already evaluated in its heap. A blob works only with the Node
// binary that made it, so qrexec-agent.snapshot.json names that binary; the
// sandbox uses the blob only with the same one, else the bundle. Nothing
// the modules do at load depends on the machine (constants only): the
// entry's main function runs the command line at each start. No snapshot
// (and no error) where this Node cannot build one.
import { build } from 'esbuild';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const QUBE_SIDE = ['agent', 'services', 'native', 'vchan', 'protocol', 'common', 'cli'];
const cli = path.join(root, 'dist/src/cli');
const entry = path.join(cli, 'qrexec-agent.js');

const r = await build({
  entryPoints: [entry],
  outfile: path.join(cli, 'qrexec-agent.bundle.js'),
  bundle: true,
  absWorkingDir: root,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  metafile: true,
  logLevel: 'warning',
  legalComments: 'none',
});
/** Inputs of a build that are not qube-side code. */
const hostSide = (inputs) => Object.keys(inputs).filter((f) => {
  const rel = path.relative(path.join(root, 'dist/src'), path.resolve(root, f));
  const area = rel.split(path.sep)[0];
  return rel.startsWith('..') || !QUBE_SIDE.includes(area) || (area === 'cli' && rel !== path.join('cli', 'qrexec-agent.js'));
});
const bad = hostSide(r.metafile.inputs);
if (bad.length > 0) {
  console.error(`build-agent: the agent bundle would hold host-side code: ${bad.join(', ')}`);
  process.exit(1);
}

// the snapshot: a CommonJS bundle (what --build-snapshot runs) whose main
// function, run at each start, gets the paths from import.meta.url from its
// argv[1] (the sandbox passes the bundle's path there, as for a script)
const blob = path.join(cli, 'qrexec-agent.snapshot.blob');
const stamp = path.join(cli, 'qrexec-agent.snapshot.json');
const snapEntry = path.join(cli, 'qrexec-agent.snapshot.cjs');
for (const f of [blob, stamp, snapEntry]) fs.rmSync(f, { force: true });
const s = await build({
  stdin: {
    contents: [
      "import { startupSnapshot } from 'node:v8';",
      "import { pathToFileURL } from 'node:url';",
      "import { runAgentCli } from '../agent/cli.js';",
      'startupSnapshot.setDeserializeMainFunction(() => {',
      '  globalThis.__qrexecAgentUrl = pathToFileURL(process.argv[1]).href;',
      '  runAgentCli(process.argv.slice(2)).then((c) => process.exit(c), (e) => { process.stderr.write(`qrexec-agent: ${e?.stack ?? e}\\n`); process.exit(1); });',
      '});',
    ].join('\n'),
    resolveDir: cli,
    sourcefile: 'qrexec-agent.snapshot.mjs',
  },
  outfile: snapEntry,
  bundle: true,
  absWorkingDir: root,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  define: { 'import.meta.url': 'globalThis.__qrexecAgentUrl' },
  metafile: true,
  logLevel: 'error',
  legalComments: 'none',
});
const bad2 = hostSide(s.metafile.inputs).filter((f) => path.basename(f) !== 'qrexec-agent.snapshot.mjs');
if (bad2.length > 0) {
  console.error(`build-agent: the agent snapshot would hold host-side code: ${bad2.join(', ')}`);
  process.exit(1);
}
const made = spawnSync(process.execPath, ['--snapshot-blob', blob, '--build-snapshot', snapEntry], { cwd: cli, encoding: 'utf8' });
fs.rmSync(snapEntry, { force: true });
if (made.status !== 0 || !fs.existsSync(blob)) {
  fs.rmSync(blob, { force: true });
  console.error(`build-agent: no startup snapshot (the agent starts from its bundle): ${(made.stderr || made.error?.message || `exit ${made.status}`).trim().split('\n').pop()}`);
} else {
  const st = fs.statSync(fs.realpathSync(process.execPath));
  fs.writeFileSync(stamp, `${JSON.stringify({ node: process.version, execPath: fs.realpathSync(process.execPath), size: st.size, mtimeMs: st.mtimeMs })}\n`);
}
