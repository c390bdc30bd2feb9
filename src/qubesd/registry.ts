/**
 * The qube registry: qubes, global properties, labels, tags and features,
 * with the reference's defaults, inheritance and events (qubes-core-admin
 * qubes/app.py, qubes/vm/*.py, qubes/features.py, qubes/ext/gui.py,
 * qubes/ext/audio.py, qubes/ext/admin.py).
 *
 * Pure model code: persistence goes through the {@link RegistryStore}
 * interface, which {@link Registry.write} brackets in one transaction per
 * change. A change that fails half-way is rolled back in the store and the
 * model is reloaded from it, so memory and disk never disagree.
 *
 * Events are delivered synchronously to listeners as the reference's
 * fire_event does, pre-events included, with kwargs as strings (`str(v)`,
 * None as "None").
 */
import { randomUUID } from 'node:crypto';
import {
  QubesException,
  QubesFeatureNotFoundError,
  QubesLabelInUseError,
  QubesLabelNotFoundError,
  QubesNoSuchPropertyError,
  QubesPropertyValueError,
  QubesTagNotFoundError,
  QubesValueError,
  QubesVMAlreadyExistsError,
  QubesVMInUseError,
  QubesVMNotFoundError,
  QubesVMNotHaltedError,
  ProtocolError,
  pyRepr,
} from './errors.js';
import { type QubeClass, validateName, validateTag } from './names.js';
import { NO_VALUE, type HolderView, type PropDef, type Read, type Value, propDef, propList, pyStr } from './properties.js';

export type PowerState = 'Halted' | 'Transient' | 'Running' | 'Paused' | 'Suspended' | 'Halting' | 'Dying' | 'Crashed' | 'NA';

export interface Label {
  readonly index: number;
  readonly name: string;
  readonly color: string;
}

/** The 8 Qubes labels (qubes/app.py defaults). */
export const DEFAULT_LABELS: readonly Label[] = [
  { index: 1, name: 'red', color: '0xcc0000' },
  { index: 2, name: 'orange', color: '0xf57900' },
  { index: 3, name: 'yellow', color: '0xedd400' },
  { index: 4, name: 'green', color: '0x73d216' },
  { index: 5, name: 'gray', color: '0x555555' },
  { index: 6, name: 'blue', color: '0x3465a4' },
  { index: 7, name: 'purple', color: '0x75507b' },
  { index: 8, name: 'black', color: '0x000000' },
];
export const MAX_DEFAULT_LABEL = 8;
export const ADMINVM_UUID = '00000000-0000-0000-0000-000000000000';
const MAX_QID = 254 * 255;

/** One qube's persistent record, as the store keeps it. */
export interface QubeRecord {
  readonly qid: number;
  readonly name: string;
  readonly uuid: string;
  readonly klass: QubeClass;
  readonly props: ReadonlyMap<string, Value>;
  readonly tags: ReadonlySet<string>;
  readonly features: ReadonlyMap<string, string>;
}

export interface RegistrySnapshot {
  readonly qubes: readonly QubeRecord[];
  readonly globals: ReadonlyMap<string, Value>;
  readonly labels: readonly Label[];
}

/** Where the registry persists. Every method is called inside {@link RegistryStore.transaction}. */
export interface RegistryStore {
  load(): RegistrySnapshot;
  /** Run `fn` as one transaction: committed when it returns, rolled back when it throws. */
  transaction<T>(fn: () => T): T;
  /** Resolves once every transaction committed so far is on disk (see SqliteStore's group fsync). */
  sync(): Promise<void>;
  /** Set by the registry: called when committed-looking writes were lost after all (a shared commit failed). */
  onLost?: (() => void) | null;
  addQube(q: QubeRecord): void;
  removeQube(qid: number): void;
  setProp(qid: number, name: string, value: Value | undefined): void;
  setGlobal(name: string, value: Value | undefined): void;
  setTag(qid: number, tag: string, present: boolean): void;
  setFeature(qid: number, name: string, value: string | undefined): void;
  setLabel(label: Label, present: boolean): void;
}

/** An event: subject null for app-level events; kwargs in the reference's order. */
export type EventListener = (subject: Qube | null, event: string, kwargs: readonly (readonly [string, string])[]) => void;

export class Qube implements HolderView {
  readonly props = new Map<string, Value>();
  readonly tags = new Set<string>();
  readonly features = new Map<string, string>();
  power: PowerState;
  /** Domain id while running (the qrexec daemon's), else -1. */
  domid = -1;

  constructor(
    readonly registry: Registry,
    readonly klass: QubeClass,
    readonly qid: number,
    readonly name: string,
    readonly uuid: string,
  ) {
    this.power = klass === 'AdminVM' ? 'Running' : 'Halted';
    if (klass === 'AdminVM') this.domid = 0;
  }

  toString(): string {
    return this.name;
  }

  def(prop: string): PropDef | undefined {
    return propDef(this.klass, prop);
  }

  /** The value (set or default), or NO_VALUE. Unknown properties read as NO_VALUE. */
  get(prop: string): Read {
    if (this.klass !== 'AdminVM') {
      if (prop === 'name') return this.name;
      if (prop === 'qid') return this.qid;
      if (prop === 'uuid') return this.uuid;
    }
    const def = this.def(prop);
    if (!def) return NO_VALUE;
    if (!def.stateless && this.props.has(prop)) return this.props.get(prop) as Value;
    return def.dflt ? def.dflt(this) : NO_VALUE;
  }

  has(prop: string): boolean {
    return this.def(prop) !== undefined;
  }

  /** Whether the property is at its default (reference property_is_default). */
  isDefault(prop: string): boolean {
    if (this.klass !== 'AdminVM' && (prop === 'name' || prop === 'qid' || prop === 'uuid')) return false;
    return !this.props.has(prop);
  }

  qube(name: string): Qube | null {
    return this.registry.byName(name) ?? null;
  }

  global(prop: string): Read {
    return this.registry.getGlobal(prop);
  }

  feature(name: string): string | undefined {
    return this.features.get(name);
  }

  featureVia(attr: 'template' | 'netvm', name: string): string | undefined {
    return this.registry.checkFeature(this, name, attr, false);
  }

  usersOf(prop: string): string[] {
    return this.registry.usersOf(this, prop);
  }

  powerState(): string {
    return this.power;
  }

  runningDomid(): number {
    return this.domid;
  }
}

/** The global properties' holder view. */
class AppView implements HolderView {
  readonly klass = null;
  readonly name = '';
  constructor(private readonly r: Registry) {}
  get(prop: string): Read {
    return this.r.getGlobal(prop);
  }
  has(prop: string): boolean {
    return propDef(null, prop) !== undefined;
  }
  qube(name: string): HolderView | null {
    return this.r.byName(name) ?? null;
  }
  global(prop: string): Read {
    return this.r.getGlobal(prop);
  }
  feature(): undefined {
    return undefined;
  }
  featureVia(): undefined {
    return undefined;
  }
  usersOf(): string[] {
    return [];
  }
  powerState(): string {
    return 'Running';
  }
  runningDomid(): number {
    return 0;
  }
}

/** Properties that refer to qubes and so block removing them (get_qube_prop_deps). */
const DEPENDENCY_PROPS = ['template', 'netvm', 'guivm', 'audiovm', 'default_dispvm', 'management_dispvm', 'relayvm'];

export class Registry {
  private readonly qubes = new Map<string, Qube>();
  private readonly uuids = new Map<string, Qube>();
  readonly globals = new Map<string, Value>();
  readonly labels = new Map<number, Label>();
  private readonly listeners = new Set<EventListener>();
  private readonly appView = new AppView(this);
  /** Bumped on every change of the model (and power state): caches of derived text compare it. */
  generation = 0;
  /** Set when a change inside write() touched the model. */
  private dirty = false;
  private inWrite = false;

  constructor(private readonly store: RegistryStore) {
    store.onLost = () => this.reload();
    this.reload();
  }

  /** (Re)build the model from the store; creates dom0 and the default labels when missing. */
  reload(): void {
    const snap = this.store.load();
    this.generation++;
    const oldPower = new Map([...this.qubes.values()].map((q) => [q.name, [q.power, q.domid] as const]));
    this.qubes.clear();
    this.uuids.clear();
    this.globals.clear();
    this.labels.clear();
    for (const l of snap.labels) this.labels.set(l.index, l);
    for (const [k, v] of snap.globals) this.globals.set(k, v);
    for (const rec of snap.qubes) {
      const q = new Qube(this, rec.klass, rec.qid, rec.name, rec.uuid);
      for (const [k, v] of rec.props) q.props.set(k, v);
      for (const t of rec.tags) q.tags.add(t);
      for (const [k, v] of rec.features) q.features.set(k, v);
      const p = oldPower.get(q.name);
      if (p) [q.power, q.domid] = p;
      this.index(q);
    }
    if (this.labels.size === 0 || !this.qubes.has('dom0')) {
      this.store.transaction(() => {
        if (this.labels.size === 0) {
          for (const l of DEFAULT_LABELS) {
            this.labels.set(l.index, l);
            this.store.setLabel(l, true);
          }
        }
        if (!this.qubes.has('dom0')) {
          const dom0 = new Qube(this, 'AdminVM', 0, 'dom0', ADMINVM_UUID);
          dom0.props.set('label', 'black');
          this.index(dom0);
          this.store.addQube(record(dom0));
        }
      });
    }
  }

  private index(q: Qube): void {
    this.qubes.set(q.name, q);
    this.uuids.set(q.uuid, q);
  }

  // --- events ---

  on(l: EventListener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  fire(subject: Qube | null, event: string, kwargs: readonly (readonly [string, string])[] = []): void {
    for (const l of [...this.listeners]) l(subject, event, kwargs);
  }

  // --- lookups ---

  get dom0(): Qube {
    return this.qubes.get('dom0') as Qube;
  }

  byName(name: string): Qube | undefined {
    return this.qubes.get(name);
  }

  byUuid(uuid: string): Qube | undefined {
    return this.uuids.get(uuid);
  }

  /** A qube by name or `{uuid}`. @throws QubesVMNotFoundError */
  find(ref: { name: string } | { uuid: string }): Qube {
    const q = 'name' in ref ? this.qubes.get(ref.name) : this.uuids.get(ref.uuid);
    if (!q) throw new QubesVMNotFoundError('name' in ref ? ref.name : `uuid:${ref.uuid}`);
    return q;
  }

  /** All qubes sorted as the reference sorts them (dom0 first, then by name). */
  list(): Qube[] {
    return [...this.qubes.values()].sort((a, b) =>
      a.klass === 'AdminVM' ? -1 : b.klass === 'AdminVM' ? 1 : a.name < b.name ? -1 : a.name > b.name ? 1 : 0,
    );
  }

  get size(): number {
    return this.qubes.size;
  }

  getGlobal(prop: string): Read {
    const def = propDef(null, prop);
    if (!def) return NO_VALUE;
    if (this.globals.has(prop)) return this.globals.get(prop) as Value;
    return def.dflt ? def.dflt(this.appView) : NO_VALUE;
  }

  /** The property's default for a qube, or for the globals (holder null). */
  defaultOf(holder: Qube | null, def: PropDef): Read {
    return def.dflt ? def.dflt(holder ?? this.appView) : NO_VALUE;
  }

  label(ref: string): Label {
    for (const l of this.labels.values()) if (l.name === ref) return l;
    if (/^[0-9]+$/.test(ref)) {
      const l = this.labels.get(Number(ref));
      if (l) return l;
    }
    throw new QubesLabelNotFoundError(ref);
  }

  /** Qubes whose `prop` (set or default) is `target`. */
  usersOf(target: Qube, prop: string): string[] {
    const out: string[] = [];
    for (const q of this.qubes.values()) if (q !== target && q.get(prop) === target.name) out.push(q.name);
    return out;
  }

  /**
   * Feature lookup with inheritance (qubes/features.py _recursive_check):
   * this qube, then along `attr` (template or netvm), then dom0 if asked.
   * Returns undefined when not found.
   */
  checkFeature(q: Qube, feature: string, attr: 'template' | 'netvm' | null, adminvm: boolean): string | undefined {
    let cur: Qube | undefined = q;
    const seen = new Set<Qube>();
    while (cur && !seen.has(cur)) {
      seen.add(cur);
      const v = cur.features.get(feature);
      if (v !== undefined) return v;
      if (attr === null) break;
      const next: Read = cur.get(attr);
      cur = typeof next === 'string' ? this.qubes.get(next) : undefined;
    }
    if (adminvm && q !== this.dom0) return this.dom0.features.get(feature);
    return undefined;
  }

  // --- writes ---

  /**
   * Run one change as one store transaction. Listeners see the events as
   * the change happens; the caller replies only after this returns (the
   * transaction has committed). If `fn` throws after touching the model,
   * the store rolls back and the model is reloaded from it.
   */
  write<T>(fn: () => T): T {
    if (this.inWrite) return fn();
    this.inWrite = true;
    this.dirty = false;
    try {
      return this.store.transaction(fn);
    } catch (e) {
      if (this.dirty) this.reload();
      throw e;
    } finally {
      this.inWrite = false;
    }
  }

  /**
   * Resolves once every change made so far is on disk (rejects when that
   * failed). A reply is sent only after this: for a change, and for an
   * answer that may have seen one.
   */
  durable(): Promise<void> {
    return this.store.sync();
  }

  private touch(): void {
    if (!this.inWrite) throw new Error('registry change outside write()');
    this.dirty = true;
    this.generation++;
  }

  /** Check and convert a value for a property, as the reference's setters do (before any event). */
  checkValue(holder: Qube | null, def: PropDef, v: Value): Value {
    const hv: HolderView = holder ?? this.appView;
    const holderName = holder ? holder.name : 'Qubes';
    if (def.forbidden) {
      throw new QubesPropertyValueError(`property ${pyRepr(def.name)} on ${holder ? holder.klass : 'Qubes'} instance cannot be set`);
    }
    if (def.writeOnce && (holder ? !holder.isDefault(def.name) : this.globals.has(def.name))) {
      // the reference raises AttributeError here: not a QubesException
      throw new QubesException(`property ${pyRepr(def.name)} is write-once and already set`);
    }
    let value = v;
    if (def.type === 'vm') {
      if (value === null || value === '') {
        if (!def.allowNone) throw new QubesPropertyValueError(`Invalid value ${pyRepr('None')} for property ${pyRepr(def.name)} of ${pyRepr(holderName)}`);
        value = null;
      } else {
        const target = this.qubes.get(String(value));
        if (!target) throw new QubesPropertyValueError(`Can't set ${def.name} to non-existing qube ${String(value)}`);
        if (def.vmClass && !def.vmClass.includes(target.klass)) {
          throw new QubesPropertyValueError(
            `wrong VM class: domains[${pyRepr(target.name)}] is of type ${target.klass} and not ${def.vmClass.join(', ')}`,
          );
        }
        // VMProperty's default vmclass is LocalVM: dom0 is one, RemoteVMs are not
        if (!def.vmClass && target.klass === 'RemoteVM') {
          throw new QubesPropertyValueError(`wrong VM class: domains[${pyRepr(target.name)}] is of type RemoteVM and not LocalVM`);
        }
      }
    } else if (def.type === 'label') {
      value = this.label(String(value)).name;
    }
    if (def.setter) value = def.setter(hv, value, def.name);
    return value;
  }

  /** Set a property (qube or global) from a checked value; fires pre-set/set. */
  setProperty(holder: Qube | null, prop: string, raw: Value): void {
    const def = propDef(holder ? holder.klass : null, prop);
    if (!def) throw new QubesNoSuchPropertyError(holder ? holder.name : 'Qubes', prop);
    const value = this.checkValue(holder, def, raw);
    const old = holder ? holder.get(prop) : this.getGlobal(prop);
    const kw: [string, string][] = [
      ['name', prop],
      ['newvalue', pyStr(value, 'None')],
    ];
    if (old !== NO_VALUE) kw.push(['oldvalue', pyStr(old, 'None')]);
    this.fire(holder, `property-pre-set:${prop}`, kw);
    this.touch();
    if (holder) {
      holder.props.set(prop, value);
      this.store.setProp(holder.qid, prop, value);
    } else {
      this.globals.set(prop, value);
      this.store.setGlobal(prop, value);
    }
    this.fire(holder, `property-set:${prop}`, kw);
    this.afterPropertyChange(holder, prop);
  }

  /** Back to the default (delattr); fires pre-reset/pre-del/reset/del. */
  resetProperty(holder: Qube | null, prop: string): void {
    const def = propDef(holder ? holder.klass : null, prop);
    if (!def) throw new QubesNoSuchPropertyError(holder ? holder.name : 'Qubes', prop);
    if (def.writeOnce && (holder ? !holder.isDefault(prop) : this.globals.has(prop))) {
      throw new QubesException(`property ${pyRepr(prop)} is write-once and already set`);
    }
    const old = holder ? holder.get(prop) : this.getGlobal(prop);
    const kw: [string, string][] = [['name', prop]];
    if (old !== NO_VALUE) kw.push(['oldvalue', pyStr(old, 'None')]);
    this.fire(holder, `property-pre-reset:${prop}`, kw);
    this.fire(holder, `property-pre-del:${prop}`, kw);
    this.touch();
    if (holder) {
      holder.props.delete(prop);
      this.store.setProp(holder.qid, prop, undefined);
    } else {
      this.globals.delete(prop);
      this.store.setGlobal(prop, undefined);
    }
    this.fire(holder, `property-reset:${prop}`, kw);
    this.fire(holder, `property-del:${prop}`, kw);
    this.afterPropertyChange(holder, prop);
  }

  /** The guivm-/audiovm- tags the reference's gui and audio extensions keep. */
  private afterPropertyChange(holder: Qube | null, prop: string): void {
    if (holder) {
      if (prop === 'guivm' || prop === 'audiovm') this.syncDeviceTags(holder, prop);
      return;
    }
    if (prop === 'default_guivm' || prop === 'default_audiovm') {
      const p = prop === 'default_guivm' ? 'guivm' : 'audiovm';
      for (const q of this.qubes.values()) if (q.has(p) && q.isDefault(p)) this.syncDeviceTags(q, p);
    }
  }

  private syncDeviceTags(q: Qube, prop: 'guivm' | 'audiovm'): void {
    const v = q.get(prop);
    const want = typeof v === 'string' ? `${prop}-${v}` : null;
    for (const t of [...q.tags]) if (t.startsWith(`${prop}-`) && t !== want) this.removeTag(q, t);
    if (want && !q.tags.has(want)) this.addTag(q, want);
  }

  addTag(q: Qube, tag: string): void {
    validateTag(tag);
    if (q.tags.has(tag)) return;
    this.touch();
    q.tags.add(tag);
    this.store.setTag(q.qid, tag, true);
    this.fire(q, `domain-tag-add:${tag}`, [['tag', tag]]);
    if (tag.startsWith('created-by-')) this.onCreatedBy(q, tag.slice('created-by-'.length));
  }

  /** qubes/ext/admin.py and gui.py: the creator's tag-created-vm-with and set-created-guivm features. */
  private onCreatedBy(q: Qube, creatorName: string): void {
    const creator = this.qubes.get(creatorName);
    if (!creator) return;
    for (const t of (creator.features.get('tag-created-vm-with') ?? '').split(/\s+/)) if (t) this.addTag(q, t);
    const g = creator.features.get('set-created-guivm');
    if (g && q.has('guivm')) this.setProperty(q, 'guivm', g);
  }

  /** @throws QubesTagNotFoundError when absent */
  removeTag(q: Qube, tag: string): void {
    if (!q.tags.has(tag)) throw new QubesTagNotFoundError(q.name, tag);
    this.touch();
    q.tags.delete(tag);
    this.store.setTag(q.qid, tag, false);
    this.fire(q, `domain-tag-delete:${tag}`, [['tag', tag]]);
  }

  setFeature(q: Qube, name: string, value: string): void {
    const old = q.features.get(name);
    const kw: [string, string][] = [
      ['feature', name],
      ['value', value],
    ];
    if (old !== undefined) kw.push(['oldvalue', old]);
    this.fire(q, `domain-feature-pre-set:${name}`, kw);
    this.touch();
    q.features.set(name, value);
    this.store.setFeature(q.qid, name, value);
    this.fire(q, `domain-feature-set:${name}`, kw);
  }

  /** @throws QubesFeatureNotFoundError when absent */
  removeFeature(q: Qube, name: string): void {
    if (!q.features.has(name)) throw new QubesFeatureNotFoundError(q.name, name);
    this.fire(q, `domain-feature-pre-delete:${name}`, [['feature', name]]);
    this.touch();
    q.features.delete(name);
    this.store.setFeature(q.qid, name, undefined);
    this.fire(q, `domain-feature-delete:${name}`, [['feature', name]]);
  }

  private newQid(): number {
    const used = new Set([...this.qubes.values()].map((q) => q.qid));
    for (let i = 1; i < MAX_QID; i++) if (!used.has(i)) return i;
    throw new QubesException('No unused qube ID available');
  }

  /**
   * Create a qube (app.add_new_vm): checks the name, applies the default
   * template, tags it created-by-<creator>, fires domain-add.
   * @throws QubesVMAlreadyExistsError, QubesValueError, QubesLabelNotFoundError...
   */
  createQube(klass: QubeClass, name: string, label: string, opts: { template?: string | null; creator: string; props?: ReadonlyMap<string, Value> }): Qube {
    if (klass === 'AdminVM') throw new ProtocolError('cannot create AdminVM');
    validateName(name);
    if (this.qubes.has(name)) throw new QubesVMAlreadyExistsError(`Qube already exists: ${name}`);
    const lab = this.label(label);
    const hasTemplate = klass === 'AppVM' || klass === 'DispVM';
    let template: string | null = null;
    if (hasTemplate) {
      if (opts.template !== undefined && opts.template !== null) template = opts.template;
      else {
        const t = this.getGlobal(klass === 'DispVM' ? 'default_dispvm' : 'default_template');
        template = typeof t === 'string' ? t : null;
        if (template === null) throw new QubesValueError('Template for the qube not specified, nor default template set.');
      }
    }
    const q = new Qube(this, klass, this.newQid(), name, randomUUID());
    this.touch();
    q.props.set('label', lab.name);
    if (klass === 'DispVM' && !opts.props?.has('dispid')) {
      const used = new Set([...this.qubes.values()].map((x) => x.props.get('dispid')));
      let id = 0;
      do id = 1 + Math.floor(Math.random() * 9999);
      while (used.has(id));
      q.props.set('dispid', id);
    }
    if (template !== null) {
      const def = q.def('template') as PropDef;
      q.props.set('template', this.checkValue(q, def, template));
    }
    for (const [k, v] of opts.props ?? []) q.props.set(k, v);
    this.index(q);
    this.store.addQube(record(q));
    this.fire(null, 'domain-add', [['vm', q.name]]);
    this.syncDeviceTags(q, 'guivm');
    if (q.has('audiovm')) this.syncDeviceTags(q, 'audiovm');
    this.addTag(q, `created-by-${opts.creator}`);
    return q;
  }

  /** A disposable `disp<dispid>` of `template` with auto_cleanup (DispVM.from_appvm). */
  createDisposable(template: Qube, label: string, creator: string): Qube {
    const used = new Set([...this.qubes.values()].map((x) => x.props.get('dispid')));
    let id = 0;
    do id = 1 + Math.floor(Math.random() * 9999);
    while (used.has(id) || this.qubes.has(`disp${id}`));
    return this.createQube('DispVM', `disp${id}`, label, {
      template: template.name,
      creator,
      props: new Map<string, Value>([
        ['dispid', id],
        ['auto_cleanup', true],
      ]),
    });
  }

  /** Where a qube is used (get_qube_prop_deps): [holder name or '@GLOBAL', property]. */
  dependencies(q: Qube): [string, string][] {
    const out: [string, string][] = [];
    for (const def of propList(null)) if (def.type === 'vm' && this.getGlobal(def.name) === q.name) out.push(['@GLOBAL', def.name]);
    for (const other of this.qubes.values()) {
      if (other === q) continue;
      for (const p of DEPENDENCY_PROPS) if (other.has(p) && other.get(p) === q.name) out.push([other.name, p]);
    }
    return out;
  }

  /** Remove a halted qube nothing refers to (admin.vm.Remove). */
  removeQube(q: Qube): void {
    if (q.klass === 'AdminVM') throw new QubesVMInUseError(q.name, "'dom0' cannot be removed");
    if (q.get('installed_by_rpm') === true) throw new QubesVMInUseError(q.name, `VM installed by package manager: ${q.name}`);
    if (q.power !== 'Halted') throw new QubesVMNotHaltedError(q.name);
    this.fire(null, 'domain-pre-delete', [['vm', q.name]]);
    if (this.dependencies(q).length > 0) {
      throw new QubesVMInUseError(q.name, `Domain is in use: ${pyRepr(q.name)};  see 'journalctl -u qubesd -e' in dom0 for details`);
    }
    this.touch();
    this.qubes.delete(q.name);
    this.uuids.delete(q.uuid);
    this.store.removeQube(q.qid);
    this.fire(null, 'domain-delete', [['vm', q.name]]);
  }

  addLabel(name: string, color: string): Label {
    for (const l of this.labels.values()) if (l.name === name) throw new QubesLabelInUseError(name);
    const index = Math.max(MAX_DEFAULT_LABEL, ...this.labels.keys()) + 1;
    const l = { index, name, color };
    this.touch();
    this.labels.set(index, l);
    this.store.setLabel(l, true);
    return l;
  }

  removeLabel(l: Label): void {
    if (l.index <= MAX_DEFAULT_LABEL) throw new ProtocolError('Can only remove custom labels');
    for (const q of this.qubes.values()) if (q.props.get('label') === l.name) throw new QubesLabelInUseError(l.name);
    this.touch();
    this.labels.delete(l.index);
    this.store.setLabel(l, false);
  }

  /** A power state change (from the runtime); not persisted: a restart finds every qube Halted. */
  setPower(q: Qube, state: PowerState, domid = q.domid): void {
    this.generation++;
    q.power = state;
    q.domid = state === 'Halted' ? -1 : domid;
  }
}

function record(q: Qube): QubeRecord {
  return { qid: q.qid, name: q.name, uuid: q.uuid, klass: q.klass, props: q.props, tags: q.tags, features: q.features };
}

export { NO_VALUE };
