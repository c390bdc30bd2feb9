/**
 * Power states and the start/shutdown/kill/pause/unpause operations
 * (qubes-core-admin qubes/vm/qubesvm.py start(), shutdown(), kill(),
 * pause(), unpause()), over a {@link Runtime} backend.
 *
 * A qube is Transient from the start until its backend reports it ready
 * (its agent connected), then Running. When its processes end it is Halted
 * (domain-shutdown, domain-stopped); a disposable with auto_cleanup is then
 * removed. Power states are not persisted: after a restart every qube is
 * Halted.
 */
import type { QubeExit, Runtime, RunningQube } from '../runtime/types.js';
import {
  QubesException,
  QubesVMError,
  QubesVMNotPausedError,
  QubesVMNotRunningError,
  QubesVMNotStartedError,
  QubesVMShutdownTimeoutError,
  QubesNotImplementedError,
  pyRepr,
} from './errors.js';
import type { PowerControl } from './admin-api.js';
import { NO_VALUE } from './properties.js';
import type { Qube, Registry } from './registry.js';
import { Preloader } from './preload.js';

interface Active {
  readonly qube: Qube;
  readonly run: RunningQube;
  readonly exited: Promise<QubeExit>;
  /** Set once the exit has been handled (state Halted, events sent). */
  done: Promise<void>;
}

/** Log sink for failures that have no caller to report to. */
export type LifecycleLog = (msg: string) => void;

export class Lifecycle implements PowerControl {
  private readonly active = new Map<Qube, Active>();
  private readonly starting = new Map<Qube, Promise<void>>();
  private nextDomid = 1;
  /** Set by close(): no start any more. */
  private closed = false;
  /** Preloaded disposables (preload-dispvm-max); see preload.ts. */
  readonly preloader: Preloader;

  constructor(
    private readonly registry: Registry,
    private readonly runtime: Runtime | null,
    private readonly log: LifecycleLog = () => undefined,
  ) {
    const power = {
      canStart: runtime !== null,
      start: (q: Qube) => this.start(q),
      pause: (q: Qube) => this.pause(q),
      unpause: (q: Qube) => this.unpause(q),
      kill: (q: Qube) => this.kill(q),
    };
    this.preloader = new Preloader(registry, power, (level, m) => {
      if (level === 'warning') log(m);
    });
  }

  /** Domain ids in use, for the next start. */
  private allocDomid(): number {
    const used = new Set([...this.registry.list()].map((q) => q.domid));
    while (used.has(this.nextDomid) || this.nextDomid <= 0) this.nextDomid = this.nextDomid >= 0x7fff ? 1 : this.nextDomid + 1;
    return this.nextDomid++;
  }

  /** Start a qube (and first its netvm chain); `chain` holds the qubes already being started for it. */
  async start(q: Qube, chain: ReadonlySet<Qube> = new Set()): Promise<void> {
    const pending = this.starting.get(q);
    if (pending) return chain.has(q) ? undefined : pending;
    if (q.power !== 'Halted') return;
    if (q.klass === 'RemoteVM') throw new QubesNotImplementedError('A remote qube cannot be started from here');
    if (!this.runtime) throw new QubesException('Start failed: qubesd runs without a runtime backend (--runtime none)');
    if (this.closed) throw new QubesException('Start failed: qubesd is stopping');
    const p = this.doStart(q, this.runtime, new Set([...chain, q]));
    this.starting.set(q, p);
    try {
      await p;
    } finally {
      this.starting.delete(q);
    }
  }

  private async doStart(q: Qube, runtime: Runtime, chain: ReadonlySet<Qube>): Promise<void> {
    const netvm = q.get('netvm');
    if (typeof netvm === 'string') {
      const n = this.registry.byName(netvm);
      // a netvm that is this qube, or one already being started for it (default_netvm is itself), is not waited for
      if (n && !chain.has(n)) await this.start(n, chain);
    }
    if (this.closed) throw new QubesException('Start failed: qubesd is stopping');
    this.registry.fire(q, 'domain-pre-start', [['start_guid', 'True']]);
    const domid = this.allocDomid();
    this.registry.setPower(q, 'Transient', domid);
    this.registry.fire(q, 'domain-spawn', [['start_guid', 'True']]);
    const tpl = q.get('template');
    const timeout = q.get('qrexec_timeout');
    const user = q.get('default_user');
    const num = (prop: string): number | undefined => {
      const v = q.has(prop) ? q.get(prop) : undefined;
      return typeof v === 'number' && v > 0 ? v : undefined;
    };
    const maxmemMb = num('maxmem') ?? num('memory');
    const vcpus = num('vcpus');
    // a DispVM runs on the root of its disposable template's template
    const dvm = q.klass === 'DispVM' && typeof tpl === 'string' ? this.registry.byName(tpl) : undefined;
    const rootTpl = dvm?.get('template');
    let run: RunningQube;
    try {
      run = runtime.start({
        name: q.name,
        uuid: q.uuid,
        domid,
        klass: q.klass,
        template: typeof tpl === 'string' ? tpl : null,
        defaultUser: typeof user === 'string' ? user : 'user',
        timeoutMs: (typeof timeout === 'number' ? timeout : 60) * 1000,
        netvm: typeof netvm === 'string' ? netvm : null,
        providesNetwork: q.get('provides_network') === true,
        ...(maxmemMb !== undefined ? { maxmemMb } : {}),
        ...(vcpus !== undefined ? { vcpus } : {}),
        ...(dvm ? { rootTemplate: typeof rootTpl === 'string' ? rootTpl : null } : {}),
        ...addresses(q),
      });
    } catch (e) {
      this.failed(q, e);
    }
    const act: Active = { qube: q, run, exited: run.exited, done: Promise.resolve() };
    this.active.set(q, act);
    act.done = run.exited.then((x) => this.onExit(act, x));
    try {
      await run.ready;
    } catch (e) {
      run.kill();
      await act.done;
      this.failed(q, e, false);
    }
    if (q.power === 'Transient') {
      this.registry.setPower(q, 'Running', domid);
      this.registry.fire(q, 'domain-start', [['start_guid', 'True']]);
    }
  }

  private failed(q: Qube, e: unknown, reset = true): never {
    const reason = e instanceof Error ? e.message : String(e);
    if (reset) this.registry.setPower(q, 'Halted');
    this.registry.fire(q, 'domain-start-failed', [['reason', reason]]);
    throw new QubesException(`Start failed: ${reason}`);
  }

  private onExit(act: Active, _x: QubeExit): void {
    const q = act.qube;
    if (this.active.get(q) !== act) return;
    this.active.delete(q);
    const xid = q.domid;
    this.registry.setPower(q, 'Halted');
    this.registry.fire(q, 'domain-shutdown', [
      ['xid', String(xid)],
      ['stubdom_xid', '-1'],
    ]);
    this.registry.fire(q, 'domain-stopped', []);
    if (q.klass === 'DispVM' && q.get('auto_cleanup') === true && this.registry.byName(q.name) === q) {
      try {
        this.registry.write(() => this.registry.removeQube(q));
      } catch (e) {
        this.log(`cannot remove disposable ${q.name}: ${(e as Error).message}`);
      }
    }
  }

  async shutdown(q: Qube, force: boolean, wait: boolean): Promise<void> {
    if (q.klass === 'AdminVM') throw new QubesVMError(q.name, 'Cannot shutdown dom0');
    const act = this.active.get(q);
    if (q.power === 'Halted' || !act) throw new QubesVMNotStartedError(q.name);
    if (q.power === 'Paused' && !force) throw new QubesVMNotRunningError(q.name);
    this.registry.fire(q, 'domain-pre-shutdown', [['force', force ? 'True' : 'False']]);
    if (!force) {
      const users = this.registry.list().filter((o) => o !== q && o.power !== 'Halted' && o.get('netvm') === q.name);
      if (users.length) throw new QubesVMError(q.name, `There are other VMs connected to this VM: ${users.map((u) => u.name).join(', ')}`);
    }
    if (q.power === 'Paused') act.run.unpause();
    if (q.power !== 'Halting') this.registry.setPower(q, 'Halting');
    act.run.shutdown();
    if (!wait) return;
    const t = q.get('shutdown_timeout');
    const ms = (typeof t === 'number' ? t : 60) * 1000;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      act.done.then(() => false),
      new Promise<boolean>((res) => {
        timer = setTimeout(() => res(true), ms);
      }),
    ]);
    clearTimeout(timer);
    if (timedOut) throw new QubesVMShutdownTimeoutError(q.name);
  }

  async kill(q: Qube): Promise<void> {
    if (q.klass === 'AdminVM') throw new QubesVMError(q.name, 'Cannot kill dom0');
    const act = this.active.get(q);
    if (q.power === 'Halted' || !act) throw new QubesVMNotStartedError(q.name);
    act.run.kill();
    await act.done;
  }

  async pause(q: Qube): Promise<void> {
    const act = this.active.get(q);
    if (q.power !== 'Running' || !act) throw new QubesVMNotRunningError(q.name);
    act.run.pause();
    this.registry.setPower(q, 'Paused');
    this.registry.fire(q, 'domain-paused', []);
    return Promise.resolve();
  }

  async unpause(q: Qube): Promise<void> {
    const act = this.active.get(q);
    if (q.power !== 'Paused' || !act) throw new QubesVMNotPausedError(q.name);
    act.run.unpause();
    this.registry.setPower(q, 'Running');
    this.registry.fire(q, 'domain-unpaused', []);
    return Promise.resolve();
  }

  /**
   * DispVM.from_appvm: a preloaded disposable of the template when one is
   * ready (already running), else a new `dispN`; removed when it stops.
   */
  createDisposable(template: Qube, creator: Qube): Qube {
    if (template.get('template_for_dispvms') !== true) {
      throw new QubesException('Refusing to create DispVM out of this AppVM, because template_for_dispvms=False');
    }
    const pre = this.preloader.request(template);
    if (pre) {
      this.registry.addTag(pre, `created-by-${creator.name}`);
      return pre;
    }
    const label = template.get('label');
    return this.registry.createDisposable(template, typeof label === 'string' ? label : 'red', creator.name);
  }

  /** admin.vm.CreateDisposable+preload: refill the template's preloaded disposables now. */
  preloadDisposables(template: Qube): void {
    this.preloader.schedule(template, 0, 'autostart was requested');
  }

  /** Stop every running qube (qubesd exit): kill, and wait for the exits. */
  async close(): Promise<void> {
    this.closed = true;
    this.preloader.close();
    const kill = async (): Promise<void> => {
      const acts = [...this.active.values()];
      for (const a of acts) a.run.kill();
      await Promise.all(acts.map((a) => a.done));
    };
    await kill();
    // starts under way (a preload, a netvm chain) end failing; one that got its qube running meanwhile is killed
    await Promise.all([...this.starting.values()].map((p) => p.catch(() => undefined)));
    await kill();
    await this.runtime?.close();
  }

  /** The running qubes this lifecycle started (tests). */
  get runningCount(): number {
    return this.active.size;
  }
}

/** The addresses a qube sees (qubes/vm/mix/net.py visible_ip, visible_gateway), for its backend's interfaces. */
function addresses(q: Qube): { ip: string | null; gateway: string | null } {
  const s = (prop: string): string | null => {
    const v = q.has(prop) ? q.get(prop) : null;
    return typeof v === 'string' && v !== '' ? v : null;
  };
  return { ip: s('visible_ip'), gateway: s('visible_gateway') };
}

export { NO_VALUE, pyRepr };
