/**
 * The properties of each qube class and the global ones, as Qubes defines
 * them (qubes-core-admin qubes/vm/*.py, qubes/vm/mix/*.py, qubes/app.py):
 * name, wire type, load stage (GetAll's order is (load_stage, order, name)),
 * default, and the checks each setter makes. Written from the reference's
 * behaviour; the data, not the code, is shared.
 *
 * A value is a string (str, label name, vm name), a number (int), a boolean,
 * or null (Python's None). A property with no value and no default reads as
 * "absent" ({@link NO_VALUE}): the reference's AttributeError.
 */
import { QubesPropertyValueError, QubesValueError, pyRepr } from './errors.js';
import type { QubeClass } from './names.js';
import { isPrintable, validateName } from './names.js';

export type Value = string | number | boolean | null;
/** The wire type of admin.vm.property.Get (`type=`). */
export type PropType = 'str' | 'int' | 'bool' | 'vm' | 'label';

/** A property has no value and no default (the reference raises AttributeError). */
export const NO_VALUE: unique symbol = Symbol('no value');
export type Read = Value | typeof NO_VALUE;

/** What defaults and checks may ask of the holder (a qube, or the app for globals). */
export interface HolderView {
  /** `null` for the global properties. */
  readonly klass: QubeClass | null;
  readonly name: string;
  /** The property's current value (set or default). */
  get(prop: string): Read;
  has(prop: string): boolean;
  /** Another qube by name, or null. */
  qube(name: string): HolderView | null;
  /** The global property. */
  global(prop: string): Read;
  feature(name: string): string | undefined;
  /** check_with_template / check_with_netvm. */
  featureVia(attr: 'template' | 'netvm', name: string): string | undefined;
  /** Qubes whose `prop` is this holder (set or by default). */
  usersOf(prop: string): string[];
  powerState(): string;
  /** The domain id while running. */
  runningDomid(): number;
}

export interface PropDef {
  readonly name: string;
  readonly type: PropType;
  readonly loadStage: number;
  readonly doc: string;
  /** The default; absent: no default (AttributeError). */
  readonly dflt?: (h: HolderView) => Read;
  /** Computed, never stored, never set (reference stateless_property). */
  readonly stateless?: boolean;
  /** Set at creation only. */
  readonly writeOnce?: boolean;
  /** Setting always fails (reference property.forbidden). */
  readonly forbidden?: boolean;
  /** vm properties: the classes the target may have. */
  readonly vmClass?: readonly QubeClass[];
  readonly allowNone?: boolean;
  /** Setter's own checks and normalisation, after the type's; `prop` is this property's name. */
  readonly setter?: (h: HolderView, v: Value, prop: string) => Value;
}

const d = (v: Read) => (): Read => v;
const withTemplate =
  (prop: string, fallback: (h: HolderView) => Read) =>
  (h: HolderView): Read => {
    const t = h.has('template') ? h.get('template') : NO_VALUE;
    if (typeof t === 'string') {
      const tq = h.qube(t);
      if (tq && tq.has(prop)) {
        const v = tq.get(prop);
        if (v !== NO_VALUE) return v;
      }
    }
    return fallback(h);
  };
const glob = (prop: string) => (h: HolderView) => h.global(prop);

const positive = (_h: HolderView, v: Value, prop: string): Value => {
  if ((v as number) <= 0) throw new QubesPropertyValueError(`${prop} must be positive`);
  return v;
};
const nonNegative = (_h: HolderView, v: Value, prop: string): Value => {
  if ((v as number) < 0) throw new QubesPropertyValueError(`${prop} must be positive or zero`);
  return v;
};

function vmidToIpv4(prefix: string, vmid: number): string {
  if (vmid < 255) return `${prefix}.${(vmid >> 8) & 0xff}.${vmid & 0xff}`;
  const id = vmid - 1;
  return `${prefix}.${Math.floor(id / 254)}.${(id % 254) + 1}`;
}

function isNetworked(h: HolderView): boolean {
  if (h.get('provides_network') === true) return true;
  const n = h.get('netvm');
  return typeof n === 'string';
}

function ipFor(h: HolderView): string {
  if (h.klass === 'DispVM') {
    const id = h.get('dispid');
    return vmidToIpv4('10.138', typeof id === 'number' ? id : 0);
  }
  const qid = h.get('qid');
  return vmidToIpv4('10.137', typeof qid === 'number' ? qid : 0);
}

/** check_with_template(F, None) or null */
const viaTemplate = (h: HolderView, f: string): string | null => h.featureVia('template', f) ?? null;

function disposableTemplateCheck(h: HolderView, v: Value, prop: string): Value {
  if (v === null) return v;
  const q = h.qube(v as string);
  if (!q || q.get('template_for_dispvms') !== true) {
    const target = h.klass === null ? 'system' : `qube ${pyRepr(h.name)}`;
    throw new QubesPropertyValueError(
      `Cannot set invalid property to ${target}, ${prop} ${pyRepr(String(v))} has template_for_dispvms set to False`,
    );
  }
  return v;
}

function netvmCheck(h: HolderView, v: Value): Value {
  if (v === null) return v;
  const q = h.qube(v as string);
  if (!q || q.get('provides_network') !== true) throw new QubesValueError(`The ${String(v)} qube does not provide network`);
  // a loop: the new netvm is this qube or reaches it through its netvm chain
  let cur: string | null = v as string;
  const seen = new Set<string>();
  while (cur !== null && !seen.has(cur)) {
    if (cur === h.name) throw new QubesValueError('Loops in network are unsupported');
    seen.add(cur);
    const cq = h.qube(cur);
    const n: Read = cq ? cq.get('netvm') : null;
    cur = typeof n === 'string' ? n : null;
  }
  return v;
}

function providesNetworkCheck(h: HolderView, v: Value): Value {
  if (v === false && h.usersOf('netvm').length > 0) {
    throw new QubesValueError("The qube is still used by other qubes, change theirs 'netvm' first");
  }
  return v;
}

const kernelCheck = (_h: HolderView, v: Value): Value => {
  if (!v) return '';
  if (String(v).includes('/')) throw new QubesPropertyValueError("Kernel name cannot contain '/'");
  return v;
};
const kernelOptsCheck = (_h: HolderView, v: Value): Value => {
  if (!v) return '';
  if (String(v).length > 512) throw new QubesPropertyValueError('Kernelopts value too long (512 chars max)');
  return v;
};
const USER_CHARS = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+,.';
const defaultUserCheck = (_h: HolderView, v: Value): Value => {
  for (const c of String(v)) {
    if (!USER_CHARS.includes(c)) throw new QubesPropertyValueError(`Username can contain only those characters: ${USER_CHARS}`);
  }
  return v;
};
const virtModeCheck = (_h: HolderView, v: Value): Value => {
  const m = String(v).toLowerCase();
  if (m !== 'hvm' && m !== 'pv' && m !== 'pvh') throw new QubesPropertyValueError('Invalid virtualization mode, supported values: hvm, pv, pvh');
  return m;
};
const kbdCheck = (_h: HolderView, v: Value): Value => {
  const parts = String(v).split('+');
  if (parts.length !== 3) throw new QubesPropertyValueError('invalid number of keyboard layout parameters');
  if (!/^[a-zA-Z]+$/.test(parts[0] as string)) throw new QubesPropertyValueError('Invalid keyboard layout provided');
  if (!/^[a-zA-Z0-9_-]*$/.test(parts[1] as string)) throw new QubesPropertyValueError('Invalid keyboard layout variant provided');
  if (!/^[a-zA-Z0-9_:,-]*$/.test(parts[2] as string)) throw new QubesPropertyValueError('Invalid layout options provided');
  return v;
};
const deniedCheck = (_h: HolderView, v: Value): Value => {
  if (!v) return '';
  const s = String(v);
  if (!/^([bump*][0-9a-f*]{6})*$/.test(s)) throw new QubesPropertyValueError(`Invalid denied list: ${pyRepr(s)}`);
  const parts = new Set<string>();
  for (let i = 0; i < s.length; i += 7) parts.add(s.slice(i, i + 7));
  return [...parts].sort().join('');
};

function p(name: string, type: PropType, doc: string, more: Omit<Partial<PropDef>, 'name' | 'type' | 'doc'> = {}): PropDef {
  return { name, type, doc, loadStage: 2, ...more };
}
const stateless = (name: string, type: PropType, doc: string, f: (h: HolderView) => Read): PropDef =>
  p(name, type, doc, { stateless: true, forbidden: true, dflt: f });

// --- common to every qube (BaseVM) ---
const BASE: PropDef[] = [
  p('uuid', 'str', 'UUID from libvirt.', { writeOnce: true }),
  p('name', 'str', 'User-specified name of the domain.', { writeOnce: true }),
  p('qid', 'int', 'Internal, persistent identificator of particular domain. Note this is different from Xen domid.', { writeOnce: true }),
  p('label', 'label', 'Colourful label assigned to VM. This is where the colour of the padlock is set.'),
  stateless('klass', 'str', 'Domain class name', (h) => h.klass),
];

function icon(h: HolderView): Read {
  const label = h.get('label');
  const l = typeof label === 'string' ? label : '';
  if (h.klass === 'TemplateVM') return `templatevm-${l}`;
  if (h.klass === 'AppVM' && h.get('template_for_dispvms') === true) return `templatevm-${l}`;
  if (h.feature('servicevm')) return `servicevm-${l}`;
  if (h.klass === 'DispVM') return `dispvm-${l}`;
  if (h.klass === 'StandaloneVM') return `standalonevm-${l}`;
  if (h.klass === 'RemoteVM') return `remotevm-${l}`;
  return `appvm-${l}`;
}

const running = (h: HolderView) => h.powerState() !== 'Halted';

// --- QubesVM (every local qube but dom0) and NetVMMixin ---
const QUBESVM: PropDef[] = [
  ...BASE,
  stateless('icon', 'str', 'freedesktop icon name', icon),
  p('bootmode', 'str', 'Active boot mode for this domain', { loadStage: 4, dflt: d('default') }),
  p('guivm', 'vm', 'VM used for Gui', { loadStage: 4, allowNone: true, dflt: glob('default_guivm') }),
  p('audiovm', 'vm', 'VM used for Audio', { loadStage: 4, allowNone: true, dflt: glob('default_audiovm') }),
  p('virt_mode', 'str', 'Virtualisation mode: full virtualisation ("HVM"), or paravirtualisation ("PV"), or hybrid ("PVH"). TemplateBasedVMs use its template\'s value by default.', {
    dflt: withTemplate('virt_mode', d('pvh')),
    setter: virtModeCheck,
  }),
  p('installed_by_rpm', 'bool', "If this domain's image was installed from package tracked by package manager.", { dflt: d(false) }),
  p('memory', 'int', "Memory currently available for this VM. TemplateBasedVMs use its template's value by default.", {
    dflt: withTemplate('memory', d(400)),
    setter: positive,
  }),
  p('maxmem', 'int', "Maximum amount of memory available for this VM (for the purpose of the memory balancer). Set to 0 to disable memory balancing for this qube. TemplateBasedVMs use its template's value by default (unless memory balancing not supported for this qube).", {
    dflt: withTemplate('maxmem', d(4000)),
    setter: nonNegative,
  }),
  p('stubdom_mem', 'int', 'Memory amount allocated for the stubdom', { dflt: d(null), setter: positive }),
  p('vcpus', 'int', "Number of virtual CPUs for a qube. TemplateBasedVMs use its template's value by default.", {
    dflt: withTemplate('vcpus', d(2)),
    setter: positive,
  }),
  p('kernel', 'str', "Kernel used by this domain. TemplateBasedVMs use its template's value by default.", {
    dflt: withTemplate('kernel', glob('default_kernel')),
    setter: kernelCheck,
  }),
  p('kernelopts', 'str', "Kernel command line passed to domain. TemplateBasedVMs use its template's value by default.", {
    loadStage: 4,
    dflt: withTemplate('kernelopts', d('')),
    setter: kernelOptsCheck,
  }),
  p('debug', 'bool', 'Turns on debugging features.', { dflt: d(false) }),
  p('default_user', 'str', "Default user to start applications as. TemplateBasedVMs use its template's value by default.", {
    dflt: withTemplate('default_user', d('user')),
    setter: defaultUserCheck,
  }),
  p('qrexec_timeout', 'int', 'Time in seconds after which qrexec connection attempt is deemed failed. Operating system inside VM should be able to boot in this time.', {
    dflt: withTemplate('qrexec_timeout', glob('default_qrexec_timeout')),
    setter: positive,
  }),
  p('shutdown_timeout', 'int', 'Time in seconds for shutdown of the VM, after which VM may be forcefully powered off. Operating system inside VM should be able to fully shutdown in this time.', {
    dflt: withTemplate('shutdown_timeout', glob('default_shutdown_timeout')),
    setter: positive,
  }),
  p('autostart', 'bool', 'Setting this to `True` means that VM should be autostarted on dom0 boot.', { dflt: d(false) }),
  p('include_in_backups', 'bool', 'If this domain is to be included in default backup.', { dflt: d(true) }),
  p('backup_timestamp', 'int', 'Time of last backup of the qube, in seconds since unix epoch', { dflt: d(null) }),
  p('default_dispvm', 'vm', 'Default disposable template to be used for spawning disposable qubes for service calls.', {
    loadStage: 4,
    allowNone: true,
    dflt: glob('default_dispvm'),
    setter: disposableTemplateCheck,
  }),
  p('management_dispvm', 'vm', 'Default disposable template to be used for spawning disposable qubes for managing this qube.', {
    loadStage: 4,
    allowNone: true,
    dflt: withTemplate('management_dispvm', glob('management_dispvm')),
    setter: disposableTemplateCheck,
  }),
  p('updateable', 'bool', 'True if this machine may be updated on its own.', { forbidden: true, dflt: (h) => !h.has('template') }),
  p('devices_denied', 'str', 'List of device interface codes that are denied for this VM.', { dflt: d(''), setter: deniedCheck }),
  p('keyboard_layout', 'str', 'Keyboard layout for this VM', {
    dflt: (h) => {
      const g = h.get('guivm');
      const gq = typeof g === 'string' && g !== h.name ? h.qube(g) : null;
      const v = gq && gq.has('keyboard_layout') ? gq.get('keyboard_layout') : NO_VALUE;
      return typeof v === 'string' ? v : 'us++';
    },
    setter: kbdCheck,
  }),
  stateless('xid', 'int', 'Xen ID.', (h) => (running(h) ? h.runningDomid() : -1)),
  stateless('stubdom_xid', 'int', 'ID of the stub domain', () => -1),
  stateless('stubdom_uuid', 'str', 'UUID of the stub domain', () => ''),
  stateless('start_time', 'str', 'Tell when machine was started.', () => null),
  // NetVMMixin
  p('mac', 'str', 'MAC address of the NIC emulated inside VM', { dflt: d('00:16:3e:5e:6c:00') }),
  p('ip', 'str', 'IP address of this domain.', { dflt: (h) => (isNetworked(h) ? ipFor(h) : null) }),
  p('ip6', 'str', 'IPv6 address of this domain.', {
    dflt: (h) => {
      if (!isNetworked(h) || h.featureVia('netvm', 'ipv6') === undefined) return null;
      const qid = h.get('qid');
      return h.klass === 'DispVM' ? `fd09:24ef:4179::a8a:${Number(h.get('dispid')).toString(16)}` : `fd09:24ef:4179::a89:${Number(qid).toString(16)}`;
    },
  }),
  p('netvm', 'vm', 'VM that provides network connection to this domain. When `None`, machine is disconnected. When absent, domain uses default NetVM.', {
    loadStage: 4,
    allowNone: true,
    dflt: glob('default_netvm'),
    setter: netvmCheck,
  }),
  p('provides_network', 'bool', 'If this domain can act as network provider (formerly known as NetVM or ProxyVM)', {
    dflt: d(false),
    setter: providesNetworkCheck,
  }),
  stateless('visible_ip', 'str', 'IP address of this domain as seen by the domain.', (h) => viaTemplate(h, 'net.fake-ip') ?? h.get('ip')),
  stateless('visible_ip6', 'str', 'IPv6 address of this domain as seen by the domain.', (h) => h.get('ip6')),
  stateless('visible_gateway', 'str', 'Default gateway of this domain as seen by the domain.', (h) => {
    const f = viaTemplate(h, 'net.fake-gateway');
    if (f) return f;
    const n = h.get('netvm');
    const nq = typeof n === 'string' ? h.qube(n) : null;
    return nq ? nq.get('gateway') : null;
  }),
  stateless('visible_gateway6', 'str', 'Default (IPv6) gateway of this domain as seen by the domain.', (h) => {
    if (h.featureVia('netvm', 'ipv6') === undefined) return null;
    const n = h.get('netvm');
    const nq = typeof n === 'string' ? h.qube(n) : null;
    return nq ? nq.get('gateway6') : null;
  }),
  stateless('visible_netmask', 'str', 'Netmask as seen by the domain.', (h) => {
    const f = viaTemplate(h, 'net.fake-netmask');
    if (f) return f;
    const n = h.get('netvm');
    return typeof n === 'string' ? '255.255.255.255' : null;
  }),
  stateless('gateway', 'str', 'Gateway for other domains that use this domain as netvm.', (h) =>
    h.get('provides_network') === true ? h.get('visible_ip') : null,
  ),
  stateless('gateway6', 'str', 'Gateway (IPv6) for other domains that use this domain as netvm.', (h) =>
    h.featureVia('netvm', 'ipv6') !== undefined && h.get('provides_network') === true ? h.get('visible_ip6') : null,
  ),
  stateless('dns', 'str', 'DNS servers set up for this domain.', (h) => (isNetworked(h) ? '10.139.1.1 10.139.1.2' : null)),
];

const TEMPLATE_FOR_DISPVMS = p('template_for_dispvms', 'bool', 'Should this VM be allowed to start as Disposable VM', { dflt: d(false) });

function replace(list: PropDef[], ...with_: PropDef[]): PropDef[] {
  const names = new Set(with_.map((x) => x.name));
  return [...list.filter((x) => !names.has(x.name)), ...with_];
}

const APPVM = replace(
  QUBESVM,
  p('template', 'vm', 'Template, on which this AppVM is based.', { loadStage: 4, vmClass: ['TemplateVM'] }),
  TEMPLATE_FOR_DISPVMS,
);
const STANDALONEVM = replace(QUBESVM, TEMPLATE_FOR_DISPVMS);
const TEMPLATEVM = replace(
  QUBESVM,
  p('netvm', 'vm', 'VM that provides network connection to this domain. When `None`, machine is disconnected.', {
    loadStage: 4,
    allowNone: true,
    dflt: d(null),
    setter: netvmCheck,
  }),
  p('appvm_default_bootmode', 'str', 'Default boot mode for AppVMs based on this template', { loadStage: 4, dflt: d('default') }),
);
const DISPVM = replace(
  QUBESVM,
  p('template', 'vm', 'AppVM, on which this disposable is based.', { loadStage: 4, writeOnce: true, vmClass: ['AppVM'] }),
  p('dispid', 'int', 'Internal, persistent identifier of particular disposable.', { writeOnce: true }),
  p('auto_cleanup', 'bool', 'automatically remove this qube upon shutdown', { dflt: d(false) }),
  p('include_in_backups', 'bool', 'If this domain is to be included in default backup.', { dflt: (h) => h.get('auto_cleanup') !== true }),
  p('default_dispvm', 'vm', 'Default disposable template to be used for spawning disposable qubes for service calls.', {
    loadStage: 4,
    allowNone: true,
    dflt: (h) => h.get('template'),
    setter: disposableTemplateCheck,
  }),
);
const ADMINVM: PropDef[] = [
  p('name', 'str', 'The name of this VM', { forbidden: true, dflt: d('dom0') }),
  p('qid', 'int', 'QID of this VM', { forbidden: true, dflt: d(0) }),
  p('uuid', 'str', 'UUID of this VM', { forbidden: true, dflt: d('00000000-0000-0000-0000-000000000000') }),
  p('label', 'label', 'Colourful label assigned to VM. This is where the colour of the padlock is set.'),
  stateless('klass', 'str', 'Domain class name', () => 'AdminVM'),
  stateless('icon', 'str', 'freedesktop icon name', () => 'adminvm-black'),
  p('default_dispvm', 'vm', 'Default disposable template to be used for spawning disposable qubes for service calls.', {
    loadStage: 4,
    allowNone: true,
    dflt: glob('default_dispvm'),
    setter: disposableTemplateCheck,
  }),
  p('include_in_backups', 'bool', 'If this domain is to be included in default backup.', { dflt: d(true) }),
  p('updateable', 'bool', 'True if this machine may be updated on its own.', { forbidden: true, dflt: d(true) }),
  p('devices_denied', 'str', 'List of device interface codes that are denied for this VM.', { dflt: d(''), setter: deniedCheck }),
  p('keyboard_layout', 'str', 'Keyboard layout for this VM', { dflt: d('us++'), setter: kbdCheck }),
  p('maxmem', 'int', 'Memory available to dom0', { forbidden: true, dflt: d(0) }),
];
const REMOTEVM: PropDef[] = [
  ...BASE,
  stateless('icon', 'str', 'freedesktop icon name', icon),
  p('include_in_backups', 'bool', 'If this domain is to be included in default backup.', { dflt: d(false) }),
  p('relayvm', 'vm', 'Relay qube for the remote qube (the local qube that carries its calls)', { loadStage: 4, allowNone: true, dflt: d(null) }),
  p('transport_rpc', 'str', 'Qrexec service used to carry calls to the remote qube', { dflt: d(null) }),
  p('remote_name', 'str', 'Name of the qube on the remote host', { dflt: d(null) }),
];

/** The global properties (qubes/app.py Qubes). */
export const GLOBAL_PROPS: readonly PropDef[] = sortProps([
  p('default_guivm', 'vm', 'Default GuiVM for VMs.', { loadStage: 3, allowNone: true, dflt: d('dom0') }),
  p('default_audiovm', 'vm', 'Default AudioVM for VMs.', { loadStage: 3, allowNone: true, dflt: d('dom0') }),
  p('default_netvm', 'vm', 'Default NetVM for AppVMs. Initial state is `None`, which means that AppVMs are not connected to the Internet.', {
    loadStage: 3,
    allowNone: true,
    dflt: d(null),
    setter: (h, v) => (v === null ? v : netvmCheck(h, v)),
  }),
  p('default_template', 'vm', 'Default template for new AppVMs', { loadStage: 3, allowNone: true, vmClass: ['TemplateVM'] }),
  p('updatevm', 'vm', 'Which VM to use as `yum` proxy for updating AdminVM and TemplateVMs', { loadStage: 3, allowNone: true, dflt: d(null) }),
  p('clockvm', 'vm', 'Which VM to use as NTP proxy for updating AdminVM', { loadStage: 3, allowNone: true, dflt: d(null) }),
  p('default_kernel', 'str', 'Which kernel to use when not overriden in VM', { loadStage: 3, setter: kernelCheck }),
  p('default_dispvm', 'vm', 'Default disposable template to be used for spawning disposable qubes for service calls in this system.', {
    loadStage: 3,
    allowNone: true,
    dflt: d(null),
    setter: disposableTemplateCheck,
  }),
  p('management_dispvm', 'vm', 'Default disposable template to be used for spawning disposable qubes for managing a qube in this system.', {
    loadStage: 3,
    allowNone: true,
    dflt: d(null),
    setter: disposableTemplateCheck,
  }),
  p('default_pool', 'str', 'Default storage pool', { loadStage: 3, dflt: d('varlibqubes') }),
  p('default_pool_private', 'str', 'Default storage pool for private volumes', { loadStage: 3, dflt: glob('default_pool') }),
  p('default_pool_root', 'str', 'Default storage pool for root volumes', { loadStage: 3, dflt: glob('default_pool') }),
  p('default_pool_volatile', 'str', 'Default storage pool for volatile volumes', { loadStage: 3, dflt: glob('default_pool') }),
  p('default_pool_kernel', 'str', 'Default storage pool for kernel volumes', { loadStage: 3, dflt: d('linux-kernel') }),
  p('default_qrexec_timeout', 'int', 'Default time in seconds after which qrexec connection attempt is deemed failed', { loadStage: 3, dflt: d(60) }),
  p('default_shutdown_timeout', 'int', 'Default time in seconds for VM shutdown to complete', { loadStage: 3, dflt: d(60) }),
  p('stats_interval', 'int', 'Interval in seconds for VM stats reporting (memory, CPU usage)', { loadStage: 3, dflt: d(3) }),
  p('check_updates_vm', 'bool', 'Check for updates inside qubes', { loadStage: 3, dflt: d(true) }),
  p('maxmem', 'int', 'Maximum system memory.', { loadStage: 3, forbidden: true, dflt: d(0) }),
  p('no_cpus', 'int', 'Quantity of CPUs', { loadStage: 3, forbidden: true, dflt: d(0) }),
]);

function sortProps(list: PropDef[]): PropDef[] {
  return [...list].sort((a, b) => a.loadStage - b.loadStage || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Each class's properties, in GetAll's order. */
export const CLASS_PROPS: Readonly<Record<QubeClass, readonly PropDef[]>> = {
  AdminVM: sortProps(ADMINVM),
  AppVM: sortProps(APPVM),
  DispVM: sortProps(DISPVM),
  RemoteVM: sortProps(REMOTEVM),
  StandaloneVM: sortProps(STANDALONEVM),
  TemplateVM: sortProps(TEMPLATEVM),
};

const INDEX = new Map<QubeClass | null, Map<string, PropDef>>();
for (const [k, list] of Object.entries(CLASS_PROPS)) INDEX.set(k as QubeClass, new Map(list.map((x) => [x.name, x])));
INDEX.set(null, new Map(GLOBAL_PROPS.map((x) => [x.name, x])));

export function propDef(klass: QubeClass | null, name: string): PropDef | undefined {
  return INDEX.get(klass)?.get(name);
}
export function propList(klass: QubeClass | null): readonly PropDef[] {
  return klass === null ? GLOBAL_PROPS : CLASS_PROPS[klass];
}

/**
 * The reference's sanitize(): the untrusted bytes of a Set to a value of the
 * property's type (before the setter's own checks).
 * @throws QubesValueError / QubesPropertyValueError
 */
export function sanitize(def: PropDef, raw: Buffer): Value {
  for (const b of raw) {
    if (b > 0x7f) throw new QubesValueError(def.type === 'vm' ? '' : 'Non-ASCII bytes in property value');
  }
  const s = raw.toString('latin1');
  switch (def.type) {
    case 'vm':
      if (s === '') return null;
      validateName(s, def.name);
      return s;
    case 'bool':
      return parseBool(s);
    case 'int':
      return parsePyInt(s);
    case 'label':
    case 'str':
      if (!isPrintable(s)) throw new QubesValueError('Invalid characters in property value');
      return s;
  }
}

/** property.bool: case-insensitive 0/no/false/off, 1/yes/true/on. */
export function parseBool(s: string): boolean {
  const l = s.toLowerCase();
  if (l === '0' || l === 'no' || l === 'false' || l === 'off') return false;
  if (l === '1' || l === 'yes' || l === 'true' || l === 'on') return true;
  throw new QubesValueError(`Invalid literal for boolean property: ${pyRepr(s)}`);
}

/** Python's int(str): optional whitespace and sign, digits with single underscores. */
export function parsePyInt(s: string): number {
  const m = /^\s*([+-]?)(\d(?:_?\d)*)\s*$/.exec(s);
  const n = m ? Number(`${m[1]}${(m[2] as string).replace(/_/g, '')}`) : NaN;
  if (!Number.isSafeInteger(n)) throw new QubesValueError('Failed to parse property value as int');
  return n;
}

/** Python's str() of a value as the reference serialises it ("" for None in Get, "None" in events). */
export function pyStr(v: Value, none = ''): string {
  if (v === null) return none;
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  return String(v);
}
