/**
 * The GUI domains of the host process (docs/GUI.md): a GUI domain is a qube
 * that is the `guivm` of another qube. For each one running, the host
 * starts `qrexec-gui-server` inside it (a qrexec exec call from dom0, as
 * `qvm-run --no-wait` does), and in this process the host-side proxy on a
 * free 127.0.0.1 port, then fetches the login token through `gui.Token` and
 * gives the URL. The policy daemon's `policy.Ask` / `policy.Notify` for the
 * qubes of a GUI domain are qrexec calls from dom0 made in this process too
 * ({@link Dom0GuiCaller}): no process per question.
 */
import { PassThrough, Writable } from 'node:stream';
import { type PolicyOutcome, type PolicyQuery } from '../daemon/index.js';
import { dom0Call, dom0Exec, fetchToken, GuiProxy, type Dom0CallOptions } from '../guiproxy/proxy.js';
import { MAX_AGENT_REPLY, type GuiService, type GuiServiceCaller } from '../policyd/gui-caller.js';
import type { Logger } from '../policyd/index.js';
import type { VchanEnv } from '../vchan/index.js';
import { inProcessPolicy } from './host.js';
import type { RunningSystem } from './system.js';
import { ROOT } from './tour.js';
import * as path from 'node:path';

/** Where dom0 makes its calls into qubes. */
function dom0Env(sys: RunningSystem): { socketDir: string; vchan: VchanEnv } {
  return {
    socketDir: sys.info.qrexecSocketDir,
    vchan: { dir: sys.info.vchanDir, ownDomain: 0, ...(sys.info.vchanLayout === 'per-domain' ? { layout: 'per-domain' as const } : {}) },
  };
}

/** dom0's own calls of policy.Ask/Notify are not decided by the policy (the reference's qrexec-client). */
const direct = (guivm: string): ((q: PolicyQuery) => Promise<PolicyOutcome>) => () => Promise.resolve({ result: 'allow', user: 'DEFAULT', target: guivm, requestedTarget: guivm, autostart: false });

/** policy.Ask / policy.Notify in a GUI domain, as a qrexec call from dom0 in this process. */
export class Dom0GuiCaller implements GuiServiceCaller {
  constructor(private readonly sys: () => RunningSystem | null) {}

  async call(guivm: string, service: GuiService, params: unknown, timeoutMs: number): Promise<string> {
    const sys = this.sys();
    if (!sys) throw new Error(`${service} in ${guivm}: the host is not up`);
    const chunks: Buffer[] = [];
    let len = 0;
    const sink = new Writable({
      write(c: Buffer, _e, cb) {
        len += c.length;
        if (len > MAX_AGENT_REPLY) cb(new Error(`${service} in ${guivm}: reply too long`));
        else {
          chunks.push(c);
          cb();
        }
      },
    });
    sink.on('error', () => undefined);
    const source = new PassThrough();
    source.end(JSON.stringify(params));
    let timer: NodeJS.Timeout | undefined;
    const status = await Promise.race([
      dom0Call({ guivm, ...dom0Env(sys), decide: direct(guivm) }, service, sink, source, false),
      new Promise<never>((_r, reject) => (timer = setTimeout(() => reject(new Error(`${service} in ${guivm}: no answer within ${timeoutMs} ms`)), timeoutMs))),
    ]).finally(() => clearTimeout(timer));
    if (status !== 0) throw new Error(`${service} in ${guivm}: exit status ${status}`);
    return Buffer.concat(chunks).toString('latin1');
  }
}

export interface RunningGui {
  readonly name: string;
  /** `http://127.0.0.1:PORT/?token=TOKEN` */
  readonly url: string;
  readonly proxy: GuiProxy;
}

/** The GUI domains of the registry: qubes some other qube names as its guivm (not dom0). */
export function guiDomains(sys: RunningSystem): string[] {
  const names = new Set<string>();
  for (const q of sys.qubesd.registry.list()) {
    if (q.klass === 'AdminVM') continue;
    const g = q.get('guivm');
    if (typeof g === 'string' && g !== '' && g !== 'dom0' && g !== q.name) names.add(g);
  }
  return [...names].sort();
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Starts the web app in the running GUI domain `name` and its proxy here.
 * @throws when the qube is not running or the server does not come up in `timeoutMs`
 */
export async function startGui(sys: RunningSystem, name: string, log: Logger, o: { port?: number; timeoutMs?: number } = {}): Promise<RunningGui> {
  const env = dom0Env(sys);
  const bwrap = sys.info.runtime === 'bwrap';
  // in a sandbox our commands are on PATH and the service directory is root's (/run/qubes-rpc);
  // a process qube runs as this user, with the repository's bin/
  const cmd = bwrap ? `root:exec qrexec-gui-server --name ${name}` : `DEFAULT:exec ${path.join(ROOT, 'bin', 'qrexec-gui-server')} --name ${name}`;
  const nothing = new PassThrough();
  nothing.end();
  const started = await dom0Exec(env, name, cmd, { sink: new PassThrough().resume(), source: nothing, single: false, justExec: true });
  if (started !== 0) throw new Error(`qrexec-gui-server could not be started in ${name} (exit status ${started})`);
  const call: Dom0CallOptions = { guivm: name, ...env, decide: inProcessPolicy(sys.policyDaemon, log), log: (m) => log.info(`${name} proxy: ${m}`) };
  const end = Date.now() + (o.timeoutMs ?? 30_000);
  let token = '';
  for (;;) {
    try {
      token = await fetchToken(call);
      break;
    } catch (e) {
      if (Date.now() > end) throw new Error(`the web app in ${name} did not come up: ${(e as Error).message}`);
      await sleep(100);
    }
  }
  const proxy = await GuiProxy.start({ ...call, ...(o.port !== undefined ? { port: o.port } : {}) });
  return { name, url: `${proxy.url}/?token=${token}`, proxy };
}
