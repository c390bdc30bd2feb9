/**
 * The GUI domains on the real host (src/host/system.ts, the process
 * backend): qubesd, the policy daemon and the qrexec daemons in this
 * process, the shipped default policy (examples/policy.d, policy/ with
 * 50-gui.policy) and, for a second GUI domain, the same block with its
 * name. sys-gui manages tpl, work and personal; sys-gui-2 manages alice
 * and alice-vault. sys-audio is every qube's audiovm. Each GUI domain's web app runs inside its qube
 * (qrexec-gui-server, started by the host as `npm start` does) behind its
 * own proxy, port and token; a headless Chromium drives them.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { ensureDemoPolicy } from '../../src/host/demo-system.js';
import { Dom0GuiCaller, startGui, type RunningGui } from '../../src/host/gui.js';
import { startSystem, type RunningSystem } from '../../src/host/system.js';
import { createLogger, silentLogger } from '../../src/policyd/index.js';
import { launchChromium, ROOT } from './harness.js';

export const GUI_QUBES: Readonly<Record<string, readonly string[]>> = {
  'sys-gui': ['personal', 'tpl', 'work'],
  'sys-gui-2': ['alice', 'alice-vault'],
};

export class HostWorld {
  readonly guis = new Map<string, RunningGui>();
  private browser: Browser | null = null;

  private constructor(
    readonly dir: string,
    readonly sys: RunningSystem,
  ) {}

  static async start(): Promise<HostWorld> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qgui-host-'));
    const data = path.join(dir, 'data');
    const log = process.env['GUI_DEBUG'] ? createLogger('gui-test', { level: 'info' }) : silentLogger;
    ensureDemoPolicy(path.join(data, 'policy.d'));
    // the second GUI domain: the shipped block with its own name
    const block = fs.readFileSync(path.join(ROOT, 'policy', '50-gui.policy'), 'utf8').replaceAll('sys-gui', 'sys-gui-2');
    fs.writeFileSync(path.join(data, 'policy.d', '50-gui-2.policy'), block);
    let sys: RunningSystem | null = null;
    sys = await startSystem({ dataDir: data, runDir: path.join(dir, 'run'), runtime: 'process', log, gui: new Dom0GuiCaller(() => sys), ...(process.env['GUI_DEBUG'] ? { debug: true } : {}) });
    const w = new HostWorld(dir, sys);
    try {
      await w.admin('admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black');
      await w.admin('admin.property.Set', 'dom0', 'default_template', 'tpl');
      for (const g of Object.keys(GUI_QUBES)) {
        await w.admin('admin.vm.Create.AppVM', 'dom0', '', `name=${g} label=black`);
        await w.admin('admin.vm.property.Set', g, 'guivm', 'dom0');
        await w.admin('admin.vm.feature.Set', g, 'set-created-guivm', g);
      }
      await w.admin('admin.property.Set', 'dom0', 'default_guivm', 'sys-gui');
      // the audio domain (a service qube, as sys-gui: its GUI is dom0's); every other qube's audiovm
      await w.admin('admin.vm.Create.AppVM', 'dom0', '', 'name=sys-audio label=red');
      await w.admin('admin.vm.property.Set', 'sys-audio', 'guivm', 'dom0');
      await w.admin('admin.vm.property.Set', 'sys-audio', 'audiovm', '');
      await w.admin('admin.property.Set', 'dom0', 'default_audiovm', 'sys-audio');
      await w.admin('admin.vm.Start', 'sys-audio');
      await w.admin('admin.vm.Create.AppVM', 'dom0', '', 'name=work label=blue');
      await w.admin('admin.vm.Create.AppVM', 'dom0', '', 'name=personal label=yellow');
      for (const [n, l] of [['alice', 'green'], ['alice-vault', 'purple']] as const) {
        await w.admin('admin.vm.Create.AppVM', 'dom0', '', `name=${n} label=${l}`);
        await w.admin('admin.vm.property.Set', n, 'guivm', 'sys-gui-2');
      }
      for (const g of Object.keys(GUI_QUBES)) {
        await w.admin('admin.vm.Start', g);
        w.guis.set(g, await startGui(sys, g, log));
      }
    } catch (e) {
      await w.close();
      throw e;
    }
    return w;
  }

  /** dom0's Admin API call (in-process); the reply's data. */
  async admin(method: string, dest: string, arg = '', payload = ''): Promise<string> {
    return (await this.sys.call(method, dest, { arg, payload: Buffer.from(payload) })).toString();
  }

  gui(name: string): { url: string; token: string; base: string } {
    const g = this.guis.get(name);
    if (!g) throw new Error(`no GUI ${name}`);
    const u = new URL(g.url);
    return { url: g.url, token: u.searchParams.get('token') ?? '', base: `${u.protocol}//${u.host}` };
  }

  /** The environment of a program run inside qube `name` (qrexec-client-vm leaves from it). */
  inside(name: string): { env: NodeJS.ProcessEnv; agentSocket: string } {
    const q = this.sys.qubesd.registry.byName(name);
    if (!q) throw new Error(`no qube ${name}`);
    return {
      env: { ...process.env, VCHAN_SOCKET_DIR: this.sys.info.vchanDir, VCHAN_DOMAIN: String(q.domid) },
      agentSocket: path.join(this.dir, 'data', 'qubes', name, 'agent.sock'),
    };
  }

  /** A logged-in page of GUI domain `name`, in a fresh browser context. */
  async page(name: string): Promise<Page> {
    const page = await (await this.browserContext()).newPage();
    await page.goto(this.gui(name).url);
    await page.getByRole('navigation', { name: 'Main' }).waitFor();
    return page;
  }

  /** A fresh browser context (its own cookies), the browser started on first use. */
  async browserContext(): Promise<BrowserContext> {
    this.browser ??= await launchChromium();
    return this.browser.newContext({ viewport: { width: 1280, height: 800 } });
  }

  async close(): Promise<void> {
    await this.browser?.close().catch(() => undefined);
    await Promise.all([...this.guis.values()].map((g) => g.proxy.close()));
    await this.sys.close();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
