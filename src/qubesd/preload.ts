/**
 * Preloaded disposables (Qubes 4.3, qubes-core-admin qubes/vm/dispvm.py and
 * qubes/vm/mix/dvmtemplate.py): the feature `preload-dispvm-max` = N on a
 * disposable template (an AppVM with template_for_dispvms), or on dom0 for
 * the global `default_dispvm`, keeps N of its disposables started and
 * paused, so that a `@dispvm` call (admin.vm.CreateDisposable) gets one at
 * once instead of waiting for a start.
 *
 * As in the reference:
 * - The template's feature `preload-dispvm` lists them (space-separated,
 *   oldest first); the Admin API may not change it. A preloaded one is an
 *   ordinary `disp<N>` DispVM with auto_cleanup and the feature `internal`
 *   (hidden from GUI tools; `qvm-ls --internal n` leaves it out). While it
 *   preloads it has `preload-dispvm-in-progress`, then
 *   `preload-dispvm-completed`; once started it is paused.
 * - A request takes the first completed one off the list, unpauses it and
 *   marks it used: `internal` and `preload-dispvm-in-progress` go (unless
 *   the template itself is internal), and the template fires
 *   `domain-preload-dispvm-used`. From then on it is any unnamed disposable:
 *   killed at the end of its call and removed. One unpaused by hand
 *   (admin.vm.Unpause) is used too, and leaves the list.
 * - Refills: setting or removing `preload-dispvm-max` (on the template, or
 *   on dom0 for default_dispvm), a change of default_dispvm or of
 *   template_for_dispvms, admin.vm.CreateDisposable with the argument
 *   `preload`, a use (after `preload-dispvm-delay` seconds, default 3; a
 *   request also schedules one after at least 5 s), a preloaded one that
 *   stopped, and qubesd's start (the reference's qubes-preload-dispvm
 *   service). An excess (the maximum lowered) is killed, newest first.
 * - When the template stops, its preloaded disposables are replaced: here
 *   their private volume is an overlay of the template's, which it changed.
 * - At qubesd's start, names of qubes that are gone leave the list, and
 *   preloaded disposables left by the previous run (halted now) are removed.
 *
 * - A fill preloads only as many as the available memory holds (the
 *   reference reads qmemman's figure; here the host's MemAvailable), less
 *   dom0's `preload-dispvm-threshold` MiB, each the template's `memory`.
 *
 * Not done: waiting for a preload that has not completed (a request then
 * makes a new disposable, as the reference does after its timeout).
 */
import * as fs from 'node:fs';
import { QubesValueError } from './errors.js';
import type { Qube, Registry } from './registry.js';

/** What the preloader needs of the power lifecycle. */
export interface PreloadPower {
  readonly canStart: boolean;
  start(q: Qube): Promise<void>;
  pause(q: Qube): Promise<void>;
  unpause(q: Qube): Promise<void>;
  kill(q: Qube): Promise<void>;
}

export type PreloadLog = (level: 'info' | 'warning', msg: string) => void;

const MAX = 'preload-dispvm-max';
const LIST = 'preload-dispvm';
const IN_PROGRESS = 'preload-dispvm-in-progress';
const COMPLETED = 'preload-dispvm-completed';
const DELAY = 'preload-dispvm-delay';
const THRESHOLD = 'preload-dispvm-threshold';

/** The host's available memory (MemAvailable of /proc/meminfo), in bytes; undefined when unknown. */
export function hostAvailableMemory(): number | undefined {
  try {
    const m = /^MemAvailable:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/meminfo', 'latin1'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

const truthy = (v: string | undefined): boolean => v !== undefined && v !== '';

export class Preloader {
  /** A fill running per template name, and whether another was asked for meanwhile. */
  private readonly filling = new Map<string, { run: Promise<void>; again: boolean }>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private closed = false;
  private readonly off: () => void;

  constructor(
    private readonly registry: Registry,
    private readonly power: PreloadPower,
    private readonly log: PreloadLog = () => undefined,
    /** The memory a preload may use (bytes; tests give their own). */
    private readonly availableBytes: () => number | undefined = hostAvailableMemory,
  ) {
    this.off = registry.on((subject, event, kwargs) => this.onEvent(subject, event, kwargs));
  }

  // --- features (get_feat_preload*, get_preload_templates) ---

  private isDvmTemplate(q: Qube | undefined): q is Qube {
    return q !== undefined && q.klass === 'AppVM' && q.get('template_for_dispvms') === true;
  }

  private get defaultDispvm(): Qube | undefined {
    const d = this.registry.getGlobal('default_dispvm');
    return typeof d === 'string' ? this.registry.byName(d) : undefined;
  }

  /** The global maximum applies to default_dispvm when dom0 has the feature. */
  private globalSet(appvm: Qube): boolean {
    return appvm === this.defaultDispvm && this.registry.dom0.features.has(MAX);
  }

  /** How many `appvm` keeps preloaded. */
  maxFor(appvm: Qube): number {
    if (!this.isDvmTemplate(appvm) || this.registry.byName(appvm.name) !== appvm) return 0;
    const v = this.globalSet(appvm) ? this.registry.dom0.feature(MAX) : appvm.feature(MAX);
    const n = Number(v ?? 0);
    return Number.isInteger(n) && n > 0 ? n : 0;
  }

  /** Its preloaded disposables' names (the `preload-dispvm` feature). */
  listOf(appvm: Qube): string[] {
    const v = appvm.feature(LIST) ?? '';
    return v === '' ? [] : v.split(' ');
  }

  private setList(appvm: Qube, names: readonly string[]): void {
    if (this.registry.byName(appvm.name) !== appvm) return;
    const v = names.join(' ');
    if ((appvm.feature(LIST) ?? '') === v && (v !== '' || appvm.features.has(LIST))) return;
    this.registry.write(() => this.registry.setFeature(appvm, LIST, v));
  }

  /** Seconds before a refill after a use (`preload-dispvm-delay` of the template, else of dom0; default 3). */
  private delayMs(appvm: Qube): number {
    const v = appvm.feature(DELAY) ?? this.registry.dom0.feature(DELAY) ?? '3';
    const n = Number(v || 0);
    return Number.isFinite(n) ? Math.abs(n) * 1000 : 3000;
  }

  /** The templates that preload (get_preload_templates). */
  templates(): Qube[] {
    return this.registry.list().filter((q) => this.isDvmTemplate(q) && this.maxFor(q) > 0);
  }

  /** The template whose list holds `name`, if any. */
  private holderOf(name: string): Qube | undefined {
    return this.registry.list().find((q) => q.klass === 'AppVM' && this.listOf(q).includes(name));
  }

  // --- lifecycle ---

  /**
   * qubesd's start: drops absent names and the previous run's preloaded
   * disposables (halted now), then preloads for every template that wants it.
   */
  start(): void {
    for (const appvm of this.registry.list()) {
      if (appvm.klass !== 'AppVM') continue;
      const list = this.listOf(appvm);
      const keep = list.filter((n) => {
        const d = this.registry.byName(n);
        return d !== undefined && d.power !== 'Halted';
      });
      if (keep.length !== list.length) {
        this.log('info', `${appvm.name}: removing preloaded qube(s) of an earlier run: ${list.filter((n) => !keep.includes(n)).join(', ')}`);
        this.setList(appvm, keep);
      }
    }
    for (const d of this.registry.list()) {
      if (d.klass !== 'DispVM' || d.power !== 'Halted') continue;
      if (!truthy(d.feature(IN_PROGRESS)) && !truthy(d.feature(COMPLETED))) continue;
      if (d.get('auto_cleanup') !== true) continue;
      try {
        this.registry.write(() => this.registry.removeQube(d));
      } catch (e) {
        this.log('warning', `cannot remove the earlier run's preloaded ${d.name}: ${(e as Error).message}`);
      }
    }
    for (const t of this.templates()) this.schedule(t, 0, 'qubesd started');
  }

  /** Stop refilling (qubesd's exit). */
  close(): void {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.off();
  }

  /** Refill `appvm` after `delayMs`. */
  schedule(appvm: Qube, delayMs: number, reason: string): void {
    if (this.closed) return;
    const t = setTimeout(() => {
      this.timers.delete(t);
      void this.fill(appvm, reason);
    }, delayMs);
    t.unref();
    this.timers.add(t);
  }

  /**
   * Brings `appvm`'s preloaded disposables to its maximum: kills an excess
   * (newest first), starts the missing ones. One fill per template at a time
   * (a request meanwhile runs it again after).
   */
  fill(appvm: Qube, reason: string): Promise<void> {
    const cur = this.filling.get(appvm.name);
    if (cur) {
      cur.again = true;
      return cur.run;
    }
    const slot = { run: Promise.resolve(), again: false };
    slot.run = (async () => {
      do {
        slot.again = false;
        await this.fillOnce(appvm, reason);
      } while (slot.again && !this.closed);
    })().finally(() => this.filling.delete(appvm.name));
    this.filling.set(appvm.name, slot);
    return slot.run;
  }

  private async fillOnce(appvm: Qube, reason: string): Promise<void> {
    if (this.closed || !this.power.canStart) return;
    const max = this.maxFor(appvm);
    const list = this.listOf(appvm).filter((n) => this.registry.byName(n) !== undefined);
    const excess = list.slice(max);
    this.setList(appvm, list.slice(0, max));
    if (excess.length) this.log('info', `${appvm.name}: removing excess preloaded qube(s): ${excess.join(', ')}`);
    await Promise.all(excess.map((n) => this.discard(n)));
    const gap = max - Math.min(list.length, max);
    if (gap <= 0) return;
    const want = this.affordable(appvm, gap);
    if (want <= 0) return;
    this.log('info', `${appvm.name}: preloading ${want} qube(s) because ${reason}`);
    await Promise.all(Array.from({ length: want }, () => this.preloadOne(appvm)));
  }

  /**
   * How many of `gap` fit in the available memory, as the reference's check
   * of qmemman's figure: the host's MemAvailable less dom0's
   * `preload-dispvm-threshold` (MiB), over the template's `memory` (MiB).
   * Without a figure, all of them. The gap is filled again at the next use
   * or request.
   */
  private affordable(appvm: Qube, gap: number): number {
    const avail = this.availableBytes();
    if (avail === undefined) return gap;
    const threshold = Number(this.registry.dom0.feature(THRESHOLD) || 0) * 1024 ** 2;
    const mem = appvm.get('memory');
    const each = (typeof mem === 'number' && mem > 0 ? mem : 400) * 1024 ** 2;
    const can = Math.min(gap, Math.floor(Math.max(0, avail - (Number.isFinite(threshold) ? threshold : 0)) / each));
    if (can < gap) this.log('warning', `${appvm.name}: not preloading ${gap - can} disposable(s) due to insufficient memory`);
    return can;
  }

  /** Kills (and so removes) a disposable that left the list. */
  private async discard(name: string): Promise<void> {
    const d = this.registry.byName(name);
    if (!d || d.power === 'Halted') return;
    await this.power.kill(d).catch((e: Error) => this.log('warning', `cannot kill preloaded ${name}: ${e.message}`));
  }

  /** One preload: create and mark it (mark_preload), start, pause, mark completed. */
  private async preloadOne(appvm: Qube): Promise<void> {
    if (this.closed) return;
    const label = appvm.get('label');
    const disp = this.registry.write(() => {
      const d = this.registry.createDisposable(appvm, typeof label === 'string' ? label : 'red', 'dom0');
      this.registry.setFeature(d, IN_PROGRESS, '1');
      this.registry.setFeature(d, 'internal', '1');
      this.registry.setFeature(appvm, LIST, [...this.listOf(appvm), d.name].join(' '));
      return d;
    });
    try {
      await this.power.start(disp);
      // taken (used or discarded) while it started: not ours to pause any more
      if (!this.listOf(appvm).includes(disp.name) || disp.power !== 'Running') return;
      await this.power.pause(disp);
      this.registry.write(() => {
        this.registry.setFeature(disp, COMPLETED, '1');
        this.registry.setFeature(disp, IN_PROGRESS, '');
      });
      this.log('info', `${disp.name}: preloading completed`);
    } catch (e) {
      this.log('warning', `${appvm.name}: preloading ${disp.name} failed: ${(e as Error).message}`);
      this.setList(appvm, this.listOf(appvm).filter((n) => n !== disp.name));
      // a DispVM whose start failed is removed by the lifecycle (auto_cleanup); one that started is killed
      await this.discard(disp.name);
    }
  }

  /**
   * A disposable for a request (DispVM.from_appvm): the first completed
   * preloaded one of `appvm`, taken off its list, unpaused and marked used;
   * undefined when none is ready. Runs inside the request's registry write.
   */
  request(appvm: Qube): Qube | undefined {
    if (this.maxFor(appvm) === 0 && this.listOf(appvm).length === 0) return undefined;
    // fill_preload_gap: not needed for this request, so later
    this.schedule(appvm, Math.max(5000, this.delayMs(appvm)), 'there is a gap');
    const list = this.listOf(appvm);
    const pick = list.find((n) => {
      const d = this.registry.byName(n);
      return d !== undefined && d.klass === 'DispVM' && truthy(d.feature(COMPLETED)) && (d.power === 'Paused' || d.power === 'Running');
    });
    if (pick === undefined) return undefined;
    const d = this.registry.byName(pick) as Qube;
    this.log('info', `${d.name}: requesting preloaded qube`);
    this.registry.write(() => {
      this.setList(appvm, list.filter((n) => n !== pick));
      this.registry.setFeature(d, IN_PROGRESS, '1');
    });
    if (d.power === 'Paused') void this.power.unpause(d).catch((e: Error) => this.log('warning', `cannot unpause ${d.name}: ${e.message}`));
    this.markUsed(appvm, d);
    return d;
  }

  /** use_preload: it becomes an ordinary disposable; the template refills after its delay. */
  private markUsed(appvm: Qube, d: Qube): void {
    this.registry.write(() => {
      if (!truthy(appvm.feature('internal')) && d.features.has('internal')) this.registry.removeFeature(d, 'internal');
      if (d.features.has(IN_PROGRESS)) this.registry.removeFeature(d, IN_PROGRESS);
    });
    this.registry.fire(appvm, 'domain-preload-dispvm-used', [['dispvm', d.name]]);
    this.schedule(appvm, this.delayMs(appvm), `${d.name} was used`);
  }

  // --- events ---

  private onEvent(subject: Qube | null, event: string, kwargs: readonly (readonly [string, string])[]): void {
    if (this.closed) return;
    const kw = new Map(kwargs);
    if (event === `domain-feature-pre-set:${MAX}`) {
      const v = kw.get('value') ?? '';
      if (!/^\d*$/.test(v)) throw new QubesValueError('Invalid preload-dispvm-max value: not a digit');
      return;
    }
    if (event === `domain-feature-pre-set:${DELAY}`) {
      const v = kw.get('value') ?? '';
      if (v !== '' && !Number.isFinite(Number(v))) throw new QubesValueError('Invalid preload-dispvm-delay value: not an integer or float');
      return;
    }
    if (event === `domain-feature-set:${MAX}` || event === `domain-feature-delete:${MAX}`) {
      if (event.startsWith('domain-feature-set') && kw.get('value') === kw.get('oldvalue')) return;
      const target = subject?.klass === 'AdminVM' ? this.defaultDispvm : subject ?? undefined;
      // a template's own value does not count while the global one applies to it
      if (!target || (subject?.klass !== 'AdminVM' && this.globalSet(target))) return;
      if (this.isDvmTemplate(target) || this.listOf(target).length) this.schedule(target, 0, `${subject?.klass === 'AdminVM' ? 'global' : 'local'} feature changed`);
      return;
    }
    if (subject === null && (event === 'property-set:default_dispvm' || event === 'property-reset:default_dispvm')) {
      for (const n of [kw.get('oldvalue'), kw.get('newvalue'), this.defaultDispvm?.name]) {
        const q = n ? this.registry.byName(n) : undefined;
        if (q?.klass === 'AppVM') this.schedule(q, 0, 'default_dispvm changed');
      }
      return;
    }
    if (subject?.klass === 'AppVM' && (event === 'property-set:template_for_dispvms' || event === 'property-reset:template_for_dispvms')) {
      this.schedule(subject, 0, 'template_for_dispvms changed');
      return;
    }
    if (event === 'domain-unpaused' && subject?.klass === 'DispVM') {
      // unpaused without a request (admin.vm.Unpause): used all the same
      const holder = this.holderOf(subject.name);
      if (!holder) return;
      this.log('warning', `${subject.name}: a preloaded qube was unpaused before being requested`);
      this.setList(holder, this.listOf(holder).filter((n) => n !== subject.name));
      this.markUsed(holder, subject);
      return;
    }
    if (event === 'domain-shutdown' && subject) {
      if (subject.klass === 'DispVM') {
        const holder = this.holderOf(subject.name);
        if (!holder) return;
        this.setList(holder, this.listOf(holder).filter((n) => n !== subject.name));
        this.schedule(holder, this.delayMs(holder), `${subject.name} stopped`);
      } else if (this.isDvmTemplate(subject) && this.listOf(subject).length) {
        // their private volume is an overlay of the template's, which it changed
        const old = this.listOf(subject);
        this.setList(subject, []);
        this.log('info', `${subject.name}: refreshing preloaded qube(s) after its shutdown: ${old.join(', ')}`);
        void Promise.all(old.map((n) => this.discard(n))).then(() => this.schedule(subject, 0, 'the template stopped'));
      }
      return;
    }
    if (event === 'domain-delete') {
      const name = kw.get('vm');
      const holder = name ? this.holderOf(name) : undefined;
      if (holder && name) this.setList(holder, this.listOf(holder).filter((n) => n !== name));
    }
  }
}
