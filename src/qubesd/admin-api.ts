/**
 * The Admin API's methods (qubes-core-admin qubes/api/admin.py) as one
 * table: each entry declares what the reference's @method decorator does
 * (argument, payload, whether the destination must be dom0, scope and
 * read/write/execute), so dispatch, validation and the default admin policy
 * all come from it.
 *
 * Checks run in the reference's order: src, dest (decode_vm), the method
 * name, then payload, argument and destination type, then the handler, which
 * calls {@link Call.permit} (the reference's `admin-permission:<method>`
 * event) where the reference fires it: after its own argument checks and
 * before anything that would tell the caller whether a name exists.
 */
import {
  PermissionDenied,
  ProtocolError,
  QubesError,
  QubesFeatureNotFoundError,
  QubesLabelNotFoundError,
  QubesNoSuchPropertyError,
  QubesVMAlreadyExistsError,
  QubesVMNotFoundError,
} from './errors.js';
import { QUBE_CLASSES, isQubeClass, parseQubeRef, validateFeatureName, validateLabelColor, validateLabelName, validateName, validateTag, type QubeClass } from './names.js';
import { NO_VALUE, propDef, propList, pyStr, sanitize, type PropDef } from './properties.js';
import type { Qube, Registry } from './registry.js';

export type Scope = 'local' | 'global';

/** A filter the permission hook may return: items that fail it are hidden. */
export type PermitFilter = (item: PermitItem) => boolean;
export type PermitItem =
  | { kind: 'qube'; qube: Qube }
  | { kind: 'name'; name: string }
  | { kind: 'event'; subject: Qube | null; event: string; kwargs: readonly (readonly [string, string])[] };

/** What decides `admin-permission:<method>` beyond the built-in rules (policy-based filtering for qubes). */
export interface PermissionHook {
  /** Throw PermissionDenied to refuse; return filters for List/Events. */
  permit(call: Call, extra: Record<string, unknown>): PermitFilter[];
}

/** Power operations (src/qubesd/lifecycle.ts implements them over a Runtime). */
export interface PowerControl {
  start(q: Qube): Promise<void>;
  shutdown(q: Qube, force: boolean, wait: boolean): Promise<void>;
  kill(q: Qube): Promise<void>;
  pause(q: Qube): Promise<void>;
  unpause(q: Qube): Promise<void>;
  createDisposable(template: Qube, creator: Qube): Qube;
  /** Refill the template's preloaded disposables (CreateDisposable with the argument `preload`). */
  preloadDisposables?(template: Qube): void;
}

export interface ApiContext {
  readonly registry: Registry;
  readonly power: PowerControl;
  readonly hook?: PermissionHook;
  /** Volumes' disk usage (src/qubesd/volume-usage.ts); absent: 0. */
  readonly volumes?: { usage(q: Qube, vol: string): number };
}

/** One call being served. */
export class Call {
  readonly argGiven: boolean;
  constructor(
    readonly ctx: ApiContext,
    readonly method: string,
    readonly arg: string,
    readonly src: Qube,
    readonly dest: Qube,
    readonly payload: Buffer,
    /** admin.Events: send one event frame. */
    readonly sendEvent: (subject: string, event: string, kwargs: readonly (readonly [string, string])[]) => void,
    /** admin.Events: resolves when the client has gone. */
    readonly closed: Promise<void>,
  ) {
    this.argGiven = arg !== '';
  }

  get registry(): Registry {
    return this.ctx.registry;
  }

  /** The reference's fire_event_for_permission: built-in rules (qubes/ext/admin.py), then the hook. */
  permit(extra: Record<string, unknown> = {}): PermitFilter[] {
    builtinPermission(this);
    return this.ctx.hook ? this.ctx.hook.permit(this, extra) : [];
  }

  /** fire_event_for_filter */
  filter<T>(items: T[], toItem: (x: T) => PermitItem, extra: Record<string, unknown> = {}): T[] {
    const filters = this.permit(extra);
    return filters.length === 0 ? items : items.filter((x) => filters.every((f) => f(toItem(x))));
  }
}

/** qubes/ext/admin.py: write-protected features and created-by- tags (only dom0 may change those). */
const PROHIBITED_FEATURES = new Set(['deferred-netvm-original', 'preload-dispvm', 'preload-dispvm-completed', 'preload-dispvm-in-progress']);
function builtinPermission(c: Call): void {
  if ((c.method === 'admin.vm.feature.Set' || c.method === 'admin.vm.feature.Remove') && PROHIBITED_FEATURES.has(c.arg)) {
    throw new PermissionDenied('changing this feature is prohibited by qubes.ext.admin.AdminExtension');
  }
  if ((c.method === 'admin.vm.tag.Set' || c.method === 'admin.vm.tag.Remove') && c.arg.startsWith('created-by-') && c.src.klass !== 'AdminVM') {
    throw new PermissionDenied('changing this tag is prohibited by qubes.ext.admin.AdminExtension');
  }
}

type Result = string | null;
export interface MethodSpec {
  readonly name: string;
  /** true: dest must be dom0; false: must not; null: any. */
  readonly destAdminVM: boolean | null;
  /** true: must have; false: must not; null: either. */
  readonly wantsArg: boolean | null;
  readonly wantsPayload: boolean | null;
  readonly scope: Scope;
  readonly read: boolean;
  readonly write: boolean;
  readonly execute: boolean;
  /** Changes the registry: run inside one store transaction. */
  readonly handler: (c: Call) => Result | Promise<Result>;
}

/** A method table: the Admin API's, the internal API's, the misc API's. */
export type MethodTable = ReadonlyMap<string, MethodSpec>;

const METHODS = new Map<string, MethodSpec>();
/** The Admin API (qubesd.sock). */
export const ADMIN_METHODS: MethodTable = METHODS;

/** Add a method to a table. */
export function defineMethod(
  table: Map<string, MethodSpec>,
  name: string,
  flags: { dest: boolean | null; arg: boolean | null; payload: boolean | null; scope: Scope; write?: boolean; execute?: boolean },
  handler: (c: Call) => Result | Promise<Result>,
): void {
  const write = flags.write ?? false;
  const execute = flags.execute ?? false;
  table.set(name, {
    name,
    destAdminVM: flags.dest,
    wantsArg: flags.arg,
    wantsPayload: flags.payload,
    scope: flags.scope,
    read: !write && !execute,
    write,
    execute,
    handler,
  });
}

function m(
  name: string,
  flags: { dest: boolean | null; arg: boolean | null; payload: boolean | null; scope: Scope; write?: boolean; execute?: boolean },
  handler: (c: Call) => Result | Promise<Result>,
): void {
  defineMethod(METHODS, name, flags, handler);
}

/** Every method, in table order. */
export function methods(): readonly MethodSpec[] {
  return [...METHODS.values()];
}
export function method(name: string): MethodSpec | undefined {
  return METHODS.get(name);
}

// --- helpers ---

const lines = (xs: Iterable<string>): string => {
  let s = '';
  for (const x of xs) s += `${x}\n`;
  return s;
};

function holderOf(c: Call, global: boolean): Qube | null {
  return global ? null : c.dest;
}
function defOf(c: Call, holder: Qube | null): PropDef {
  const def = propDef(holder ? holder.klass : null, c.arg);
  if (!def) throw new QubesNoSuchPropertyError(holder ? holder.name : 'Qubes', c.arg);
  return def;
}
function wireType(def: PropDef): string {
  return def.type;
}

/** `default=BOOL type=TYPE VALUE` (reference _serialize_property). */
export function serializeProperty(r: Registry, holder: Qube | null, def: PropDef): string {
  const v = holder ? holder.get(def.name) : r.getGlobal(def.name);
  if (v === NO_VALUE) return `default=True type=${wireType(def)} `;
  const isDefault = holder ? holder.isDefault(def.name) : !r.globals.has(def.name);
  return `default=${isDefault ? 'True' : 'False'} type=${wireType(def)} ${pyStr(v)}`;
}

function escapeGetAll(s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

const getAllCache = new WeakMap<object, { gen: number; text: string }>();
const qubeItem = (q: Qube): PermitItem => ({ kind: 'qube', qube: q });
const nameItem = (name: string): PermitItem => ({ kind: 'name', name });

// --- property methods (per qube and global) ---

for (const global of [false, true]) {
  const prefix = global ? 'admin.property' : 'admin.vm.property';
  const dest = global ? true : null;
  m(`${prefix}.List`, { dest, arg: false, payload: false, scope: global ? 'global' : 'local' }, (c) => {
    const h = holderOf(c, global);
    const names = propList(h ? h.klass : null).map((d) => d.name);
    return lines(c.filter(names, nameItem));
  });
  m(`${prefix}.Get`, { dest, arg: true, payload: false, scope: global ? 'global' : 'local' }, (c) => {
    const h = holderOf(c, global);
    const def = defOf(c, h);
    c.permit();
    return serializeProperty(c.registry, h, def);
  });
  m(`${prefix}.GetAll`, { dest, arg: false, payload: false, scope: global ? 'global' : 'local' }, (c) => {
    const h = holderOf(c, global);
    const filters = c.permit();
    // the whole answer depends only on the registry: cached until anything changes (unfiltered callers)
    const key: object = h ?? c.registry;
    const hit = getAllCache.get(key);
    if (filters.length === 0 && hit && hit.gen === c.registry.generation) return hit.text;
    let s = '';
    for (const def of propList(h ? h.klass : null)) {
      if (filters.length && !filters.every((f) => f(nameItem(def.name)))) continue;
      s += `${def.name} ${escapeGetAll(serializeProperty(c.registry, h, def))}\n`;
    }
    if (filters.length === 0) getAllCache.set(key, { gen: c.registry.generation, text: s });
    return s;
  });
  m(`${prefix}.GetDefault`, { dest, arg: true, payload: false, scope: global ? 'global' : 'local' }, (c) => {
    const h = holderOf(c, global);
    const def = defOf(c, h);
    c.permit();
    const v = c.registry.defaultOf(h, def);
    if (v === NO_VALUE) return null;
    return `type=${wireType(def)} ${pyStr(v)}`;
  });
  m(`${prefix}.Set`, { dest, arg: true, payload: null, scope: global ? 'global' : 'local', write: true }, (c) => {
    const h = holderOf(c, global);
    const def = defOf(c, h);
    const value = sanitize(def, c.payload);
    c.permit({ newvalue: value });
    c.registry.setProperty(h, def.name, value);
    return null;
  });
  m(`${prefix}.Reset`, { dest, arg: true, payload: false, scope: global ? 'global' : 'local', write: true }, (c) => {
    const h = holderOf(c, global);
    const def = defOf(c, h);
    c.permit();
    c.registry.resetProperty(h, def.name);
    return null;
  });
  m(`${prefix}.Help`, { dest, arg: true, payload: false, scope: global ? 'global' : 'local' }, (c) => {
    const h = holderOf(c, global);
    const def = defOf(c, h);
    c.permit();
    return def.doc;
  });
}

// --- listing ---

m('admin.vmclass.List', { dest: true, arg: false, payload: false, scope: 'global' }, (c) => {
  return lines(c.filter([...QUBE_CLASSES], nameItem));
});

m('admin.vm.List', { dest: null, arg: false, payload: false, scope: 'global' }, (c) => {
  const all = c.dest.klass === 'AdminVM' ? c.registry.list() : [c.dest];
  const shown = c.filter(all, qubeItem);
  let s = '';
  for (const q of shown) s += `${q.name} class=${q.klass} state=${q.power} uuid=${q.uuid}\n`;
  return s;
});

m('admin.vm.CurrentState', { dest: null, arg: false, payload: false, scope: 'local' }, (c) => {
  c.permit();
  const q = c.dest;
  const mem = q.power === 'Halted' ? 0 : Number(q.get('memory') === NO_VALUE ? 0 : q.get('memory')) * 1024;
  return `mem=${mem} mem_static_max=${q.power === 'Halted' ? 0 : mem} cputime=0 power_state=${q.power}`;
});

// --- tags ---

m('admin.vm.tag.List', { dest: null, arg: false, payload: false, scope: 'local' }, (c) => {
  return lines(c.filter([...c.dest.tags].sort(), nameItem));
});
m('admin.vm.tag.Get', { dest: null, arg: true, payload: false, scope: 'local' }, (c) => {
  validateTag(c.arg);
  c.permit();
  return c.dest.tags.has(c.arg) ? '1' : '0';
});
m('admin.vm.tag.Set', { dest: null, arg: true, payload: false, scope: 'local', write: true }, (c) => {
  validateTag(c.arg);
  c.permit();
  c.registry.addTag(c.dest, c.arg);
  return null;
});
m('admin.vm.tag.Remove', { dest: null, arg: true, payload: false, scope: 'local', write: true }, (c) => {
  validateTag(c.arg);
  c.permit();
  c.registry.removeTag(c.dest, c.arg);
  return null;
});

// --- features ---

m('admin.vm.feature.List', { dest: null, arg: false, payload: false, scope: 'local' }, (c) => {
  return lines(c.filter([...c.dest.features.keys()], nameItem));
});
const featureCheck = (name: string, attr: 'template' | 'netvm' | null, adminvm: boolean): void =>
  m(name, { dest: null, arg: true, payload: false, scope: 'local' }, (c) => {
    c.permit();
    const v = c.registry.checkFeature(c.dest, c.arg, attr, adminvm);
    if (v === undefined) throw new QubesFeatureNotFoundError(c.dest.name, c.arg);
    return v;
  });
featureCheck('admin.vm.feature.Get', null, false);
featureCheck('admin.vm.feature.CheckWithTemplate', 'template', false);
featureCheck('admin.vm.feature.CheckWithNetvm', 'netvm', false);
featureCheck('admin.vm.feature.CheckWithAdminVM', null, true);
featureCheck('admin.vm.feature.CheckWithTemplateAndAdminVM', 'template', true);
m('admin.vm.feature.Remove', { dest: null, arg: true, payload: false, scope: 'local', write: true }, (c) => {
  c.permit();
  c.registry.removeFeature(c.dest, c.arg);
  return null;
});
m('admin.vm.feature.Set', { dest: null, arg: true, payload: null, scope: 'local', write: true }, (c) => {
  for (const b of c.payload) if (b > 0x7f) throw new ProtocolError('Feature value contains non-ASCII characters');
  validateFeatureName(c.arg);
  const value = c.payload.toString('latin1');
  if (!/^[\x20-\x7e]*$/.test(value)) throw new ProtocolError(`${c.arg} value contains illegal characters`);
  c.permit({ value });
  c.registry.setFeature(c.dest, c.arg, value);
  return null;
});

// --- labels ---

m('admin.label.List', { dest: true, arg: false, payload: false, scope: 'global' }, (c) => {
  return lines(c.filter([...c.registry.labels.values()].map((l) => l.name), nameItem));
});
m('admin.label.Get', { dest: true, arg: true, payload: false, scope: 'global' }, (c) => {
  validateLabelName(c.arg);
  const l = c.registry.label(c.arg);
  c.permit({ label: l.name });
  return l.color;
});
m('admin.label.Index', { dest: true, arg: true, payload: false, scope: 'global' }, (c) => {
  validateLabelName(c.arg);
  const l = c.registry.label(c.arg);
  c.permit({ label: l.name });
  return String(l.index);
});
m('admin.label.Create', { dest: true, arg: true, payload: true, scope: 'global', write: true }, (c) => {
  validateLabelName(c.arg, true);
  const color = validateLabelColor(c.payload);
  c.permit({ color });
  c.registry.addLabel(c.arg, color);
  return null;
});
m('admin.label.Remove', { dest: true, arg: true, payload: false, scope: 'global', write: true }, (c) => {
  validateLabelName(c.arg);
  const l = c.registry.label(c.arg);
  c.permit({ label: l.name });
  c.registry.removeLabel(l);
  return null;
});

// --- create, remove ---

for (const klass of QUBE_CLASSES) {
  m(`admin.vm.Create.${klass}`, { dest: true, arg: null, payload: null, scope: 'global', write: true }, (c) => create(c, klass));
}

function create(c: Call, klass: QubeClass): Result {
  if (klass === 'AdminVM') throw new ProtocolError('AdminVM cannot be created');
  let template: string | undefined;
  let invalidTemplate = false;
  if (c.arg) {
    if (klass !== 'AppVM' && klass !== 'DispVM') throw new ProtocolError(`${klass} cannot be based on template`);
    if (c.registry.byName(c.arg)) template = c.arg;
    else invalidTemplate = true;
  }
  for (const b of c.payload) if (b > 0x7f) throw new ProtocolError('Parameters contains non-ASCII characters');
  const params = new Map<string, string>();
  let invalidLabel = false;
  for (const p of c.payload.toString('latin1').split(' ')) {
    const eq = p.indexOf('=');
    // the reference's unpacking of split("=", 1) raises ValueError: no reply
    if (eq < 0) throw new FramingAbort();
    const key = p.slice(0, eq);
    const value = p.slice(eq + 1);
    if (params.has(key)) throw new ProtocolError('Options must be unique');
    if (key === 'name') validateName(value);
    else if (key === 'label') {
      validateLabelName(value, true);
      try {
        c.registry.label(value);
      } catch (e) {
        if (!(e instanceof QubesLabelNotFoundError)) throw e;
        invalidLabel = true;
      }
    } else if (key === 'pool' || key.startsWith('pool:')) throw new ProtocolError("Pool option specified but 'allow_pool' is False");
    else throw new ProtocolError('Options does not match: name, label, pool, pool:');
    params.set(key, value);
  }
  for (const k of ['name', 'label']) if (!params.has(k)) throw new ProtocolError(`Creation requested without key: ${k}`);
  const name = params.get('name') as string;
  const exists = c.registry.byName(name) !== undefined;
  c.permit({ name, label: params.get('label'), template });
  if (exists) throw new QubesVMAlreadyExistsError(`Qube already exists: ${name}`);
  if (invalidTemplate) throw new QubesVMNotFoundError(c.arg);
  if (invalidLabel) throw new QubesLabelNotFoundError('untrusted label');
  c.registry.createQube(klass, name, params.get('label') as string, { ...(template !== undefined ? { template } : {}), creator: c.src.name });
  return null;
}

m('admin.vm.CreateDisposable', { dest: null, arg: null, payload: null, scope: 'global', write: true }, (c) => {
  if (c.arg !== '' && c.arg !== 'preload') throw new PermissionDenied("Argument not in \"'', 'preload'\"");
  const pl = c.payload.toString('latin1');
  if (pl !== '' && pl !== 'uuid') throw new ProtocolError("Invalid payload, expected empty string or 'uuid'");
  let appvm: Qube | undefined = c.dest;
  if (c.dest.klass === 'AdminVM') {
    const d = c.src.get('default_dispvm');
    appvm = typeof d === 'string' ? c.registry.byName(d) : undefined;
  }
  c.permit({ dispvm_template: appvm?.name ?? null });
  if (!appvm) throw new QubesError('QubesException', 'No default disposable template set for the calling qube');
  if (c.arg === 'preload') {
    c.ctx.power.preloadDisposables?.(appvm);
    return null;
  }
  const disp = c.ctx.power.createDisposable(appvm, c.src);
  c.registry.addTag(disp, `disp-created-by-${c.src.name}`);
  return pl === 'uuid' ? `uuid:${disp.uuid}` : disp.name;
});

m('admin.vm.Remove', { dest: null, arg: false, payload: false, scope: 'global', write: true }, (c) => {
  c.permit();
  c.registry.removeQube(c.dest);
  return null;
});

// --- power ---

m('admin.vm.Start', { dest: null, arg: false, payload: false, scope: 'local', execute: true }, async (c) => {
  c.permit();
  await c.ctx.power.start(c.dest);
  return null;
});
m('admin.vm.Shutdown', { dest: null, arg: null, payload: false, scope: 'local', execute: true }, async (c) => {
  const args = c.arg ? c.arg.split('+') : [];
  if (!args.every((a) => a === 'force' || a === 'wait')) throw new ProtocolError('Argument must match: force, wait');
  const force = args.includes('force');
  const wait = args.includes('wait');
  c.permit({ force, wait });
  await c.ctx.power.shutdown(c.dest, force, wait);
  return null;
});
for (const [name, op] of [
  ['Pause', 'pause'],
  ['Unpause', 'unpause'],
  ['Kill', 'kill'],
] as const) {
  m(`admin.vm.${name}`, { dest: null, arg: false, payload: false, scope: 'local', execute: true }, async (c) => {
    c.permit();
    await c.ctx.power[op](c.dest);
    return null;
  });
}

// --- volumes (what qvm-ls needs: no storage pools behind them yet) ---

const VOLUMES: Readonly<Record<QubeClass, readonly string[]>> = {
  AdminVM: [],
  RemoteVM: [],
  AppVM: ['root', 'private', 'volatile', 'kernel'],
  DispVM: ['root', 'private', 'volatile', 'kernel'],
  StandaloneVM: ['root', 'private', 'volatile', 'kernel'],
  TemplateVM: ['root', 'private', 'volatile', 'kernel'],
};
const GiB = 1024 * 1024 * 1024;

m('admin.vm.volume.List', { dest: null, arg: false, payload: false, scope: 'local' }, (c) => {
  return lines(c.filter([...VOLUMES[c.dest.klass]], nameItem));
});
m('admin.vm.volume.Info', { dest: null, arg: true, payload: false, scope: 'local' }, (c) => {
  if (!VOLUMES[c.dest.klass].includes(c.arg)) throw new PermissionDenied(`Argument not in '${c.dest.name} volumes'`);
  c.permit();
  return volumeInfo(c.registry, c.dest, c.arg, c.ctx.volumes?.usage(c.dest, c.arg) ?? 0);
});

/** size: the configured size (as a file pool's); usage: the bytes allocated on disk (see volume-usage.ts). */
function volumeInfo(r: Registry, q: Qube, vol: string, usage: number): string {
  const pool = (name: string): string => pyStr(r.getGlobal(name) === NO_VALUE ? null : (r.getGlobal(name) as string));
  const tpl = q.get('template');
  const fromTemplate = typeof tpl === 'string' && (vol === 'root' || (q.klass === 'DispVM' && vol === 'private'));
  const conf: Record<string, { pool: string; size: number; rw: boolean; save: boolean; snap: boolean }> = {
    root: { pool: pool('default_pool_root'), size: 20 * GiB, rw: true, save: !fromTemplate, snap: fromTemplate },
    private: { pool: pool('default_pool_private'), size: 2 * GiB, rw: true, save: q.klass !== 'DispVM', snap: q.klass === 'DispVM' },
    volatile: { pool: pool('default_pool_volatile'), size: 10 * GiB, rw: true, save: false, snap: false },
    kernel: { pool: pool('default_pool_kernel'), size: 0, rw: false, save: false, snap: false },
  };
  const v = conf[vol] as (typeof conf)[string];
  const vid = vol === 'kernel' ? pyStr(q.get('kernel') === NO_VALUE ? null : (q.get('kernel') as string)) : `qubes_dom0/vm-${q.name}-${vol}`;
  const source = fromTemplate ? `qubes_dom0/vm-${tpl}-${q.klass === 'DispVM' && vol === 'private' ? 'private' : 'root'}` : '';
  return (
    `pool=${v.pool}\nvid=${vid}\nsize=${v.size}\nusage=${usage}\nrw=${v.rw ? 'True' : 'False'}\nsource=${source}\npath=\n` +
    `save_on_stop=${v.save ? 'True' : 'False'}\nsnap_on_start=${v.snap ? 'True' : 'False'}\nrevisions_to_keep=0\nephemeral=False\n`
  );
}

// --- events ---

/** Events never sent to clients (QubesMgmtEventsDispatcher). */
function internalEvent(event: string): boolean {
  return (
    event.startsWith('admin-permission:') ||
    event.startsWith('device-get:') ||
    event.startsWith('device-list:') ||
    event.startsWith('device-list-attached:') ||
    event === 'domain-is-fully-usable'
  );
}

m('admin.Events', { dest: null, arg: false, payload: false, scope: 'global' }, async (c) => {
  const filters = c.permit();
  const only = c.dest.klass === 'AdminVM' ? null : c.dest;
  const off = c.registry.on((subject, event, kwargs) => {
    if (only !== null && subject !== only) return;
    if (internalEvent(event)) return;
    if (filters.length && !filters.every((f) => f({ kind: 'event', subject, event, kwargs }))) return;
    c.sendEvent(subject ? subject.name : '', event, kwargs);
  });
  c.sendEvent('', 'connection-established', []);
  try {
    await c.closed;
  } finally {
    off();
  }
  return null;
});

/** A request the reference drops without reply (a Python exception that is not a QubesException). */
export class FramingAbort extends Error {
  override name = 'FramingAbort';
}

/** Outcome of one call: data, or an error to send (then close or abort), or abort with nothing. */
export type CallOutcome = { ok: string | null } | { error: QubesError } | { abort: true };

/**
 * Serve one parsed request: decode src and dest, find the method, check
 * argument, payload and destination, run the handler (writes in one
 * transaction).
 */
export async function dispatch(
  ctx: ApiContext,
  table: MethodTable,
  req: { method: string; arg: string; src: Buffer; dest: Buffer; payload: Buffer },
  sendEvent: Call['sendEvent'],
  closed: Promise<void>,
): Promise<CallOutcome> {
  try {
    const src = ctx.registry.find(parseQubeRef(req.src));
    const dest = ctx.registry.find(parseQubeRef(req.dest));
    const spec = table.get(req.method);
    if (!spec) throw new ProtocolError(`no such method: '${req.method}'`);
    if (spec.wantsPayload === true && req.payload.length === 0) throw new ProtocolError('expected payload');
    if (spec.wantsPayload === false && req.payload.length > 0) throw new ProtocolError('unexpected payload');
    if (spec.wantsArg === true && req.arg === '') throw new ProtocolError('expected an argument');
    if (spec.wantsArg === false && req.arg !== '') throw new ProtocolError('unexpected argument');
    if (spec.destAdminVM === true && dest.klass !== 'AdminVM') throw new ProtocolError('expected destination to be AdminVM');
    if (spec.destAdminVM === false && dest.klass === 'AdminVM') throw new ProtocolError('expected destination to not be AdminVM');
    const call = new Call(ctx, req.method, req.arg, src, dest, req.payload, sendEvent, closed);
    const result = spec.write ? ctx.registry.write(() => spec.handler(call)) : spec.handler(call);
    const ok = await result;
    // the reply only once the change (and any change this answer has seen) is committed
    await ctx.registry.durable();
    return { ok };
  } catch (e) {
    if (e instanceof QubesError) return { error: e };
    return { abort: true };
  }
}

export { isQubeClass };
