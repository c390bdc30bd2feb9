/**
 * The Admin API from qubes, on the one test system (test/qvm/system.ts:
 * bin/qubesd with the process backend and bin/qrexec-policy-daemon on one
 * policy directory): raw calls as dom0, and a way to run commands "inside"
 * a started qube, with its agent socket and vchan domain, so that
 * qrexec-client-vm calls leave from it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { raw, req } from './helpers.js';
import { ROOT, runProgram, startSystem, type RunResult } from '../qvm/system.js';

export { ROOT, type RunResult };

/** Run `cmd` with `env`; `input` on its stdin. */
export function run(cmd: string, args: readonly string[], env: NodeJS.ProcessEnv, input = ''): Promise<RunResult> {
  return runProgram(cmd, args, { env, input });
}

export interface QrexecSystem {
  readonly dir: string;
  /** qubesd's Admin API socket (dom0's view). */
  readonly sock: string;
  readonly policyDir: string;
  /** dom0 calls qubesd directly; the reply as latin1. */
  admin(method: string, dest?: string, arg?: string, payload?: string): Promise<string>;
  /** Start a qube and return the environment of a program run inside it (qrexec-client-vm leaves from it). */
  enter(qube: string): Promise<NodeJS.ProcessEnv>;
  /** `qrexec-client-vm TARGET SERVICE` from inside a started qube. */
  call(env: NodeJS.ProcessEnv, target: string, service: string, input?: string): Promise<RunResult>;
  close(): Promise<void>;
}

/** Start qubesd and the policy daemon on `policy` (file name → text, written into a fresh policy directory). */
export async function startQrexecSystem(policy: ReadonlyMap<string, string>): Promise<QrexecSystem> {
  const sys = await startSystem({ policy });
  const admin = async (method: string, dest = 'dom0', arg = '', payload = ''): Promise<string> =>
    (await raw(sys.sock, req(method, dest, arg, payload), { timeoutMs: 60000 })).data.toString('latin1');
  return {
    dir: sys.dir,
    sock: sys.sock,
    policyDir: sys.policyDir,
    admin,
    async enter(qube) {
      const started = await admin('admin.vm.Start', qube);
      if (started !== '0\0') throw new Error(`cannot start ${qube}: ${JSON.stringify(started)}`);
      const xid = (await admin('admin.vm.property.Get', qube, 'xid')).split(' ').at(-1) as string;
      const client = path.join(sys.dir, `qrexec-client-vm.${qube}`);
      // what "qrexec-client-vm" is inside this qube: ours, connected to the qube's agent
      fs.writeFileSync(
        client,
        `#!/bin/sh\nexec '${path.join(ROOT, 'bin/qrexec-client-vm')}' '--agent-socket=${path.join(sys.dataDir, 'qubes', qube, 'agent.sock')}' "$@"\n`,
        { mode: 0o755 },
      );
      const env: NodeJS.ProcessEnv = { ...process.env, VCHAN_SOCKET_DIR: path.join(sys.runDir, 'vchan'), VCHAN_DOMAIN: xid, QREXEC_CLIENT_VM: client };
      delete env['QUBESD_SOCKET'];
      return env;
    },
    call: (env, target, service, input = '') => run(env['QREXEC_CLIENT_VM'] as string, [target, service], env, input),
    close: () => sys.close(),
  };
}
