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
const ROW_FIELDS: Readonly<Record<string, 'label' | 'template' | 'netvm' | 'providesNetwork'>> = { label: 'label', template: 'template', netvm: 'netvm', provides_network: 'providesNetwork' };

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

export type QubeChange = { readonly row: QubeRow } | { readonly removed: string } | { readonly all: true };

export class QubeManager {
  private readonly rows = new Map<string, QubeRow>();
  private readonly listeners = new Set<(change: QubeChange) => void>();
  private started: Promise<void> | null = null;
  private readonly refreshing = new Map<string, NodeJS.Timeout>();
  private closed = false;
  private retry: NodeJS.Timeout | undefined;
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

  private async load(): Promise<void> {
    const vms = parseVmList(await this.admin.call('admin.vm.List', 'dom0')).filter((v) => v.klass !== 'AdminVM');
    const rows = await mapLimit(vms, 16, (v) => this.fetchRow(v.name, v.klass, v.state));
    this.rows.clear();
    for (const r of rows) if (r) this.rows.set(r.name, r);
    this.error = null;
    this.loaded = true;
    this.emit({ all: true });
  }

  private async fetchRow(name: string, klass: string, state: string): Promise<QubeRow | null> {
    let p: Map<string, PropValue>;
    try {
      p = parseGetAll(await this.admin.call('admin.vm.property.GetAll', name));
    } catch (e) {
      // gone meanwhile, or hidden from us
      this.log(`${name}: ${(e as Error).message}`);
      return null;
    }
    let diskBytes: number | null = null;
    try {
      const info = await this.admin.call('admin.vm.volume.Info', name, 'private');
      const u = /^usage=(\d+)$/m.exec(info)?.[1];
      if (u !== undefined) diskBytes = Number(u);
    } catch {
      // no private volume, or not allowed: unknown
    }
    const v = (k: string): string => p.get(k)?.value ?? '';
    return { name, klass, state, label: v('label'), template: v('template'), netvm: v('netvm'), providesNetwork: v('provides_network') === 'True', diskBytes };
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
        const next = { ...cur, [field]: field === 'providesNetwork' ? nv === 'True' : nv === 'None' ? '' : nv };
        this.rows.set(row.name, next);
        this.emit({ row: next });
      }
    }
    if (state !== undefined || e.event.startsWith('property-set:') || e.event.startsWith('property-reset:') || e.event.startsWith('property-del:')) this.refresh(row.name);
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
    const row = v ? await this.fetchRow(name, v.klass, v.state) : null;
    if (!row) {
      if (this.rows.delete(name)) this.emit({ removed: name });
      return;
    }
    this.rows.set(name, row);
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

  /** The labels (admin.label.List), for the create form. */
  async labels(): Promise<string[]> {
    return (await this.admin.call('admin.label.List', 'dom0')).split('\n').filter((l) => /^[a-z]{1,20}$/.test(l));
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.retry);
    for (const t of this.refreshing.values()) clearTimeout(t);
    this.refreshing.clear();
  }
}
