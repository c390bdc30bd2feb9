/**
 * qvm-prefs and qubes-prefs (qubesadmin/tools/qvm_prefs.py,
 * qubes_prefs.py): list every property (`NAME  -|D  VALUE`, `NAME  U` when
 * it has no value), show one, set one (`none` means no qube for the qube
 * properties), or reset one with -D. qubes-prefs does the same with the
 * global properties (admin.property.*).
 */
import { UsageError } from '../common/args.js';
import { AdminError, AdminTransportError } from '../qubesd-client/client.js';
import { parsePropReply, type PropValue, type QubesApp } from './app.js';
import { COMMON_OPTS, flag, type Parsed } from './argparse.js';
import { domainsFrom, ToolError, type ToolIO, type ToolSpec } from './common.js';

/** What the tool works on: one qube's properties, or the global ones. */
interface Target {
  list(): Promise<string[]>;
  getAll(): Promise<Map<string, PropValue> | null>;
  get(prop: string): Promise<PropValue>;
  set(prop: string, value: string): Promise<void>;
  reset(prop: string): Promise<void>;
  help(prop: string): Promise<string>;
}

/**
 * A property call refused by qrexec (the policy) or naming a qube qubesd does
 * not know: the reference's QubesPropertyAccessError.
 */
async function accessed<T>(prop: string, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    if (e instanceof AdminTransportError || (e instanceof AdminError && e.excType === 'QubesVMNotFoundError')) {
      throw new ToolError(`Failed to access '${prop}' property`);
    }
    throw e;
  }
}

function target(app: QubesApp, vm: string | null): Target {
  const pre = vm === null ? 'admin.property' : 'admin.vm.property';
  const dest = vm ?? 'dom0';
  return {
    list: async () => (await app.call(dest, `${pre}.List`)).split('\n').filter((x) => x),
    getAll: async () => {
      try {
        const m = new Map<string, PropValue>();
        for (const line of (await app.call(dest, `${pre}.GetAll`)).split('\n')) {
          if (!line) continue;
          const sp = line.indexOf(' ');
          m.set(line.slice(0, sp), parsePropReply(line.slice(sp + 1).replace(/\\(\\|n)/g, (_x, c: string) => (c === 'n' ? '\n' : '\\'))));
        }
        return m;
      } catch (e) {
        // refused (by qubesd, or by the policy for a qube): one Get per property
        if (e instanceof AdminError || e instanceof AdminTransportError) return null;
        throw e;
      }
    },
    get: (prop) => accessed(prop, async () => parsePropReply(await app.call(dest, `${pre}.Get`, prop))),
    set: (prop, v) => accessed(prop, async () => void (await app.call(dest, `${pre}.Set`, prop, v))),
    reset: (prop) => accessed(prop, async () => void (await app.call(dest, `${pre}.Reset`, prop))),
    help: (prop) => app.call(dest, `${pre}.Help`, prop),
  };
}

/** Python's str() of the value the client builds: None for an empty vm/label, no value (U) for an empty int/bool. */
function shown(v: PropValue): string | null | undefined {
  if (v.value === '') {
    if (v.type === 'vm' || v.type === 'label') return null;
    if (v.type === 'int' || v.type === 'bool') return undefined;
  }
  return v.value;
}

const NONE_PROPS = ['default_dispvm', 'netvm', 'template', 'guivm', 'audiovm'];

async function processActions(p: Parsed, t: Target, io: ToolIO, usageName: string): Promise<number> {
  const [prop0, val] = p.positional;
  const noSuch = (prop: string): never => {
    throw new UsageError(`no such property: '${prop}'`);
  };
  if (flag(p, 'help_properties')) {
    const props = (await t.list()).sort();
    const w = Math.max(...props.map((x) => x.length));
    for (const prop of props) io.out(`  ${prop.padEnd(w)}  ${(await t.help(prop)).replace(/\s+/g, ' ').trim()}\n`);
    return 0;
  }
  if (prop0 === undefined) {
    const props = (await t.list()).sort();
    const all = await t.getAll();
    const w = Math.max(...props.map((x) => x.length));
    for (const prop of props) {
      let v: PropValue | undefined;
      if (all) v = all.get(prop);
      else v = await t.get(prop);
      const s = v ? shown(v) : undefined;
      if (!v || s === undefined) {
        io.out(`${prop.padEnd(w)}  U\n`);
        continue;
      }
      if (!v.isDefault) io.out(`${prop.padEnd(w)}  -  ${s ?? 'None'}\n`);
      else if (!flag(p, 'hide_default')) io.out(`${prop.padEnd(w)}  D  ${s ?? 'None'}\n`);
    }
    return 0;
  }
  const prop = prop0.replace(/-/g, '_');
  const guard = async <T>(f: () => Promise<T>): Promise<T> => {
    try {
      return await f();
    } catch (e) {
      if (e instanceof AdminError && e.excType === 'QubesNoSuchPropertyError') return noSuch(prop);
      if (e instanceof AdminError) throw new ToolError(e.message);
      throw e;
    }
  };
  if (val !== undefined) {
    if (flag(p, 'delete')) throw new UsageError('cannot both set and reset a value');
    const v = val.toLowerCase() === 'none' && NONE_PROPS.includes(prop) ? '' : val;
    await guard(() => t.set(prop, v));
    return 0;
  }
  if (flag(p, 'delete')) {
    await guard(() => t.reset(prop));
    return 0;
  }
  const v = await guard(() => t.get(prop));
  if (flag(p, 'hide_default') && v.isDefault) return 0;
  const s = shown(v);
  if (s === undefined) throw new ToolError(`'${usageName}' object has no attribute '${prop}'`);
  if (s !== null) io.out(`${s}\n`);
  return 0;
}

const PREFS_OPTS = [
  ...COMMON_OPTS,
  { long: ['help-properties'], nargs: 0 as const },
  { long: ['hide-default'], nargs: 0 as const },
  { long: ['get'], short: 'g', nargs: 0 as const },
  { long: ['set'], short: 's', nargs: 0 as const },
  { long: ['default'], short: 'D', nargs: 0 as const, dest: 'delete' },
];

export const QVM_PREFS: ToolSpec = {
  prog: 'qvm-prefs',
  usage:
    'usage: qvm-prefs [--verbose] [--quiet] [--help] [--help-properties] [--hide-default] [--get] [--set] [--default] VMNAME [PROPERTY] [VALUE]',
  help: `usage: qvm-prefs [options] VMNAME [PROPERTY] [VALUE]

Show, set (VALUE) or reset (-D) a qube's properties; without PROPERTY, list
them all: NAME, "-" (set) or "D" (default) or "U" (no value), VALUE.

options:
  -h, --help         show this help message and exit
  --verbose, -v      increase verbosity
  --quiet, -q        decrease verbosity
  --help-properties  list all available properties with short descriptions and exit
  --hide-default     Do not show properties that are set to the default value.
  --get, -g          Ignored; for compatibility with older scripts.
  --set, -s          Ignored; for compatibility with older scripts.
  --default, -D      reset property to its default value
`,
  opts: PREFS_OPTS,
  async run(p, app, io) {
    const [vm, ...rest] = p.positional;
    if (vm === undefined) throw new UsageError('the following arguments are required: VMNAME');
    if (rest.length > 2) throw new UsageError(`unrecognized arguments: ${rest.slice(2).join(' ')}`);
    const [q] = await domainsFrom(app, [vm], p);
    return processActions({ ...p, positional: rest }, target(app, (q as { name: string }).name), io, 'QubesVM');
  },
};

export const QUBES_PREFS: ToolSpec = {
  prog: 'qubes-prefs',
  usage: 'usage: qubes-prefs [--verbose] [--quiet] [--help] [--help-properties] [--hide-default] [--get] [--set] [--default] [PROPERTY] [VALUE]',
  help: `usage: qubes-prefs [options] [PROPERTY] [VALUE]

Show, set (VALUE) or reset (-D) the global properties; without PROPERTY,
list them all.

options:
  -h, --help         show this help message and exit
  --verbose, -v      increase verbosity
  --quiet, -q        decrease verbosity
  --help-properties  list all available properties with short descriptions and exit
  --hide-default     Do not show properties that are set to the default value.
  --default, -D      reset property to its default value
`,
  opts: PREFS_OPTS,
  async run(p, app, io) {
    if (p.positional.length > 2) throw new UsageError(`unrecognized arguments: ${p.positional.slice(2).join(' ')}`);
    return processActions(p, target(app, null), io, 'QubesBase');
  },
};
