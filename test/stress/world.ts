// Real processes for the stress tests: bin/qrexec-host (policy daemon and the
// daemons of every qube in one process) and one bin/qrexec-agent per qube, in a
// fresh directory; calls made as the clients of issue #8 make them, each with
// a deadline, so that a lost byte or a hung call is counted, never waited for.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { access, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { callService } from '../../src/agent/index.js';
import { World, BIN, waitFor } from '../e2e/harness.js';

export const uuid = (id: number): string => `00000000-0000-0000-0000-${String(id).padStart(12, '0')}`;

/** A host with `qubes` (domain ids 1..n), `policy` as its only policy file and dom0 services in `<dir>/rpc-dom0`. */
export async function hostWorld(qubes: readonly string[], policy: string): Promise<World> {
  const w = await World.create();
  const policyDir = join(w.dir, 'policy.d');
  await mkdir(policyDir);
  await writeFile(join(policyDir, '30-stress.policy'), policy);
  const dom = (type: string, id: number): object => ({ tags: [], type, template_for_dispvms: false, default_dispvm: null, icon: 'x', label: 'red', guivm: null, relayvm: null, transport_rpc: null, internal: null, power_state: 'Running', uuid: uuid(id) });
  const domains: Record<string, object> = { dom0: dom('AdminVM', 0) };
  qubes.forEach((q, i) => (domains[q] = dom('AppVM', i + 1)));
  await writeFile(join(w.dir, 'system-info.json'), JSON.stringify({ domains }));
  await mkdir(join(w.dir, 'rpc-dom0'), { recursive: true });
  for (const [i, q] of qubes.entries()) await w.agent(i + 1, q);
  w.start(
    BIN('qrexec-host'),
    [
      '--policy-path', policyDir, '--socket-path', join(w.dir, 'policy.sock'), '--system-info', join(w.dir, 'system-info.json'),
      '--eval-socket-path', 'none', '--gui-socket-path', 'none', '--qubesd-events-socket', 'none', '--audit-db', join(w.dir, 'audit.sqlite'),
      `--qrexec-socket-dir=${w.sockDir}`, ...qubes.map((q, i) => `--qube=${i + 1}:${q}:${uuid(i + 1)}:root`),
    ],
    w.env({ VCHAN_DOMAIN: '0', QREXEC_SERVICE_PATH: join(w.dir, 'rpc-dom0') }),
  );
  for (const q of qubes) await waitFor(() => access(join(w.sockDir, `qrexec.${q}`)).then(() => true, () => false), 20000, `qrexec.${q}`);
  return w;
}

/** What one call gave its caller. `hung` when it did not end within the deadline. */
export interface Outcome {
  code: number;
  stdout: Buffer;
  stderr: Buffer;
  hung: boolean;
  ms: number;
}

/** Runs `cmd` as a whole process; stdin is ended at once or only after the process exited. */
export function processCall(cmd: string, args: string[], env: NodeJS.ProcessEnv, keepStdinOpen: boolean, deadlineMs: number): Promise<Outcome> {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let hung = false;
    const timer = setTimeout(() => {
      hung = true;
      p.kill('SIGKILL');
    }, deadlineMs);
    p.stdout.on('data', (d: Buffer) => out.push(d));
    p.stderr.on('data', (d: Buffer) => err.push(d));
    p.stdin.on('error', () => undefined);
    if (!keepStdinOpen) p.stdin.end();
    p.on('close', (code, sig) => {
      clearTimeout(timer);
      p.stdin.destroy();
      resolve({ code: code ?? 128 + (sig ? 9 : 0), stdout: Buffer.concat(out), stderr: Buffer.concat(err), hung, ms: Number(process.hrtime.bigint() - t0) / 1e6 });
    });
  });
}

/** A call through the callService library, from the qube with domain id `own` (its agent socket in `w.dir`). */
export async function libraryCall(w: World, source: string, own: number, target: string, service: string, keepStdinOpen: boolean, deadlineMs: number, logs: string[]): Promise<Outcome> {
  const t0 = process.hrtime.bigint();
  const stdin = keepStdinOpen ? new PassThrough() : undefined;
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<'hung'>((r) => (timer = setTimeout(() => r('hung'), deadlineMs)));
  try {
    const r = await Promise.race([
      callService(target, service, { agentSocket: join(w.dir, `agent-${source}.sock`), vchan: { dir: w.dir, ownDomain: own }, ...(stdin ? { stdin } : {}), log: (m) => logs.push(`callService: ${m}`) }),
      deadline,
    ]);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    if (r === 'hung') return { code: -1, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), hung: true, ms };
    return { code: r.refused ? 126 : r.exitCode, stdout: r.stdout, stderr: r.stderr, hung: false, ms };
  } finally {
    clearTimeout(timer);
    stdin?.destroy();
  }
}

export const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex').slice(0, 16);

/** Runs `jobs` with at most `width` at a time. */
export async function pool<T>(jobs: (() => Promise<T>)[], width: number): Promise<T[]> {
  const out: T[] = new Array<T>(jobs.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < jobs.length) {
      const i = next++;
      out[i] = await (jobs[i] as () => Promise<T>)();
    }
  };
  await Promise.all(Array.from({ length: Math.min(width, jobs.length) }, worker));
  return out;
}

export const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
};
