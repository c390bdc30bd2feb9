/**
 * A demo host: two qubes ("work" and "vault"), each a qrexec-agent with its
 * own service directory, and the host side in one qrexec-host process (the
 * policy daemon and both qubes' qrexec daemons), all over the vchan-socket
 * transport in one runtime directory. Qubes
 * here are plain processes (the development backend): there is no isolation.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const bin = (name: string): string => path.join(ROOT, 'bin', name);

/** A qube of the demo. */
export interface DemoQube {
  readonly name: string;
  readonly domid: number;
  readonly uuid: string;
}

export const QUBES: readonly DemoQube[] = [
  { name: 'work', domid: 1, uuid: '6b415a7e-cde9-4144-ba58-8a82f4670327' },
  { name: 'vault', domid: 2, uuid: '33333333-3333-4333-8333-333333333333' },
];

const POLICY = `# Demo policy (new format): SERVICE ARGUMENT SOURCE TARGET ACTION [PARAMS]
demo.Echo       *  work    vault   allow
demo.Echo       *  @anyvm  @anyvm  deny notify=no
demo.Whoami     *  @anyvm  @anyvm  allow
demo.Missing    *  work    vault   allow
* * @anyvm @anyvm deny
`;

/** Services installed in every demo qube. */
function services(qube: string): Record<string, string> {
  return {
    'demo.Echo': '#!/bin/sh\nexec cat\n',
    'demo.Whoami': `#!/bin/sh\necho "this is ${qube}, called by $QREXEC_REMOTE_DOMAIN for $QREXEC_SERVICE_FULL_NAME"\n`,
  };
}

function systemInfo(): object {
  const dom = (type: string, uuid: string): object => ({
    tags: [], type, template_for_dispvms: false, default_dispvm: null, icon: `${type.toLowerCase()}-gray`,
    label: 'gray', guivm: null, relayvm: null, transport_rpc: null, internal: null, power_state: 'Running', uuid,
  });
  const domains: Record<string, object> = { dom0: dom('AdminVM', '00000000-0000-0000-0000-000000000000') };
  for (const q of QUBES) domains[q.name] = dom('AppVM', q.uuid);
  return { domains };
}

export interface CallResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

export class DemoHost {
  private readonly procs: ChildProcess[] = [];
  private constructor(readonly dir: string) {}

  /** Where the qrexec-client-vm of a qube reaches its agent. */
  agentSocket(q: DemoQube): string {
    return path.join(this.dir, `agent-${q.name}.sock`);
  }

  get policyDir(): string {
    return path.join(this.dir, 'policy.d');
  }

  /** Environment for a program running "in" a qube. */
  qubeEnv(q: DemoQube): NodeJS.ProcessEnv {
    return { ...process.env, VCHAN_SOCKET_DIR: this.dir, VCHAN_DOMAIN: String(q.domid) };
  }

  static async start(log: (s: string) => void, verbose = false): Promise<DemoHost> {
    const host = new DemoHost(fs.mkdtempSync(path.join(os.tmpdir(), 'qrexec-demo-')));
    try {
      await host.boot(log, verbose);
    } catch (e) {
      await host.stop();
      throw e;
    }
    return host;
  }

  private spawn(name: string, args: string[], env: NodeJS.ProcessEnv, verbose: boolean): void {
    const p = spawn(bin(name), args, { env, stdio: ['ignore', 'ignore', verbose ? 'inherit' : 'ignore'] });
    this.procs.push(p);
  }

  private async boot(log: (s: string) => void, verbose: boolean): Promise<void> {
    const d = this.dir;
    fs.mkdirSync(this.policyDir);
    fs.writeFileSync(path.join(this.policyDir, '50-demo.policy'), POLICY);
    fs.writeFileSync(path.join(d, 'system-info.json'), JSON.stringify(systemInfo(), null, 1));
    fs.mkdirSync(path.join(d, 'sock'));
    const policySock = path.join(d, 'policy.sock');
    for (const q of QUBES) {
      const rpc = path.join(d, `rpc-${q.name}`);
      fs.mkdirSync(rpc);
      for (const [svc, script] of Object.entries(services(q.name))) fs.writeFileSync(path.join(rpc, svc), script, { mode: 0o755 });
      this.spawn('qrexec-agent', [`--agent-socket=${this.agentSocket(q)}`], {
        ...this.qubeEnv(q), QREXEC_SERVICE_PATH: rpc, QUBES_RPC_CONFIG_PATH: path.join(d, `rpc-config-${q.name}`),
      }, verbose);
      log(`qube ${q.name}: domain ${q.domid}, services in ${rpc}`);
    }
    // the host: the policy daemon and the qrexec daemons of both qubes in one process
    const user = os.userInfo().username;
    this.spawn('qrexec-host', ['--policy-path', this.policyDir, '--socket-path', policySock,
      '--system-info', path.join(d, 'system-info.json'), '--audit-db', path.join(d, 'audit.db'),
      `--qrexec-socket-dir=${path.join(d, 'sock')}`, ...QUBES.map((q) => `--qube=${q.domid}:${q.name}:${q.uuid}:${user}`)],
    { ...process.env, VCHAN_SOCKET_DIR: d, VCHAN_DOMAIN: '0' }, verbose);
    log(`host: qrexec-host, policy socket ${policySock} (policy in ${this.policyDir})`);
    await waitFor(() => fs.existsSync(policySock) && QUBES.every((q) => fs.existsSync(path.join(d, 'sock', `qrexec.${q.name}`)) && fs.existsSync(this.agentSocket(q))), 20_000);
  }

  /** Run qrexec-client-vm in a qube, as a program there would. */
  call(from: DemoQube, target: string, service: string, stdin = ''): CallResult {
    const r = spawnSync(bin('qrexec-client-vm'), [`--agent-socket=${this.agentSocket(from)}`, target, service], {
      env: this.qubeEnv(from), input: stdin, encoding: 'utf8', timeout: 20_000,
    });
    return { code: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  }

  audit(): string {
    const r = spawnSync(bin('qrexec-audit'), ['--db', path.join(this.dir, 'audit.db')], { encoding: 'utf8' });
    return r.stdout || r.stderr;
  }

  async stop(): Promise<void> {
    for (const p of this.procs) if (p.exitCode === null) p.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 300));
    for (const p of this.procs) if (p.exitCode === null) p.kill('SIGKILL');
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

async function waitFor(ok: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error('demo host did not come up in time (run with --verbose to see why)');
    await new Promise((r) => setTimeout(r, 50));
  }
}
