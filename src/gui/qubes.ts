/**
 * The qube manager's model in the GUI domain: the qubes the Admin API lets
 * this GUI domain see (admin.vm.List to dom0 is filtered by qubesd under
 * the policy: by default the qubes whose guivm it is), their properties
 * (admin.vm.property.GetAll), kept live by admin.Events; and the actions,
 * each one Admin API call under the policy. Nothing here decides what is
 * allowed: a refused call is reported as it came back.
 */
import { AdminError, type AdminEvent, type AdminTransport } from './admin.js';
import { mapLimit } from '../common/map-limit.js';

export interface QubeRow {
  readonly name: string;
  readonly klass: string;
  readonly state: string;
  readonly label: string;
  readonly template: string;
  readonly netvm: string;
  /** It provides network to other qubes (a netvm choice). */
  readonly providesNetwork: boolean;
  /** Disk usage of the private volume in bytes, when known. */
  readonly diskBytes: number | null;
  /** A disposable template (template_for_dispvms): disposables of it can be started. */
  readonly dispvmTemplate: boolean;
}

export const ACTIONS = ['start', 'shutdown', 'kill', 'pause', 'unpause', 'remove'] as const;
export type QubeAction = (typeof ACTIONS)[number];

const ACTION_METHOD: Record<QubeAction, string> = {
  start: 'admin.vm.Start',
  shutdown: 'admin.vm.Shutdown',
  kill: 'admin.vm.Kill',
  pause: 'admin.vm.Pause',
  unpause: 'admin.vm.Unpause',
  remove: 'admin.vm.Remove',
};

/** Power state implied by an event (the row is re-read after it anyway). */
const EVENT_STATE: Readonly<Record<string, string>> = {
  'domain-pre-start': 'Transient',
  'domain-start': 'Running',
  'domain-start-failed': 'Halted',
  'domain-pre-shutdown': 'Transient',
  'domain-shutdown': 'Halted',
  'domain-stopped': 'Halted',
  'domain-paused': 'Paused',
  'domain-unpaused': 'Running',
};

/** The row's fields that are properties, by property name. */
const ROW_FIELDS: Readonly<Record<string, 'label' | 'template' | 'netvm' | 'providesNetwork' | 'dispvmTemplate'>> = { label: 'label', template: 'template', netvm: 'netvm', provides_network: 'providesNetwork', template_for_dispvms: 'dispvmTemplate' };

/** Qube names as qubesd accepts them (qubes/vm/__init__.py validate_name). */
export const QUBE_NAME = /^[A-Za-z][A-Za-z0-9_.-]{0,30}$/;
const PROP_NAME = /^[a-z][a-z0-9_]{0,63}$/;
const TAG_NAME = /^[A-Za-z0-9_.:-]{1,64}$/;
const FEATURE_NAME = /^[A-Za-z0-9_.:-]{1,64}$/;
/** What may go in a property or feature value (one line, no control characters). */
const VALUE = /^[^\x00-\x1f\x7f]{0,1024}$/;

export function bad(what: string): AdminError {
  return new AdminError('QubesValueError', what);
}

/** `admin.vm.List` lines: `NAME class=CLASS state=STATE ...`. */
export function parseVmList(text: string): { name: string; klass: string; state: string }[] {
  const out: { name: string; klass: string; state: string }[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const [name, ...kv] = line.split(' ');
    const f = new Map(kv.map((x) => [x.slice(0, x.indexOf('=')), x.slice(x.indexOf('=') + 1)]));
    if (name && QUBE_NAME.test(name)) out.push({ name, klass: f.get('class') ?? '', state: f.get('state') ?? '' });
  }
  return out;
}

export interface PropValue {
  readonly value: string;
  readonly isDefault: boolean;
  readonly type: string;
}

/** `admin.vm.property.GetAll` lines: `NAME default=True|False type=TYPE VALUE`. */
export function parseGetAll(text: string): Map<string, PropValue> {
  const m = new Map<string, PropValue>();
  for (const line of text.split('\n')) {
    const parts = line.split(' ');
    if (parts.length < 3) continue;
    m.set(parts[0] as string, { isDefault: parts[1] === 'default=True', type: (parts[2] as string).replace(/^type=/, ''), value: parts.slice(3).join(' ') });
  }
  return m;
}

export interface QubeDetails {
  readonly name: string;
  readonly properties: Record<string, PropValue>;
  readonly tags: string[];
  readonly features: Record<string, string>;
}

/** The audio domain's service for volume and mute (qubes-rpc/qube/audio.Volume). */
export const AUDIO_VOLUME = 'audio.Volume';

export interface AudioState {
  /** The qube's audiovm (none: it has no sound). */
  readonly audiovm: string | null;
  readonly volume: number;
  readonly muted: boolean;
}

export type QubeChange = { readonly row: QubeRow } | { readonly rows: readonly QubeRow[] } | { readonly removed: string } | { readonly all: true };

/** Admin API reads in flight at once while loading (qubesd answers them one by one anyway). */
export const READ_CONCURRENCY = 16;
/** How often the list is checked against admin.vm.List (what the events cannot say). */
export const RECONCILE_MS = 3000;

export class QubeManager {
  private rows = new Map<string, QubeRow>();
  /** The disk-usage pass in progress (tests wait for it). */
  diskPass: Promise<void> = Promise.resolve();
  private readonly listeners = new Set<(change: QubeChange) => void>();
  private started: Promise<void> | null = null;
  private readonly refreshing = new Map<string, NodeJS.Timeout>();
  private closed = false;
  private retry: NodeJS.Timeout | undefined;
  private reconciler: NodeJS.Timeout | undefined;
  /** When each row was last read on its own (refreshNow). */
  private readonly readAt = new Map<string, number>();
  /** Tags per qube, once read (tags()). */
  private readonly tagCache = new Map<string, Set<string>>();
  /** Why the list could not be loaded (shown in the page), or null. */
  error: string | null = null;
  loaded = false;

  constructor(
    private readonly admin: AdminTransport,
    private readonly self: string,
    private readonly log: (m: string) => void = () => undefined,
  ) {}

  /** Follow events, then load the list (idempotent; retried after a failure). */
  start(): Promise<void> {
    this.started ??= (async () => {
      // events first: a change during the load is not missed (the row is re-read)
      void this.follow();
      // what no event tells: qubesd evaluates an event against its subject as it is after the
      // change, so the removal of the guivm-<name> tag itself never reaches us (as in the
      // reference). One admin.vm.List now and then drops the rows of qubes no longer ours.
      this.reconciler = setInterval(() => void this.reconcile(), RECONCILE_MS);
      this.reconciler.unref();
      try {
        await this.load();
      } catch (e) {
        this.error = e instanceof AdminError && e.excType === 'Refused' ? `The policy does not let ${this.self} list qubes through the Admin API.` : (e as Error).message;
        this.emit({ all: true });
      }
    })();
    return this.started;
  }

  list(): QubeRow[] {
    return [...this.rows.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  subscribe(f: (change: QubeChange) => void): () => void {
    this.listeners.add(f);
    return () => this.listeners.delete(f);
  }

  private emit(c: QubeChange): void {
    for (const f of this.listeners) f(c);
  }

  /**
   * The list, then the rows: admin.vm.List, then GetAll for each qube with
   * at most {@link READ_CONCURRENCY} calls at once; the page gets them then.
   * Disk usage (volume.Info, one more call per qube) comes in a second pass
   * that does not hold the first paint back.
   */
  private async load(): Promise<void> {
    const vms = parseVmList(await this.admin.call('admin.vm.List', 'dom0')).filter((v) => v.klass !== 'AdminVM');
    const rows = await mapLimit(vms, READ_CONCURRENCY, (v) => this.fetchRow(v.name, v.klass, v.state, false));
    const old = this.rows;
    this.rows = new Map();
    // a usage already known stays until the second pass reads it again
    for (const r of rows) if (r) this.rows.set(r.name, { ...r, diskBytes: old.get(r.name)?.diskBytes ?? null });
    this.error = null;
    this.loaded = true;
    this.emit({ all: true });
    this.diskPass = this.loadDisk();
  }

  /** The second pass: each row's disk usage; the page gets the rows in batches. */
  private async loadDisk(): Promise<void> {
    let dirty: QubeRow[] = [];
    const flush = (): void => {
      if (dirty.length > 0) this.emit({ rows: dirty });
      dirty = [];
    };
    const timer = setInterval(flush, 250);
    try {
      await mapLimit([...this.rows.keys()], READ_CONCURRENCY, async (name) => {
        if (this.closed) return;
        const diskBytes = await this.diskUsage(name);
        const cur = this.rows.get(name);
        if (!cur || cur.diskBytes === diskBytes) return;
        const next = { ...cur, diskBytes };
        this.rows.set(name, next);
        dirty.push(next);
      });
    } finally {
      clearInterval(timer);
      flush();
    }
  }

  /** The private volume's usage as qubesd reports it (volume.Info `usage=`), null when unknown. */
  private async diskUsage(name: string): Promise<number | null> {
    try {
      const info = await this.admin.call('admin.vm.volume.Info', name, 'private');
      const u = /^usage=(\d+)$/m.exec(info)?.[1];
      return u === undefined ? null : Number(u);
    } catch {
      // no private volume, or not allowed: unknown
      return null;
    }
  }

  private async fetchRow(name: string, klass: string, state: string, withDisk: boolean): Promise<QubeRow | null> {
    let p: Map<string, PropValue>;
    try {
      p = parseGetAll(await this.admin.call('admin.vm.property.GetAll', name));
    } catch (e) {
      // gone meanwhile, or hidden from us
      this.log(`${name}: ${(e as Error).message}`);
      return null;
    }
    const diskBytes = withDisk ? await this.diskUsage(name) : null;
    const v = (k: string): string => p.get(k)?.value ?? '';
    return { name, klass, state, label: v('label'), template: v('template'), netvm: v('netvm'), providesNetwork: v('provides_network') === 'True', diskBytes, dispvmTemplate: v('template_for_dispvms') === 'True' };
  }

  /** Drop the rows admin.vm.List no longer lists; read the qubes it lists that have no row. */
  private async reconcile(): Promise<void> {
    if (!this.loaded || this.closed) return;
    const t0 = Date.now();
    let names: Set<string>;
    try {
      names = new Set(parseVmList(await this.admin.call('admin.vm.List', 'dom0')).filter((v) => v.klass !== 'AdminVM').map((v) => v.name));
    } catch {
      return;
    }
    // a row read since the list was asked for is newer than the list
    for (const name of [...this.rows.keys()]) if (!names.has(name) && (this.readAt.get(name) ?? 0) < t0 && this.rows.delete(name)) this.emit({ removed: name });
    for (const name of names) if (!this.rows.has(name)) this.refresh(name);
  }

  private async follow(): Promise<void> {
    while (!this.closed) {
      try {
        await this.admin.events((e) => this.onEvent(e));
        this.log('admin.Events ended; following again');
      } catch (e) {
        this.log(`admin.Events: ${(e as Error).message}`);
      }
      if (this.closed) return;
      await new Promise<void>((r) => (this.retry = setTimeout(r, 1000)));
      // what changed meanwhile
      await this.load().catch(() => undefined);
    }
  }

  private onEvent(e: AdminEvent): void {
    const vm = e.kwargs['vm'];
    const tag = e.kwargs['tag'];
    if (tag !== undefined && e.event.startsWith('domain-tag-')) {
      const cached = this.tagCache.get(e.subject);
      if (cached && e.event.startsWith('domain-tag-add:')) cached.add(tag);
      else if (cached) cached.delete(tag);
    }
    if (e.event === 'domain-add' && vm) return this.refresh(vm);
    if (e.event === 'domain-delete' && vm) {
      if (this.rows.delete(vm)) this.emit({ removed: vm });
      return;
    }
    const row = this.rows.get(e.subject);
    if (!row) {
      // a qube can become ours after its creation (a guivm-<name> tag set later): read it then
      if (e.event.startsWith('domain-tag-add:') && e.subject !== '') this.refresh(e.subject);
      return;
    }
    const state = EVENT_STATE[e.event];
    if (state !== undefined && state !== row.state) {
      const next = { ...row, state };
      this.rows.set(row.name, next);
      this.emit({ row: next });
    }
    // a property the row shows: its new value is in the event (the row is re-read after anyway)
    if (e.event.startsWith('property-set:')) {
      const field = ROW_FIELDS[e.event.slice('property-set:'.length)];
      const nv = e.kwargs['newvalue'];
      const cur = this.rows.get(row.name);
      if (field && nv !== undefined && cur) {
        const next = { ...cur, [field]: field === 'providesNetwork' || field === 'dispvmTemplate' ? nv === 'True' : nv === 'None' ? '' : nv };
        this.rows.set(row.name, next);
        this.emit({ row: next });
      }
    }
    // a tag removed (guivm-<name>): the qube may no longer be ours, and the re-read drops it then
    if (state !== undefined || e.event.startsWith('domain-tag-delete:') || e.event.startsWith('property-set:') || e.event.startsWith('property-reset:') || e.event.startsWith('property-del:')) this.refresh(row.name);
  }

  /** Re-read one qube (a burst of events is one refresh). */
  private refresh(name: string): void {
    if (this.refreshing.has(name) || this.closed) return;
    this.refreshing.set(
      name,
      setTimeout(() => {
        this.refreshing.delete(name);
        void this.refreshNow(name);
      }, 20),
    );
  }

  private async refreshNow(name: string): Promise<void> {
    let v: { name: string; klass: string; state: string } | undefined;
    try {
      v = parseVmList(await this.admin.call('admin.vm.List', name)).find((x) => x.name === name);
    } catch {
      v = undefined;
    }
    const row = v ? await this.fetchRow(name, v.klass, v.state, true) : null;
    if (!row) {
      this.readAt.delete(name);
      if (this.rows.delete(name)) this.emit({ removed: name });
      return;
    }
    this.rows.set(name, row);
    this.readAt.set(name, Date.now());
    this.emit({ row });
  }

  private known(name: string): void {
    if (!QUBE_NAME.test(name)) throw bad('invalid qube name');
    // only the qubes the list shows: no call is made for a name the GUI domain cannot see
    if (!this.rows.has(name)) throw new AdminError('QubesVMNotFoundError', `no such qube: ${name}`);
  }

  /** An action on a qube (one Admin API call). @throws AdminError */
  async act(name: string, action: QubeAction): Promise<void> {
    this.known(name);
    if (!(ACTIONS as readonly string[]).includes(action)) throw bad('invalid action');
    await this.admin.call(ACTION_METHOD[action], name);
    if (action === 'remove' && this.rows.delete(name)) this.emit({ removed: name });
  }

  /**
   * A new disposable of a disposable template of ours, started: as the
   * reference's manager and domains widget, admin.vm.CreateDisposable on the
   * template, then admin.vm.Start on the qube qubesd names. qubesd makes it
   * ours (the creator's set-created-guivm); the policy lets a GUI domain do
   * this only for its own templates. Its row comes with the domain-add event.
   * @throws AdminError
   */
  async startDisposable(template: string): Promise<string> {
    this.known(template);
    if (!this.rows.get(template)?.dispvmTemplate) throw bad(`${template} is not a disposable template (template_for_dispvms is False)`);
    const name = (await this.admin.call('admin.vm.CreateDisposable', template)).trim();
    if (!QUBE_NAME.test(name)) throw new AdminError('ProtocolError', 'admin.vm.CreateDisposable: unexpected reply');
    await this.admin.call('admin.vm.Start', name);
    return name;
  }

  /** Every property, tag and feature of a qube. @throws AdminError */
  async details(name: string): Promise<QubeDetails> {
    this.known(name);
    const [props, tags, featureNames] = await Promise.all([
      this.admin.call('admin.vm.property.GetAll', name),
      this.admin.call('admin.vm.tag.List', name),
      this.admin.call('admin.vm.feature.List', name),
    ]);
    const features: Record<string, string> = {};
    for (const f of featureNames.split('\n').filter((x) => x !== '')) {
      features[f] = await this.admin.call('admin.vm.feature.Get', name, f).catch(() => '');
    }
    return { name, properties: Object.fromEntries(parseGetAll(props)), tags: tags.split('\n').filter((x) => x !== ''), features };
  }

  /** Set a property (null: reset it to its default). @throws AdminError */
  async setProperty(name: string, prop: string, value: string | null): Promise<void> {
    this.known(name);
    if (!PROP_NAME.test(prop)) throw bad('invalid property name');
    if (value === null) await this.admin.call('admin.vm.property.Reset', name, prop);
    else {
      if (!VALUE.test(value)) throw bad('invalid value');
      await this.admin.call('admin.vm.property.Set', name, prop, value);
    }
    this.refresh(name);
  }

  /** Add (true) or remove (false) a tag. @throws AdminError */
  async setTag(name: string, tag: string, on: boolean): Promise<void> {
    this.known(name);
    if (!TAG_NAME.test(tag)) throw bad('invalid tag');
    await this.admin.call(on ? 'admin.vm.tag.Set' : 'admin.vm.tag.Remove', name, tag);
  }

  /** Set a feature (null: remove it). @throws AdminError */
  async setFeature(name: string, feature: string, value: string | null): Promise<void> {
    this.known(name);
    if (!FEATURE_NAME.test(feature)) throw bad('invalid feature name');
    if (value === null) await this.admin.call('admin.vm.feature.Remove', name, feature);
    else {
      if (!VALUE.test(value)) throw bad('invalid value');
      await this.admin.call('admin.vm.feature.Set', name, feature, value);
    }
  }

  /** admin.vm.Create.AppVM (+template), then its netvm when given. @throws AdminError */
  async create(o: { name: string; label: string; template: string; netvm: string | null }): Promise<void> {
    if (!QUBE_NAME.test(o.name)) throw bad('invalid qube name');
    if (!/^[a-z]{1,20}$/.test(o.label)) throw bad('invalid label');
    if (o.template !== '' && !QUBE_NAME.test(o.template)) throw bad('invalid template');
    if (o.netvm !== null && o.netvm !== '' && !QUBE_NAME.test(o.netvm)) throw bad('invalid netvm');
    await this.admin.call('admin.vm.Create.AppVM', 'dom0', o.template, `name=${o.name} label=${o.label}`);
    if (o.netvm !== null) await this.admin.call('admin.vm.property.Set', o.name, 'netvm', o.netvm);
    await this.refreshNow(o.name);
  }

  /**
   * A qube's volume and mute in its audio domain: `audio.Volume+QUBE` to the
   * qube's audiovm, a qrexec call the policy decides (by default only
   * sys-gui to sys-audio). `change`: a volume 0-150 (percent), or mute /
   * unmute; nothing: read. @throws AdminError
   */
  async audio(name: string, change?: { volume: number } | { muted: boolean }): Promise<AudioState> {
    this.known(name);
    const prop = parseGetAll(`audiovm ${await this.admin.call('admin.vm.property.Get', name, 'audiovm')}`).get('audiovm');
    const audiovm = prop?.value ?? '';
    if (audiovm === '') return { audiovm: null, volume: 100, muted: false };
    if (!QUBE_NAME.test(audiovm)) throw bad('invalid audiovm');
    let line = '';
    if (change && 'volume' in change) {
      if (!Number.isInteger(change.volume) || change.volume < 0 || change.volume > 150) throw bad('the volume is 0-150');
      line = `${change.volume}\n`;
    } else if (change) line = change.muted ? 'mute\n' : 'unmute\n';
    const r = await this.admin.service(audiovm, `${AUDIO_VOLUME}+${name}`, line);
    if (r.refused) throw new AdminError('Refused', `${AUDIO_VOLUME} to ${audiovm}: refused by the policy`);
    const m = /^volume=(\d+) muted=([01])$/m.exec(r.stdout.toString('utf8'));
    if (r.code !== 0 || !m) throw new AdminError('CallFailed', `${AUDIO_VOLUME} in ${audiovm}: ${r.stderr.trim() || `exit status ${r.code}`}`);
    return { audiovm, volume: Number(m[1]), muted: m[2] === '1' };
  }

  /**
   * The tags of this GUI domain's qubes (admin.vm.tag.List each, read once and
   * then kept by the tag events), for the policy editor's completion.
   */
  async tags(): Promise<string[]> {
    const missing = [...this.rows.keys()].filter((n) => !this.tagCache.has(n));
    await mapLimit(missing, READ_CONCURRENCY, async (name) => {
      const list = await this.admin.call('admin.vm.tag.List', name).catch(() => '');
      this.tagCache.set(name, new Set(list.split('\n').filter((t) => TAG_NAME.test(t))));
    });
    const all = new Set<string>();
    for (const [name, tags] of this.tagCache) if (this.rows.has(name)) for (const t of tags) all.add(t);
    return [...all].sort();
  }

  /** The labels (admin.label.List), for the create form. */
  async labels(): Promise<string[]> {
    return (await this.admin.call('admin.label.List', 'dom0')).split('\n').filter((l) => /^[a-z]{1,20}$/.test(l));
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.retry);
    clearInterval(this.reconciler);
    for (const t of this.refreshing.values()) clearTimeout(t);
    this.refreshing.clear();
  }
}
