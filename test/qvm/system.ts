/**
 * A real small Qubes system for tests (the one harness of the qvm-*, qubesd
 * from qubes and audio tests): bin/qubesd with the `process` runtime (each
 * qube a real qrexec-agent with its qrexec-daemon), optionally a real policy
 * daemon with the given policy (for calls between qubes; qubesd filters by
 * the same policy directory), in a fresh temp directory; and runners for
 * programs, in dom0 (QUBESD_SOCKET) or inside a qube (its agent socket and
 * vchan domain). A program's output is kept as bytes (`bytes`) and as text
 * (`out`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

export interface RunResult {
  readonly code: number | null;
  /** stdout as UTF-8 text. */
  readonly out: string;
  /** stdout as it came (binary output). */
  readonly bytes: Buffer;
  readonly err: string;
}

export interface RunOpts {
  readonly input?: string | Buffer;
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
  /** Send stdout to this regular file instead of a pipe. */
  readonly stdoutFile?: string;
  readonly timeoutMs?: number;
}

export function runProgram(file: string, args: readonly string[], o: RunOpts = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const outFd = o.stdoutFile ? fs.openSync(o.stdoutFile, 'w') : undefined;
    const p = spawn(file, args, { env: o.env ?? process.env, cwd: o.cwd, stdio: ['pipe', outFd ?? 'pipe', 'pipe'] });
    if (outFd !== undefined) fs.closeSync(outFd);
    const out: Buffer[] = [];
    let err = '';
    p.stdout?.on('data', (c: Buffer) => out.push(c));
    p.stderr?.on('data', (c: Buffer) => (err += c.toString()));
    p.stdin?.on('error', () => undefined);
    p.stdin?.end(o.input ?? '');
    const timer = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`${path.basename(file)} ${args.join(' ')}: timeout; stderr: ${err}`));
    }, o.timeoutMs ?? 60_000);
    p.on('error', reject);
    p.on('close', (code) => {
      clearTimeout(timer);
      const bytes = Buffer.concat(out);
      resolve({ code, out: bytes.toString(), bytes, err });
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function answers(sock: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ path: sock, allowHalfOpen: true });
    let got = false;
    s.on('connect', () => s.end('admin.vm.List+ dom0 name dom0\0'));
    s.on('data', () => (got = true));
    s.on('error', () => resolve(false));
    s.on('close', () => resolve(got));
  });
}

export interface TestSystem {
  readonly dir: string;
  readonly dataDir: string;
  readonly runDir: string;
  readonly sock: string;
  readonly policyDir: string;
  /** Environment for dom0 commands. */
  readonly env: NodeJS.ProcessEnv;
  /** Run bin/NAME in dom0. */
  dom0(name: string, args: readonly string[], o?: RunOpts): Promise<RunResult>;
  /** Run a program inside a (running) qube: its agent socket, vchan domain, HOME. */
  inQube(qube: string, file: string, args: readonly string[], o?: RunOpts): Promise<RunResult>;
  /** The qube's home directory (process runtime). */
  home(qube: string): string;
  /** The qube's own service directory. */
  rpcDir(qube: string): string;
  close(): Promise<void>;
}

/**
 * Starts qubesd (process runtime) and, with `policy` (the text of one file,
 * or file name → text), a policy daemon reading it.
 */
export async function startSystem(opts: { policy?: string | ReadonlyMap<string, string> } = {}): Promise<TestSystem> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qvm-system-'));
  const dataDir = path.join(dir, 'data');
  const runDir = path.join(dir, 'run');
  const policyDir = path.join(dir, 'policy');
  fs.mkdirSync(policyDir);
  const policy = typeof opts.policy === 'string' ? new Map([['50-test.policy', opts.policy]]) : opts.policy;
  for (const [name, text] of policy ?? []) {
    fs.mkdirSync(path.dirname(path.join(policyDir, name)), { recursive: true });
    fs.writeFileSync(path.join(policyDir, name), text);
  }
  const policySock = path.join(runDir, 'policy.sock');
  const procs: ChildProcess[] = [];
  const sock = path.join(runDir, 'qubesd.sock');
  const qd = spawn(process.execPath, [path.join(ROOT, 'bin/qubesd'), '--data-dir', dataDir, '--run-dir', runDir, '--policy-dir', policyDir], {
    stdio: ['ignore', 'ignore', 'inherit'],
    env: { ...process.env, QREXEC_POLICY_SOCKET: policySock },
  });
  procs.push(qd);
  for (let i = 0; i < 500 && !(await answers(sock)); i++) await sleep(20);
  if (policy !== undefined) {
    const pd = spawn(
      process.execPath,
      [
        path.join(ROOT, 'bin/qrexec-policy-daemon'),
        ...['--policy-path', policyDir, '--socket-path', policySock, '--eval-socket-path', 'none', '--gui-socket-path', 'none'],
        ...['--qubesd-socket', path.join(runDir, 'qubesd.internal.sock'), '--qubesd-events-socket', sock, '--no-audit'],
      ],
      { stdio: 'ignore' },
    );
    procs.push(pd);
    for (let i = 0; i < 500 && !fs.existsSync(policySock); i++) await sleep(20);
  }
  const env: NodeJS.ProcessEnv = { ...process.env, QUBESD_SOCKET: sock };
  delete env['QREXEC_SOCKET_DIR'];
  delete env['VCHAN_SOCKET_DIR'];
  delete env['VCHAN_SOCKET_LAYOUT'];
  const sys: TestSystem = {
    dir,
    dataDir,
    runDir,
    sock,
    policyDir,
    env,
    dom0: (name, args, o = {}) => runProgram(path.join(ROOT, 'bin', name), args, { ...o, env: { ...env, ...(o.env ?? {}) } }),
    async inQube(qube, file, args, o = {}) {
      const xid = (await sys.dom0('qvm-prefs', [qube, 'xid'])).out.trim();
      const qenv: NodeJS.ProcessEnv = {
        ...process.env,
        HOME: sys.home(qube),
        QUBES_QREXEC_AGENT_SOCKET: path.join(dataDir, 'qubes', qube, 'agent.sock'),
        VCHAN_SOCKET_DIR: path.join(runDir, 'vchan'),
        VCHAN_DOMAIN: xid,
        ...(o.env ?? {}),
      };
      delete qenv['QUBESD_SOCKET'];
      return runProgram(file, args, { ...o, cwd: o.cwd ?? sys.home(qube), env: qenv });
    },
    home: (qube) => path.join(dataDir, 'qubes', qube, 'home'),
    rpcDir: (qube) => path.join(dataDir, 'qubes', qube, 'rpc'),
    async close() {
      for (const p of procs.reverse()) {
        if (p.exitCode !== null || p.signalCode !== null) continue;
        const gone = new Promise((r) => p.once('exit', r));
        p.kill('SIGTERM');
        const t = setTimeout(() => p.kill('SIGKILL'), 10_000);
        await gone;
        clearTimeout(t);
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  return sys;
}
