/**
 * How a sandbox starts its agent (docs/RUNTIME.md, "Start time"): from the
 * V8 startup snapshot `npm run build` made, from the one-file bundle, or
 * from bin/qrexec-agent and its modules. Each way the agent serves calls,
 * with the native addon (per-call signal relays), which a snapshot loads
 * at run time. Root only.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { SandboxWorld, SH_SERVICE, sandboxSkipReason } from './world.js';
import { agentEntry } from '../../src/runtime/sandbox/sandbox.js';

const skip = sandboxSkipReason();
const opts = { skip: skip ?? false };
let w: SandboxWorld;

before(async () => {
  if (skip) return;
  w = await SandboxWorld.create([{ name: 'work', domid: 1, uuid: '11111111-1111-4111-8111-111111111111' }]);
  w.service('work', 'test.Sh', SH_SERVICE);
});

after(async () => {
  delete process.env['QREXEC_TS_AGENT_START'];
  await w?.close();
});

void test('npm run build made the bundle and a snapshot for this Node: the snapshot is the default', opts, () => {
  delete process.env['QREXEC_TS_AGENT_START'];
  assert.deepEqual(agentEntry(), ['--snapshot-blob', '/run/qrexec-ts/dist/src/cli/qrexec-agent.snapshot.blob', '/run/qrexec-ts/dist/src/cli/qrexec-agent.bundle.js']);
});

for (const [mode, marker] of [['snapshot', '--snapshot-blob'], ['bundle', 'qrexec-agent.bundle.js'], ['modules', 'bin/qrexec-agent']] as const) {
  void test(`the agent started from its ${mode} serves calls, with its native addon`, opts, async () => {
    process.env['QREXEC_TS_AGENT_START'] = mode;
    try {
      const sb = await w.start('work');
      await w.hostReady();
      const agent = sb.pids().find((p) => {
        try {
          return fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('--agent-socket');
        } catch {
          return false;
        }
      });
      assert.ok(agent !== undefined, 'no agent process');
      const cmd = fs.readFileSync(`/proc/${agent}/cmdline`, 'utf8').split('\0');
      assert.ok(cmd.some((a) => a.includes(marker)), cmd.join(' '));
      const r = await w.sh('work', 'cat /etc/hostname; id -un\n');
      assert.equal(r.out, 'work\nuser\n', r.err);
      // the native addon loaded (at run time, also with the snapshot): the call's QREXEC_AGENT_PID is a relay of its signal relay server
      const s = await w.sh('work', 'cat /proc/$QREXEC_AGENT_PID/comm\n');
      assert.equal(s.out, 'qrexec-sigrelay\n', s.err);
    } finally {
      await w.stop('work');
    }
  });
}
