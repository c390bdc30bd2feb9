/**
 * A client run inside a shell script shares the script's stdout and stderr.
 * When those are sockets (as Node's child_process makes them, or a socket
 * service's), the call's end must not shut them down: the script's own
 * output after the call must still arrive (the reference closes descriptors
 * 0-2, it never shuts their socket down). Before the fix, `echo after` died
 * of SIGPIPE and a later write to stderr got EPIPE: a qvm-* tool inside a
 * qube lost its error message this way. Every client path: dom0
 * qrexec-client, qrexec-client-vm's C launcher and its Node.js code.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import type { World } from '../e2e/harness.js';
import { BIN, ROOT } from '../e2e/harness.js';
import { hostWorld } from './world.js';

let w: World;

before(async () => {
  w = await hostWorld(['work', 'vault'], 'test.Hello * work vault allow\n');
  await w.service('vault', 'test.Hello', '#!/bin/sh\necho hello\necho hello-err >&2\n');
});
after(async () => {
  await w.close();
});

/** Run `script` with sh; stdout and stderr are socket pairs (Node's 'pipe'). */
function sh(script: string, env: NodeJS.ProcessEnv): Promise<{ code: number | null; signal: string | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const p = spawn('/bin/sh', ['-c', script], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (c: Buffer) => (out += c.toString()));
    p.stderr.on('data', (c: Buffer) => (err += c.toString()));
    p.on('close', (code, signal) => resolve({ code, signal, out, err }));
  });
}

const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

test('the script that ran a client keeps its stdout and stderr after the call', { timeout: 60000 }, async () => {
  const agentSock = `--agent-socket=${join(w.dir, 'agent-work.sock')}`;
  const vmEnv = w.env({ VCHAN_DOMAIN: '1' });
  const clients: [string, string, NodeJS.ProcessEnv][] = [
    ['qrexec-client', `${q(BIN('qrexec-client'))} ${q(`--socket-dir=${w.sockDir}`)} -d vault ${q('root:QUBESRPC test.Hello dom0')}`, w.env()],
    ['client-vm C', `${q(BIN('qrexec-client-vm'))} ${q(agentSock)} vault test.Hello`, vmEnv],
    ['client-vm node', `${q(process.execPath)} ${q(join(ROOT, 'dist/src/cli/qrexec-client-vm.js'))} ${q(agentSock)} vault test.Hello`, vmEnv],
  ];
  for (const [name, cmd, env] of clients) {
    for (let i = 0; i < 3; i++) {
      const r = await sh(`${cmd}; echo "status $?"; echo after; echo after-err >&2; ${cmd} </dev/null; echo again`, env);
      assert.equal(r.signal, null, `${name}: the script was killed (${r.signal}); stdout: ${JSON.stringify(r.out)}`);
      assert.equal(r.out, 'hello\nstatus 0\nafter\nhello\nagain\n', `${name}: stdout`);
      assert.equal(r.err, 'hello-err\nafter-err\nhello-err\n', `${name}: stderr`);
      assert.equal(r.code, 0);
    }
  }
});
