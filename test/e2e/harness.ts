// Starts real binaries (bin/qrexec-agent, bin/qrexec-daemon) in a temp directory.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, mkdir, writeFile, chmod, rm, access } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(fileURLToPath(import.meta.url), '../../../..');
export const BIN = (n: string): string => join(ROOT, 'bin', n);

export class World {
  readonly procs: ChildProcess[] = [];
  /** Everything the started processes wrote to stderr (their logs), in arrival order. */
  readonly logs: string[] = [];
  constructor(readonly dir: string) {}
  static async create(): Promise<World> {
    const d = await mkdtemp(join(tmpdir(), 'qrexec-e2e-'));
    await mkdir(join(d, 'sock'));
    return new World(d);
  }
  get sockDir(): string {
    return join(this.dir, 'sock');
  }
  env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
    return { ...process.env, VCHAN_SOCKET_DIR: this.dir, ...extra };
  }
  async service(qube: string, name: string, script: string): Promise<void> {
    const d = join(this.dir, `rpc-${qube}`);
    await mkdir(d, { recursive: true });
    await writeFile(join(d, name), script);
    await chmod(join(d, name), 0o755);
  }
  start(cmd: string, args: string[], env: NodeJS.ProcessEnv): ChildProcess {
    const p = spawn(cmd, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
    p.stderr?.on('data', (d: Buffer) => {
      this.logs.push(d.toString());
      if (process.env['E2E_DEBUG']) process.stderr.write(d);
    });
    this.procs.push(p);
    return p;
  }
  /** An agent for domain `domid` with its own service directory, and its daemon. */
  async qube(domid: number, name: string, extraDaemonArgs: string[] = []): Promise<void> {
    await this.agent(domid, name);
    this.start(BIN('qrexec-daemon'), ['--direct', `--uuid=00000000-0000-0000-0000-0000000000${String(domid).padStart(2, '0')}`, `--socket-dir=${this.sockDir}`, ...extraDaemonArgs, String(domid), name, 'root'], this.env({ VCHAN_DOMAIN: '0' }));
    await waitFor(() => access(join(this.sockDir, `qrexec.${name}`)).then(() => true, () => false), 15000, `daemon for ${name}`);
  }
  /** Only the agent of domain `domid` (its host side is started separately, e.g. by qrexec-host). */
  async agent(domid: number, name: string): Promise<void> {
    await mkdir(join(this.dir, `rpc-${name}`), { recursive: true });
    this.start(BIN('qrexec-agent'), [`--agent-socket=${join(this.dir, `agent-${name}.sock`)}`], this.env({ VCHAN_DOMAIN: String(domid), QREXEC_SERVICE_PATH: join(this.dir, `rpc-${name}`), QUBES_RPC_CONFIG_PATH: join(this.dir, `cfg-${name}`) }));
  }
  async close(): Promise<void> {
    for (const p of this.procs) if (p.exitCode === null) p.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 100));
    for (const p of this.procs) if (p.exitCode === null) p.kill('SIGKILL');
    await rm(this.dir, { recursive: true, force: true });
  }
}

export async function waitFor(f: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await f()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timeout waiting for ${what}`);
}

/** Runs a command with stdin; collects stdout/stderr/exit code. */
export function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, input: Buffer | string = ''): Promise<{ code: number; stdout: Buffer; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    p.stdout.on('data', (d: Buffer) => out.push(d));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.stdin.on('error', () => undefined);
    p.stdin.end(input);
    p.on('close', (code) => resolve({ code: code ?? -1, stdout: Buffer.concat(out), stderr: err }));
  });
}
