/**
 * The public API can be imported by package name: `qrexec-ts` (and its
 * subpaths) resolves through package.json "exports" at run time, and a
 * TypeScript program outside the repository that imports it compiles
 * against the shipped declarations and runs.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

test('import by package name: the policy engine, callService, the protocol codec', async () => {
  const name = 'qrexec-ts'; // a variable: resolved by Node at run time, through "exports"
  const api = (await import(name)) as Record<string, unknown>;
  for (const f of ['callService', 'decide', 'decisionToJson', 'loadRules', 'memorySource', 'loadPolicyFromDisk', 'parseSystemInfo', 'explain', 'FrameDecoder', 'encodeMessage', 'parseCommand', 'helloRules']) {
    assert.equal(typeof api[f], 'function', `qrexec-ts exports ${f}`);
  }
  assert.equal(typeof api['MsgType'], 'object');
  const client = (await import(`${name}/client`)) as Record<string, unknown>;
  assert.equal(client['callService'], api['callService']);
  const policy = (await import(`${name}/policy`)) as Record<string, unknown>;
  assert.equal(policy['decide'], api['decide']);
  const protocol = (await import(`${name}/protocol`)) as Record<string, unknown>;
  assert.equal(protocol['FrameDecoder'], api['FrameDecoder']);
  // internals stay internal
  await assert.rejects(import(`${name}/dist/src/agent/agent.js`), /ERR_PACKAGE_PATH_NOT_EXPORTED|not exported/);
});

test('a TypeScript program elsewhere imports { callService, decide, ... } from "qrexec-ts", compiles and runs', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qrexec-ts-consumer-'));
  try {
    fs.mkdirSync(path.join(dir, 'node_modules', '@types'), { recursive: true });
    fs.symlinkSync(ROOT, path.join(dir, 'node_modules', 'qrexec-ts'));
    fs.symlinkSync(path.join(ROOT, 'node_modules', '@types', 'node'), path.join(dir, 'node_modules', '@types', 'node'));
    fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'consumer', type: 'module', private: true }));
    fs.writeFileSync(
      path.join(dir, 'tsconfig.json'),
      JSON.stringify({ compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, outDir: 'out', types: ['node'] }, include: ['main.ts'] }),
    );
    fs.writeFileSync(
      path.join(dir, 'main.ts'),
      [
        "import { callService, decide, decisionToJson, loadRules, memorySource, Policy, parseSystemInfo, FrameDecoder, helloRules, encodeMessage, MsgType, type CallResult } from 'qrexec-ts';",
        "import { callService as viaSubpath } from 'qrexec-ts/client';",
        "import type { DecisionJson } from 'qrexec-ts/policy';",
        "const info = parseSystemInfo({ domains: { dom0: { tags: [], type: 'AdminVM', template_for_dispvms: false, default_dispvm: null, icon: 'x', label: 'black', guivm: null, relayvm: null, transport_rpc: null, internal: null, power_state: 'Running', uuid: '00000000-0000-0000-0000-000000000000' }, work: { tags: [], type: 'AppVM', template_for_dispvms: false, default_dispvm: null, icon: 'x', label: 'red', guivm: 'dom0', relayvm: null, transport_rpc: null, internal: null, power_state: 'Running', uuid: '11111111-1111-4111-8111-111111111111' }, vault: { tags: [], type: 'AppVM', template_for_dispvms: false, default_dispvm: null, icon: 'x', label: 'black', guivm: 'dom0', relayvm: null, transport_rpc: null, internal: null, power_state: 'Running', uuid: '22222222-2222-4222-8222-222222222222' } } });",
        "const rules = loadRules(memorySource(new Map([['/p/30-a.policy', 'test.Echo * work vault allow\\n']])), { policyDirs: ['/p'], legacyDir: '/none' });",
        "const policy = new Policy(rules);",
        "const d: DecisionJson = decisionToJson(decide(policy, { source: 'work', intendedTarget: 'vault', serviceAndArg: 'test.Echo', requestedSource: undefined }, info), info);",
        'const frames = [...new FrameDecoder(helloRules).push(encodeMessage(MsgType.HELLO, Buffer.alloc(4)))];',
        "const call: (t: string, s: string) => Promise<CallResult> = callService;",
        "console.log(JSON.stringify({ d, frames: frames.length, same: call === viaSubpath }));",
      ].join('\n'),
    );
    const tsc = spawnSync(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', dir], { encoding: 'utf8', cwd: dir });
    assert.equal(tsc.status, 0, `tsc:\n${tsc.stdout}${tsc.stderr}`);
    const run = spawnSync(process.execPath, [path.join(dir, 'out', 'main.js')], { encoding: 'utf8', cwd: dir });
    assert.equal(run.status, 0, run.stderr);
    const out = JSON.parse(run.stdout) as { d: Record<string, unknown>; frames: number; same: boolean };
    assert.equal(out.d['result'], 'allow');
    assert.equal(out.d['target'], 'vault');
    assert.equal(out.d['rule'], '30-a.policy:1');
    assert.equal(out.frames, 1);
    assert.equal(out.same, true);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
