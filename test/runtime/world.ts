/**
 * A host with sandboxed qubes for the runtime tests: the real qrexec-host
 * (policy daemon + qrexec daemons, per-domain vchan layout) and each qube a
 * bwrap sandbox running the real qrexec-agent; calls go through the real
 * qrexec-client. Root only: callers check {@link sandboxSkipReason} first.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BIN, run, waitFor } from '../e2e/harness.js';
import {
  Sandbox,
  VchanLinks,
  ensurePrivate,
  ensureTemplate,
  privateDir,
  sandboxSupport,
  waitAgentReady,
  type Limits,
  type QubeNetwork,
  type QubeVolumes,
} from '../../src/runtime/sandbox/index.js';

/**
 * Why the sandbox tests cannot run here, or undefined. In CI (root) they must
 * run: there a missing prerequisite is a failure, not a skip.
 */
export function sandboxSkipReason(): string | undefined {
  const s = sandboxSupport();
  if (s.ok) return undefined;
  if (process.geteuid?.() === 0 || process.env['CI']) throw new Error(`bwrap sandboxes must work as root (CI): ${s.reason}`);
  process.stderr.write(`# runtime sandbox tests not run: ${s.reason}\n`);
  return s.reason;
}

export interface WorldQube {
  readonly name: string;
  readonly domid: number;
  readonly uuid: string;
}

export const POLICY = `test.Echo * @anyvm @anyvm allow
test.Sh * @anyvm @anyvm deny
* * @anyvm @anyvm deny
`;

/** A service that runs its stdin as a shell script (for the isolation probes). */
export const SH_SERVICE = '#!/bin/sh\nexec /bin/sh -s\n';

export class SandboxWorld {
  readonly procs: ChildProcess[] = [];
  readonly sandboxes = new Map<string, Sandbox>();
  readonly links: VchanLinks;

  private constructor(readonly dir: string, readonly qubes: readonly WorldQube[]) {
    this.links = new VchanLinks(this.vchanRoot);
  }

  get data(): string {
    return path.join(this.dir, 'data');
  }
  get vchanRoot(): string {
    return path.join(this.dir, 'vchan');
  }
  /** The names of this world's sandboxes' cgroups start with this. */
  get cgroupPrefix(): string {
    return `${path.basename(this.dir)}-`;
  }
  get sockDir(): string {
    return path.join(this.dir, 'sock');
  }

  /** The host with `qubes` declared (none started), template `tpl` made from the host. */
  static async create(qubes: readonly WorldQube[], policy = POLICY): Promise<SandboxWorld> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qrexec-sandbox-'));
    fs.chmodSync(dir, 0o755);
    const w = new SandboxWorld(dir, qubes);
    fs.mkdirSync(w.sockDir);
    fs.mkdirSync(w.vchanRoot, { mode: 0o700 });
    fs.mkdirSync(path.join(dir, 'policy.d'));
    fs.writeFileSync(path.join(dir, 'policy.d', '50-test.policy'), policy);
    const dom = (type: string, uuid: string): object => ({
      tags: [], type, template_for_dispvms: false, default_dispvm: null, icon: 'gray', label: 'gray', guivm: null,
      relayvm: null, transport_rpc: null, internal: null, power_state: 'Running', uuid,
    });
    const domains: Record<string, object> = { dom0: dom('AdminVM', '00000000-0000-0000-0000-000000000000') };
    for (const q of qubes) domains[q.name] = dom('AppVM', q.uuid);
    fs.writeFileSync(path.join(dir, 'system-info.json'), JSON.stringify({ domains }));
    ensureTemplate(w.data, 'tpl', { kind: 'host' });
    const host = spawn(BIN('qrexec-host'), ['--policy-path', path.join(dir, 'policy.d'), '--socket-path', path.join(dir, 'policy.sock'),
      '--system-info', path.join(dir, 'system-info.json'), `--qrexec-socket-dir=${w.sockDir}`, '--qubesd-admin-socket', 'none',
      ...qubes.map((q) => `--qube=${q.domid}:${q.name}:${q.uuid}:user`)], { env: w.hostEnv(), stdio: ['ignore', 'ignore', 'pipe'] });
    host.stderr?.on('data', (d: Buffer) => {
      if (process.env['E2E_DEBUG']) process.stderr.write(d);
    });
    w.procs.push(host);
    return w;
  }

  /** dom0's environment: the per-domain vchan layout. */
  hostEnv(): NodeJS.ProcessEnv {
    return { ...process.env, VCHAN_SOCKET_DIR: this.vchanRoot, VCHAN_DOMAIN: '0', VCHAN_SOCKET_LAYOUT: 'per-domain' };
  }

  qube(name: string): WorldQube {
    const q = this.qubes.find((x) => x.name === name);
    if (!q) throw new Error(`no qube ${name}`);
    return q;
  }

  /** Installs a service in the private volume of `name` (/usr/local/etc/qubes-rpc inside an AppVM). */
  service(name: string, svc: string, script: string): void {
    const d = path.join(ensurePrivate(this.data, name), 'usrlocal', 'etc', 'qubes-rpc');
    fs.writeFileSync(path.join(d, svc), script, { mode: 0o755 });
  }

  /** Installs a service in template `tpl`'s own /etc layer (every qube of the template has it). */
  templateService(svc: string, script: string): void {
    const d = path.join(this.data, 'qubes', 'tpl', 'layers', '0001', 'etc', 'qubes-rpc');
    fs.mkdirSync(d, { recursive: true });
    fs.writeFileSync(path.join(d, svc), script, { mode: 0o755 });
  }

  /** Starts qube `name` as a sandbox with its agent and waits until its agent listens. */
  async start(name: string, opts: { volumes?: QubeVolumes; limits?: Limits; network?: QubeNetwork } = {}): Promise<Sandbox> {
    const q = this.qube(name);
    const vchanDir = this.links.add(q.domid);
    const sb = await Sandbox.start({
      name,
      domid: q.domid,
      volumes: opts.volumes ?? { klass: 'AppVM', name, template: 'tpl' },
      dataDir: this.data,
      runDir: path.join(this.dir, 'run', name),
      // unique to this world: another run's groups never collide with ours (see {@link cgroupPrefix})
      cgroupName: `${this.cgroupPrefix}${name}`,
      vchanDir,
      ...(opts.limits ? { limits: opts.limits } : {}),
      ...(opts.network ? { network: opts.network } : {}),
      log: (l) => {
        if (process.env['E2E_DEBUG']) process.stderr.write(`[${name}] ${l}\n`);
      },
    });
    this.sandboxes.set(name, sb);
    await waitAgentReady(sb, 20_000);
    return sb;
  }

  async stop(name: string): Promise<number> {
    const sb = this.sandboxes.get(name);
    if (!sb) return 0;
    this.sandboxes.delete(name);
    return sb.stop();
  }

  /** A call from dom0 into `target` with the real qrexec-client. */
  call(target: string, cmd: string, input: string | Buffer = '', timeoutArgs: string[] = []): ReturnType<typeof run> {
    return run(BIN('qrexec-client'), [`--socket-dir=${this.sockDir}`, '-d', target, ...timeoutArgs, cmd], this.hostEnv(), input);
  }

  /** Runs `script` with /bin/sh as `user` (or root) in `target` (through the test.Sh service). */
  async sh(target: string, script: string, user = 'user'): Promise<{ code: number; out: string; err: string }> {
    const r = await this.call(target, `${user}:QUBESRPC test.Sh+ dom0`, script);
    return { code: r.code, out: r.stdout.toString(), err: r.stderr };
  }

  /** Waits until qrexec-host serves `name`. */
  async hostReady(): Promise<void> {
    await waitFor(async () => [...this.sandboxes.keys()].every((n) => fs.existsSync(path.join(this.sockDir, `qrexec.${n}`))), 20_000, 'qrexec-host');
  }

  privateOf(name: string): string {
    return privateDir(this.data, name);
  }

  async close(): Promise<void> {
    for (const name of [...this.sandboxes.keys()]) await this.stop(name).catch(() => undefined);
    this.links.close();
    for (const p of this.procs) if (p.exitCode === null) p.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 100));
    for (const p of this.procs) if (p.exitCode === null) p.kill('SIGKILL');
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
