/**
 * A small host for the GUI tests and the benchmark: qubes sys-gui, work,
 * vault and personal (real qrexec-agents), qrexec-host (the policy daemon
 * and their qrexec daemons, the audit log), qrexec-gui-server "inside"
 * sys-gui (its sockets in sys-gui's service directory) and
 * qrexec-gui-proxy on a free loopback port. A headless Chromium
 * (playwright-core driving /usr/bin/chromium, no browser download) is
 * started on demand.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Browser, BrowserContext, Page } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const bin = (n: string): string => path.join(ROOT, 'bin', n);
export const CHROMIUM = process.env['CHROMIUM'] ?? '/usr/bin/chromium';
/** Where screenshots go (ignored by git). */
export const ARTIFACTS = process.env['GUI_ARTIFACTS'] ?? path.join(ROOT, 'test-artifacts', 'gui');

/** Debian's Chromium, headless, with a fresh temporary profile (launch() makes one: --user-data-dir). */
export async function launchChromium(): Promise<Browser> {
  const { chromium } = await import('playwright-core');
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
}

export interface GuiQube {
  readonly name: string;
  readonly domid: number;
  readonly label: string;
  readonly guivm: string | null;
}

export const QUBES: readonly GuiQube[] = [
  { name: 'sys-gui', domid: 1, label: 'black', guivm: null },
  { name: 'work', domid: 2, label: 'blue', guivm: 'sys-gui' },
  { name: 'vault', domid: 3, label: 'black', guivm: 'sys-gui' },
  { name: 'personal', domid: 4, label: 'yellow', guivm: 'sys-gui' },
];

export const POLICY = `# GUI test policy
gui.Http     *  dom0   sys-gui  allow
gui.Token    *  dom0   sys-gui  allow
test.Echo    *  work   @anyvm   ask default_target=vault
test.Denied  *  work   @anyvm   deny
* * @anyvm @anyvm deny
`;

const uuid = (n: number): string => `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`;

function systemInfo(): object {
  const domains: Record<string, object> = {
    dom0: { tags: [], type: 'AdminVM', template_for_dispvms: false, default_dispvm: null, icon: 'adminvm-black', label: 'black', guivm: null, relayvm: null, transport_rpc: null, internal: null, power_state: 'Running', uuid: '00000000-0000-0000-0000-000000000000' },
  };
  for (const q of QUBES) {
    domains[q.name] = {
      tags: q.guivm ? [`guivm-${q.guivm}`] : [], type: 'AppVM', template_for_dispvms: false, default_dispvm: null,
      icon: `appvm-${q.label}`, label: q.label, guivm: q.guivm, relayvm: null, transport_rpc: null, internal: null,
      power_state: 'Running', uuid: uuid(q.domid),
    };
  }
  return { domains };
}

async function waitFor(ok: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timeout waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export interface CallResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

export class GuiWorld {
  readonly procs: ChildProcess[] = [];
  readonly logs: string[] = [];
  url = '';
  token = '';
  private browser: Browser | null = null;

  private constructor(readonly dir: string) {}

  get sockDir(): string {
    return path.join(this.dir, 'sock');
  }
  get policySocket(): string {
    return path.join(this.dir, 'policy.sock');
  }
  get auditDb(): string {
    return path.join(this.dir, 'audit.db');
  }
  rpcDir(q: string): string {
    return path.join(this.dir, `rpc-${q}`);
  }
  agentSocket(q: string): string {
    return path.join(this.dir, `agent-${q}.sock`);
  }

  static async start(): Promise<GuiWorld> {
    const w = new GuiWorld(fs.mkdtempSync(path.join(os.tmpdir(), 'qrexec-gui-')));
    try {
      await w.boot();
    } catch (e) {
      await w.close();
      throw new Error(`${(e as Error).message}\n${w.logs.join('')}`, { cause: e });
    }
    return w;
  }

  private run(cmd: string, args: string[], env: NodeJS.ProcessEnv, onStdout?: (s: string) => void): ChildProcess {
    const p = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    p.stderr?.on('data', (d: Buffer) => {
      this.logs.push(d.toString());
      if (process.env['GUI_DEBUG']) process.stderr.write(d);
    });
    p.stdout?.on('data', (d: Buffer) => onStdout?.(d.toString()));
    this.procs.push(p);
    return p;
  }

  private async boot(): Promise<void> {
    const d = this.dir;
    fs.mkdirSync(this.sockDir);
    fs.mkdirSync(path.join(d, 'policy.d'));
    fs.writeFileSync(path.join(d, 'policy.d', '50-gui-test.policy'), POLICY);
    fs.writeFileSync(path.join(d, 'system-info.json'), JSON.stringify(systemInfo()));
    // the policy daemon reaches policy.Ask in sys-gui with qrexec-client (as on Qubes)
    const qc = path.join(d, 'qrexec-client');
    fs.writeFileSync(qc, `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(bin('qrexec-client'))} --socket-dir=${JSON.stringify(this.sockDir)} "$@"\n`, { mode: 0o755 });
    const env = { ...process.env, VCHAN_SOCKET_DIR: d };
    for (const q of QUBES) {
      fs.mkdirSync(this.rpcDir(q.name));
      for (const [svc, text] of [
        ['test.Echo', `#!/bin/sh\necho "${q.name} got: $(cat)"\n`],
        ['test.Denied', '#!/bin/sh\necho never\n'],
      ] as const) fs.writeFileSync(path.join(this.rpcDir(q.name), svc), text, { mode: 0o755 });
      this.run(bin('qrexec-agent'), [`--agent-socket=${this.agentSocket(q.name)}`], {
        ...env, VCHAN_DOMAIN: String(q.domid), QREXEC_SERVICE_PATH: this.rpcDir(q.name), QUBES_RPC_CONFIG_PATH: path.join(d, `cfg-${q.name}`),
      });
    }
    const user = os.userInfo().username;
    this.run(bin('qrexec-host'), [
      '--policy-path', path.join(d, 'policy.d'), '--socket-path', this.policySocket,
      '--system-info', path.join(d, 'system-info.json'), '--audit-db', this.auditDb,
      '--qrexec-client', qc, '--ask-timeout', '30',
      `--qrexec-socket-dir=${this.sockDir}`, ...QUBES.map((q) => `--qube=${q.domid}:${q.name}:${uuid(q.domid)}:${user}`),
    ], { ...env, VCHAN_DOMAIN: '0' });
    // the GUI domain's server, in sys-gui (its sockets are sys-gui's services)
    this.run(bin('qrexec-gui-server'), ['--name', 'sys-gui', '--rpc-dir', this.rpcDir('sys-gui'), '--ask-timeout', '20'], { ...env, VCHAN_DOMAIN: '1' });
    await waitFor(
      () => fs.existsSync(this.policySocket) && QUBES.every((q) => fs.existsSync(path.join(this.sockDir, `qrexec.${q.name}`)) && fs.existsSync(this.agentSocket(q.name))) && fs.existsSync(path.join(this.rpcDir('sys-gui'), 'gui.Http')),
      20_000,
      'the qubes, the host and the GUI server',
    );
    let out = '';
    this.run(bin('qrexec-gui-proxy'), ['--guivm', 'sys-gui', '--socket-dir', this.sockDir, '--policy-socket', this.policySocket, '--quiet'], { ...env, VCHAN_DOMAIN: '0' }, (s) => (out += s));
    await waitFor(() => out.includes('\n'), 20_000, 'the GUI proxy URL');
    const m = /^(http:\/\/127\.0\.0\.1:\d+)\/\?token=([A-Za-z0-9_-]+)$/m.exec(out);
    if (!m) throw new Error(`unexpected proxy output: ${out}`);
    this.url = m[1] as string;
    this.token = m[2] as string;
  }

  /** qrexec-client-vm in a qube (asynchronous: an ask waits for the browser). */
  call(from: string, target: string, service: string, input = ''): Promise<CallResult> {
    const q = QUBES.find((x) => x.name === from) as GuiQube;
    return new Promise((resolve) => {
      const p = spawn(bin('qrexec-client-vm'), [`--agent-socket=${this.agentSocket(from)}`, target, service], {
        env: { ...process.env, VCHAN_SOCKET_DIR: this.dir, VCHAN_DOMAIN: String(q.domid) },
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      p.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
      p.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
      p.stdin.on('error', () => undefined);
      p.stdin.end(input);
      const timer = setTimeout(() => p.kill('SIGKILL'), 40_000);
      p.on('close', (code) => {
        clearTimeout(timer);
        resolve({ code, stdout, stderr });
      });
    });
  }

  /** A fresh browser context (no cookies). */
  async context(): Promise<BrowserContext> {
    this.browser ??= await launchChromium();
    return this.browser.newContext({ viewport: { width: 1200, height: 760 } });
  }

  /** A logged-in page. */
  async page(): Promise<Page> {
    const ctx = await this.context();
    const page = await ctx.newPage();
    await page.goto(`${this.url}/?token=${this.token}`);
    await page.getByRole('navigation', { name: 'Main' }).waitFor();
    return page;
  }

  async shot(page: Page, name: string): Promise<void> {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) });
  }

  async close(): Promise<void> {
    await this.browser?.close().catch(() => undefined);
    for (const p of this.procs) if (p.exitCode === null) p.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 200));
    for (const p of this.procs) if (p.exitCode === null) p.kill('SIGKILL');
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
