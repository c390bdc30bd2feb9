/**
 * A small real system for tests of the Admin API from qubes: bin/qubesd
 * (process backend) and bin/qrexec-policy-daemon on one policy directory,
 * and a way to run commands "inside" a started qube: with its agent
 * socket and vchan domain, so that qrexec-client-vm calls leave from it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { raw, req } from './helpers.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

export interface RunResult {
  readonly code: number | null;
  readonly out: Buffer;
  readonly err: string;
}

export function run(cmd: string, args: readonly string[], env: NodeJS.ProcessEnv, input = ''): Promise<RunResult> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    p.stdout.on('data', (c: Buffer) => out.push(c));
    p.stderr.on('data', (c: Buffer) => (err += c.toString()));
    p.stdin.on('error', () => undefined);
    p.stdin.end(input);
    p.on('close', (code) => resolve({ code, out: Buffer.concat(out), err }));
  });
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

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Start qubesd and the policy daemon on `policy` (file name → text, written into a fresh policy directory). */
export async function startQrexecSystem(policy: ReadonlyMap<string, string>): Promise<QrexecSystem> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qubesd-qrexec-'));
  const runDir = path.join(dir, 'run');
  const policyDir = path.join(dir, 'policy');
  for (const [name, text] of policy) {
    fs.mkdirSync(path.dirname(path.join(policyDir, name)), { recursive: true });
    fs.writeFileSync(path.join(policyDir, name), text);
  }
  fs.mkdirSync(policyDir, { recursive: true });
  const procs: ChildProcess[] = [];
  const policySock = path.join(runDir, 'policy.sock');
  const sock = path.join(runDir, 'qubesd.sock');
  const close = async (): Promise<void> => {
    for (const p of procs.reverse()) {
      p.kill('SIGTERM');
      await new Promise((r) => (p.exitCode !== null || p.signalCode !== null ? r(null) : p.once('exit', r)));
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };
  try {
    procs.push(
      spawn(process.execPath, [path.join(ROOT, 'bin/qubesd'), '--data-dir', path.join(dir, 'data'), '--run-dir', runDir, '--policy-dir', policyDir], {
        stdio: 'ignore',
        env: { ...process.env, QREXEC_POLICY_SOCKET: policySock },
      }),
    );
    for (let i = 0; i < 300 && !(await raw(sock, req('admin.vm.List')).then((r) => r.data.length > 0, () => false)); i++) await sleep(30);
    procs.push(
      spawn(
        process.execPath,
        [
          path.join(ROOT, 'bin/qrexec-policy-daemon'),
          '--policy-path', policyDir,
          '--socket-path', policySock,
          '--eval-socket-path', 'none',
          '--gui-socket-path', 'none',
          '--qubesd-socket', path.join(runDir, 'qubesd.internal.sock'),
          '--qubesd-events-socket', sock,
          '--no-audit',
        ],
        { stdio: 'ignore' },
      ),
    );
    for (let i = 0; i < 300 && !fs.existsSync(policySock); i++) await sleep(30);
  } catch (e) {
    await close();
    throw e;
  }
  const admin = async (method: string, dest = 'dom0', arg = '', payload = ''): Promise<string> =>
    (await raw(sock, req(method, dest, arg, payload), { timeoutMs: 60000 })).data.toString('latin1');
  return {
    dir,
    sock,
    policyDir,
    admin,
    async enter(qube) {
      const started = await admin('admin.vm.Start', qube);
      if (started !== '0\0') throw new Error(`cannot start ${qube}: ${JSON.stringify(started)}`);
      const xid = (await admin('admin.vm.property.Get', qube, 'xid')).split(' ').at(-1) as string;
      const client = path.join(dir, `qrexec-client-vm.${qube}`);
      // what "qrexec-client-vm" is inside this qube: ours, connected to the qube's agent
      fs.writeFileSync(
        client,
        `#!/bin/sh\nexec '${path.join(ROOT, 'bin/qrexec-client-vm')}' '--agent-socket=${path.join(dir, 'data', 'qubes', qube, 'agent.sock')}' "$@"\n`,
        { mode: 0o755 },
      );
      const env: NodeJS.ProcessEnv = { ...process.env, VCHAN_SOCKET_DIR: path.join(runDir, 'vchan'), VCHAN_DOMAIN: xid, QREXEC_CLIENT_VM: client };
      delete env['QUBESD_SOCKET'];
      return env;
    },
    call: (env, target, service, input = '') => run(env['QREXEC_CLIENT_VM'] as string, [target, service], env, input),
    close,
  };
}
