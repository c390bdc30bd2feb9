/**
 * The smaller qvm-* tools, with the reference's options, output and exit
 * codes (qubesadmin/tools/qvm_tags.py, qvm_features.py, qvm_check.py,
 * qvm_start.py, qvm_shutdown.py, qvm_kill.py, qvm_pause.py,
 * qvm_unpause.py, qvm_create.py, qvm_remove.py, qvm_clone.py).
 */
import { UsageError } from '../common/args.js';
import { AdminError } from '../qubesd-client/client.js';
import { parsePropReply, type Qube, type QubesApp } from './app.js';
import { ALL_OPTS, COMMON_OPTS, flag, list, value, type Parsed } from './argparse.js';
import { domainsFrom, formatTable, isRunning, needDomains, ToolError, type ToolIO, type ToolSpec } from './common.js';

const one = async (app: QubesApp, p: Parsed, name: string | undefined): Promise<Qube> => {
  if (name === undefined) throw new UsageError('the following arguments are required: VMNAME');
  return (await domainsFrom(app, [name], p))[0] as Qube;
};

const std = (prog: string, usage: string, summary: string, options: string): { prog: string; usage: string; help: string } => ({
  prog,
  usage: `usage: ${usage}`,
  help: `usage: ${usage}\n\n${summary}\n\noptions:\n  -h, --help     show this help message and exit\n  --verbose, -v  increase verbosity\n  --quiet, -q    decrease verbosity\n${options}`,
});

// --- qvm-tags ---

export const QVM_TAGS: ToolSpec = {
  ...std('qvm-tags', 'qvm-tags [--verbose] [--quiet] [--help] VMNAME {list,ls,l,add,a,set,del,d,unset,u} ...', "manage domain's tags", ''),
  opts: COMMON_OPTS,
  async run(p, app, io) {
    const [vm, cmd = 'list', ...tags] = p.positional;
    const q = await one(app, p, vm);
    const mode = ['list', 'ls', 'l'].includes(cmd) ? 'list' : ['add', 'a', 'set'].includes(cmd) ? 'add' : ['del', 'd', 'unset', 'u'].includes(cmd) ? 'del' : null;
    if (mode === null) throw new UsageError(`argument command: invalid choice: '${cmd}' (choose from 'list', 'ls', 'l', 'add', 'a', 'set', 'del', 'd', 'unset', 'u')`);
    try {
      if (mode === 'list') {
        if (tags.length > 1) throw new UsageError(`unrecognized arguments: ${tags.slice(1).join(' ')}`);
        if (tags.length === 0) {
          const all = (await q.tags()).sort();
          if (all.length) io.out(`${all.join('\n')}\n`);
          return 0;
        }
        const t = tags[0] as string;
        if ((await app.call(q.name, 'admin.vm.tag.Get', t)) !== '1') return 1;
        io.out(`${t}\n`);
        return 0;
      }
      if (mode === 'add') {
        if (tags.length === 0) throw new UsageError('the following arguments are required: tag');
        for (const t of tags) await app.call(q.name, 'admin.vm.tag.Set', t);
        return 0;
      }
      if (tags.length !== 1) throw new UsageError(tags.length ? `unrecognized arguments: ${tags.slice(1).join(' ')}` : 'the following arguments are required: tag');
      const t = tags[0] as string;
      if ((await app.call(q.name, 'admin.vm.tag.Get', t)) === '1') await app.call(q.name, 'admin.vm.tag.Remove', t);
      return 0;
    } catch (e) {
      if (e instanceof AdminError) throw new ToolError(e.message);
      throw e;
    }
  },
};

// --- qvm-features ---

export const QVM_FEATURES: ToolSpec = {
  ...std(
    'qvm-features',
    'qvm-features [--verbose] [--quiet] [--help] [--unset] VMNAME [FEATURE] [VALUE]',
    'manage domain features',
    '  --unset, --default, --delete, -D\n                 unset the feature\n',
  ),
  opts: [...COMMON_OPTS, { long: ['unset', 'default', 'delete'], short: 'D', nargs: 0, dest: 'delete' }],
  async run(p, app, io) {
    const [vm, feature, val, ...extra] = p.positional;
    if (extra.length) throw new UsageError(`unrecognized arguments: ${extra.join(' ')}`);
    const q = await one(app, p, vm);
    const del = flag(p, 'delete');
    try {
      if (feature === undefined) {
        if (del) throw new UsageError('--unset requires a feature');
        const rows: string[][] = [];
        for (const f of await q.features()) rows.push([f, (await q.feature(f)) ?? '']);
        if (rows.length) io.out(formatTable(rows));
        return 0;
      }
      if (del) {
        if (val !== undefined) throw new UsageError('cannot both set and unset a value');
        try {
          await app.call(q.name, 'admin.vm.feature.Remove', feature);
        } catch (e) {
          if (!(e instanceof AdminError && e.excType === 'QubesFeatureNotFoundError')) throw e;
        }
        return 0;
      }
      if (val === undefined) {
        const v = await q.feature(feature);
        if (v === undefined) return 1;
        io.out(`${v}\n`);
        return 0;
      }
      await app.call(q.name, 'admin.vm.feature.Set', feature, val);
      return 0;
    } catch (e) {
      if (e instanceof AdminError) throw new ToolError(e.message);
      throw e;
    }
  },
};

// --- qvm-check ---

export const QVM_CHECK: ToolSpec = {
  ...std(
    'qvm-check',
    'qvm-check [--verbose] [--quiet] [--help] [--all] [--exclude EXCLUDE] [--running] [--paused] [--template] [--networked] [VMNAME ...]',
    'Exit status: 0 if every qube exists (and matches), 1 if none does, 3 if only some do.',
    '  --all          perform the action on all qubes\n  --exclude EXCLUDE\n                 exclude the qube from --all\n  --running      Determine if (any of given) VM is running\n  --paused       Determine if (any of given) VM is paused\n  --template     Determine if (any of given) VM is a template\n  --networked    Determine if (any of given) VM can reach network\n',
  ),
  opts: [...COMMON_OPTS, ...ALL_OPTS, { long: ['running'], nargs: 0 }, { long: ['paused'], nargs: 0 }, { long: ['template'], nargs: 0 }, { long: ['networked'], nargs: 0 }],
  async run(p, app, io) {
    needDomains(p);
    const qubes = await app.list();
    const exclude = list(p, 'exclude');
    let domains: Qube[];
    const invalid: string[] = [];
    if (flag(p, 'all_domains')) domains = qubes.filter((q) => q.klass !== 'AdminVM' && !exclude.includes(q.name));
    else {
      if (exclude.length) throw new UsageError('--exclude can only be used with --all');
      domains = [];
      for (const n of p.positional) {
        const q = qubes.find((x) => x.name === n);
        if (q) domains.push(q);
        else invalid.push(n);
      }
    }
    // the reference's verbosity starts at 1: messages unless -q
    const verbose = 1 + (p.flags.get('verbose') ?? 0) - (p.flags.get('quiet') ?? 0) > 0;
    const log = (m: string): void => io.err(`qvm-check: ${m}\n`);
    const filters: [string, (q: Qube) => Promise<boolean>][] = [];
    if (flag(p, 'running')) filters.push(['running', async (q) => isRunning(await q.powerState())]);
    if (flag(p, 'paused')) filters.push(['paused', async (q) => (await q.powerState()) === 'Paused']);
    if (flag(p, 'template')) filters.push(['template', async (q) => q.klass === 'TemplateVM']);
    if (flag(p, 'networked')) {
      filters.push([
        'networked',
        async (q) => (await q.value('provides_network')) === 'True' || ((await q.value('netvm')) ?? '') !== '',
      ]);
    }
    let code = 0;
    const report = (qs: Qube[], status: string[]): void => {
      if (!verbose) return;
      if (qs.length === 0) log(`None of qubes: ${status.join(', ')}`);
      else for (const q of [...qs].sort((a, b) => (a.name < b.name ? -1 : 1))) log(`${q.name}: ${status.join(', ')}`);
    };
    if (filters.length) {
      let kept = [...domains];
      for (const [, f] of filters) {
        const next: Qube[] = [];
        for (const q of kept) if (await f(q)) next.push(q);
        kept = next;
      }
      if (kept.length !== domains.length) code = kept.length === 0 ? 1 : 3;
      report(kept, filters.map(([s]) => s));
    } else if (domains.length === 0) code = 1;
    else report(domains, ['exists']);
    if (invalid.length) {
      if (verbose) for (const n of invalid) log(`${n}: non-existent!`);
      code = 1;
    }
    return code;
  },
};

// --- power tools ---

type Failure = [Qube, string];
const printFailures = (io: ToolIO, what: string, failed: Failure[]): void => {
  for (const [q, m] of failed) io.err(`Error: ${what}: ${q.name}: ${m}\n`);
};

async function eachDomain(qs: Qube[], f: (q: Qube) => Promise<void>, ignore: readonly string[] = []): Promise<Failure[]> {
  const failed: Failure[] = [];
  await Promise.all(
    qs.map(async (q) => {
      try {
        await f(q);
      } catch (e) {
        if (e instanceof AdminError && ignore.includes(e.excType)) return;
        if (e instanceof AdminError || e instanceof ToolError) failed.push([q, e.message]);
        else throw e;
      }
    }),
  );
  return failed;
}

export const QVM_START: ToolSpec = {
  ...std(
    'qvm-start',
    'qvm-start [--verbose] [--quiet] [--help] [--all] [--exclude EXCLUDE] [--skip-if-running] [VMNAME ...]',
    'start a domain',
    '  --all          perform the action on all qubes\n  --exclude EXCLUDE\n                 exclude the qube from --all\n  --skip-if-running\n                 Do not fail if the qube is already running\n',
  ),
  opts: [...COMMON_OPTS, ...ALL_OPTS, { long: ['skip-if-running'], nargs: 0 }, { long: ['drive'], nargs: 1 }, { long: ['hddisk'], nargs: 1 }, { long: ['cdrom'], nargs: 1 }],
  async run(p, app, io) {
    needDomains(p);
    if (value(p, 'drive') ?? value(p, 'hddisk') ?? value(p, 'cdrom')) throw new ToolError('attaching a drive at start is not supported here');
    const qs = await domainsFrom(app, p.positional, p, { allowAll: true });
    const failed = await eachDomain(qs, async (q) => {
      if (isRunning(await q.powerState())) {
        if (flag(p, 'skip_if_running')) return;
        throw new ToolError('Domain is already running');
      }
      await app.call(q.name, 'admin.vm.Start');
    });
    for (const [q, m] of failed) io.err(`Error: Starting qube failed: ${q.name}: ${m}\n`);
    return failed.length ? 1 : 0;
  },
};

export const QVM_SHUTDOWN: ToolSpec = {
  ...std(
    'qvm-shutdown',
    'qvm-shutdown [--verbose] [--quiet] [--help] [--all] [--exclude EXCLUDE] [--wait] [--timeout TIMEOUT] [--force] [--dry-run] [VMNAME ...]',
    'gracefully shut down a qube',
    '  --all          perform the action on all qubes\n  --exclude EXCLUDE\n                 exclude the qube from --all\n  --wait         wait for the VMs to shut down\n  --timeout TIMEOUT\n                 timeout after which domains are killed when using --wait (deprecated)\n  --force        force qube shutdown, regardless of whether there exist any connected domains\n  --dry-run      don\'t really shutdown or kill the domains; useful with --wait\n',
  ),
  opts: [...COMMON_OPTS, ...ALL_OPTS, { long: ['wait'], nargs: 0 }, { long: ['timeout'], nargs: 1 }, { long: ['force'], nargs: 0 }, { long: ['dry-run'], nargs: 0 }],
  async run(p, app, io) {
    needDomains(p);
    const qs = await domainsFrom(app, p.positional, p, { allowAll: true });
    if (flag(p, 'dry_run')) return 0;
    const wait = flag(p, 'wait') || value(p, 'timeout') !== undefined;
    const force = flag(p, 'force') || (flag(p, 'all_domains') && list(p, 'exclude').length === 0);
    const arg = [force ? 'force' : '', wait ? 'wait' : ''].filter((x) => x).join('+');
    const shutdown = async (q: Qube): Promise<void> => void (await app.call(q.name, 'admin.vm.Shutdown', arg));
    let failed = await eachDomain(qs, shutdown, ['QubesVMNotStartedError']);
    // in use by other running qubes: retry, as the reference does (others may have stopped meanwhile)
    for (let i = 0; i < qs.length && failed.some(([, m]) => m.startsWith('There are other VMs connected')); i++) {
      const used = failed.filter(([, m]) => m.startsWith('There are other VMs connected')).map(([q]) => q);
      io.err(`Error: Retrying shutdown of qubes that were in use: ${used.map((q) => q.name).join(', ')}\n`);
      const again = await eachDomain(used, shutdown, ['QubesVMNotStartedError']);
      if (again.length === used.length) break;
      failed = [...failed.filter(([q]) => !used.includes(q)), ...again];
    }
    const timedOut = failed.filter(([, m]) => m.startsWith('Domain shutdown timed out')).map(([q]) => q);
    if (timedOut.length) {
      io.err(`Error: Killing timed out qubes: ${timedOut.map((q) => q.name).join(', ')}\n`);
      const k = await eachDomain(timedOut, async (q) => void (await app.call(q.name, 'admin.vm.Kill')), ['QubesVMNotStartedError']);
      failed = [...failed.filter(([q]) => !timedOut.includes(q)), ...k];
    }
    printFailures(io, 'Failed to shut down', failed);
    return failed.length;
  },
};

const simplePower = (prog: string, method: string, what: string, summary: string, ignore: readonly string[], code: (n: number) => number): ToolSpec => ({
  ...std(prog, `${prog} [--verbose] [--quiet] [--help] [--all] [--exclude EXCLUDE] [VMNAME ...]`, summary, '  --all          perform the action on all qubes\n  --exclude EXCLUDE\n                 exclude the qube from --all\n'),
  opts: [...COMMON_OPTS, ...ALL_OPTS],
  async run(p, app, io) {
    needDomains(p);
    const qs = await domainsFrom(app, p.positional, p, { allowAll: true });
    const failed = await eachDomain(qs, async (q) => void (await app.call(q.name, method)), ignore);
    printFailures(io, what, failed);
    return code(failed.length);
  },
});

export const QVM_KILL = simplePower('qvm-kill', 'admin.vm.Kill', 'Failed to kill', 'kill the specified qube', ['QubesVMNotStartedError'], (n) => n);
export const QVM_PAUSE = simplePower('qvm-pause', 'admin.vm.Pause', 'Failed to pause', 'pause a domain', [], (n) => (n ? 1 : 0));
export const QVM_UNPAUSE = simplePower('qvm-unpause', 'admin.vm.Unpause', 'Failed to unpause/resume', 'unpause a domain', [], (n) => (n ? 1 : 0));

// --- qvm-create, qvm-remove, qvm-clone ---

function parseProps(p: Parsed): Map<string, string> {
  const props = new Map<string, string>();
  for (const kv of list(p, 'property')) {
    const eq = kv.indexOf('=');
    if (eq < 0) throw new UsageError(`argument --property/--prop: ${kv}: expected NAME=VALUE`);
    props.set(kv.slice(0, eq), kv.slice(eq + 1));
  }
  return props;
}

export const QVM_CREATE: ToolSpec = {
  ...std(
    'qvm-create',
    'qvm-create [--verbose] [--quiet] [--help] [--class CLASS] [--standalone] [--disp] [--property NAME=VALUE] [--template VALUE] [--label VALUE] [--help-classes] VMNAME',
    'create a new domain',
    '  --class CLASS, -C CLASS\n                 the class of the new domain (default: AppVM)\n  --standalone   shortcut for --class StandaloneVM\n  --disp         create a named disposable (shortcut for --class DispVM)\n  --property NAME=VALUE, --prop NAME=VALUE\n                 set domain\'s property, like "internal", "memory" or "vcpus"\n  --template VALUE, -t VALUE\n                 specify the TemplateVM to use\n  --label VALUE, -l VALUE\n                 specify the label to use for the new domain (e.g. red, yellow, green, ...)\n  --help-classes list available classes and exit\n',
  ),
  opts: [
    ...COMMON_OPTS,
    { long: ['class'], short: 'C', nargs: 1 },
    { long: ['standalone'], nargs: 0 },
    { long: ['disp'], nargs: 0 },
    { long: ['property', 'prop'], nargs: 'append' },
    { long: ['template'], short: 't', nargs: 1 },
    { long: ['label'], short: 'l', nargs: 1 },
    { long: ['help-classes'], nargs: 0 },
    { long: ['pool'], short: 'p', nargs: 'append' },
    { long: ['pool-name', 'pool_name'], short: 'P', nargs: 1 },
    { long: ['root-copy-from'], short: 'r', nargs: 1 },
    { long: ['root-move-from'], short: 'R', nargs: 1 },
  ],
  async run(p, app, io) {
    if (flag(p, 'help_classes')) {
      io.out(await app.call('dom0', 'admin.vmclass.List'));
      return 0;
    }
    const props = parseProps(p);
    const [name, ...extra] = p.positional;
    if (extra.length) throw new UsageError(`unrecognized arguments: ${extra.join(' ')}`);
    if (name !== undefined) props.set('name', name);
    const tpl = value(p, 'template');
    if (tpl !== undefined) props.set('template', tpl);
    const lab = value(p, 'label');
    if (lab !== undefined) props.set('label', lab);
    let cls = value(p, 'class') ?? 'AppVM';
    if (flag(p, 'disp')) {
      if (!props.has('label')) props.set('label', 'red');
      cls = 'DispVM';
    }
    if (flag(p, 'standalone')) cls = 'StandaloneVM';
    if (list(p, 'pool').length || value(p, 'pool_name') || value(p, 'root_copy_from') || value(p, 'root_move_from')) {
      throw new ToolError('storage pools and root volume import are not supported here');
    }
    if (!props.has('label')) throw new UsageError('--label option is mandatory');
    if (!props.has('name')) throw new UsageError('VMNAME is mandatory');
    const labels = (await app.call('dom0', 'admin.label.List')).split('\n').filter((x) => x);
    const label = props.get('label') as string;
    if (!labels.includes(label)) throw new UsageError(`no such label: '${label}'; available: ${labels.join(', ')}`);
    const classes = (await app.call('dom0', 'admin.vmclass.List')).split('\n').filter((x) => x);
    if (!classes.includes(cls)) throw new UsageError(`no such domain class: '${cls}'`);
    const newName = props.get('name') as string;
    const template = props.get('template');
    props.delete('name');
    props.delete('label');
    props.delete('template');
    try {
      if (cls === 'StandaloneVM' && template !== undefined) {
        await cloneQube(app, template, newName, cls, label);
      } else {
        await app.call('dom0', `admin.vm.Create.${cls}`, template ?? '', `name=${newName} label=${label}`);
        app.invalidate();
        if (!(await app.get(newName))) throw new ToolError(`KeyError: '${newName}'`);
      }
    } catch (e) {
      if (e instanceof AdminError || e instanceof ToolError) {
        io.err(`app: Error creating VM: ${e.message}\n`);
        return 1;
      }
      throw e;
    }
    let code = 0;
    for (const [k, v] of props) {
      try {
        await app.call(newName, 'admin.vm.property.Set', k, v);
      } catch (e) {
        if (!(e instanceof AdminError)) throw e;
        io.err(`app: Error setting property ${k} (but VM created): ${e.message}\n`);
        code = 2;
      }
    }
    return code;
  },
};

/** Properties a clone does not copy (reference clone_properties: clone=False, and what the create sets). */
const NOT_CLONED = new Set(['name', 'qid', 'uuid', 'label', 'template', 'dispid', 'xid', 'klass', 'icon', 'updateable', 'ip', 'ip6', 'mac', 'stubdom_xid', 'stubdom_uuid', 'start_time']);

/** app.clone_vm: create, copy set properties, tags (but created-by-), features. No volumes to copy here. */
async function cloneQube(app: QubesApp, srcName: string, newName: string, cls: string | undefined, label?: string): Promise<void> {
  const src = await app.get(srcName);
  if (!src) throw new ToolError(`No such domain: '${srcName}'`);
  const klass = cls ?? src.klass;
  const srcLabel = label ?? (await src.value('label')) ?? 'red';
  const tpl = src.klass === 'AppVM' || src.klass === 'DispVM' ? await src.value('template') : null;
  const tplArg = (klass === 'AppVM' || klass === 'DispVM') && tpl ? tpl : '';
  await app.call('dom0', `admin.vm.Create.${klass}`, tplArg, `name=${newName} label=${srcLabel}`);
  app.invalidate();
  try {
    for (const line of (await app.call(srcName, 'admin.vm.property.GetAll')).split('\n')) {
      if (!line) continue;
      const sp = line.indexOf(' ');
      const prop = line.slice(0, sp);
      const v = parsePropReply(line.slice(sp + 1).replace(/\\(\\|n)/g, (_x, c: string) => (c === 'n' ? '\n' : '\\')));
      if (v.isDefault || NOT_CLONED.has(prop)) continue;
      try {
        await app.call(newName, 'admin.vm.property.Set', prop, v.value);
      } catch (e) {
        if (!(e instanceof AdminError && e.excType === 'QubesNoSuchPropertyError')) throw e;
      }
    }
    for (const t of await src.tags()) if (!t.startsWith('created-by-')) await app.call(newName, 'admin.vm.tag.Set', t);
    for (const f of await src.features()) {
      const v = await src.feature(f);
      if (v !== undefined) await app.call(newName, 'admin.vm.feature.Set', f, v);
    }
  } catch (e) {
    // the reference removes a half-made clone
    await app.call(newName, 'admin.vm.Remove').catch(() => undefined);
    throw e;
  }
}

export const QVM_CLONE: ToolSpec = {
  ...std(
    'qvm-clone',
    'qvm-clone [--verbose] [--quiet] [--help] [--class CLASS] [--ignore-errors] VMNAME NEW_NAME',
    'clone an existing qube by copying its properties, tags and features',
    '  --class CLASS, -C CLASS\n                 specify the class of the new qube\n  --ignore-errors\n                 log errors encountered during setting metadata but continue clone operation\n',
  ),
  opts: [...COMMON_OPTS, { long: ['class'], short: 'C', nargs: 1 }, { long: ['ignore-errors'], nargs: 0 }, { long: ['pool'], short: 'P', nargs: 'append' }, { long: ['label'], nargs: 1 }],
  async run(p, app) {
    const [srcName, newName, ...extra] = p.positional;
    if (extra.length) throw new UsageError(`unrecognized arguments: ${extra.join(' ')}`);
    if (newName === undefined) throw new UsageError('the following arguments are required: NEW_NAME');
    await one(app, p, srcName);
    if (list(p, 'pool').length) throw new ToolError('storage pools are not supported here');
    try {
      await cloneQube(app, srcName as string, newName, value(p, 'class'), value(p, 'label'));
    } catch (e) {
      if (e instanceof AdminError) throw new ToolError(e.message);
      throw e;
    }
    return 0;
  },
};

/** Where a qube is used (qubesadmin.utils.vm_dependencies): [holder or null for global, property]. */
async function dependencies(app: QubesApp, q: Qube): Promise<[string | null, string][]> {
  const out: [string | null, string][] = [];
  for (const prop of ['default_template', 'default_netvm', 'default_dispvm', 'default_guivm', 'default_audiovm', 'updatevm', 'clockvm', 'management_dispvm']) {
    try {
      const v = parsePropReply(await app.call('dom0', 'admin.property.Get', prop));
      if (v.value === q.name && !v.isDefault) out.push([null, prop]);
    } catch (e) {
      if (!(e instanceof AdminError)) throw e;
    }
  }
  for (const other of await app.list()) {
    if (other === q) continue;
    for (const prop of ['template', 'netvm', 'guivm', 'audiovm', 'default_dispvm', 'management_dispvm']) {
      const v = await other.prop(prop);
      if (v && v.value === q.name && !v.isDefault) out.push([other.name, prop]);
    }
  }
  return out;
}

export const QVM_REMOVE: ToolSpec = {
  ...std(
    'qvm-remove',
    'qvm-remove [--verbose] [--quiet] [--help] [--all] [--exclude EXCLUDE] [--force] [--force-root] [VMNAME ...]',
    'remove a domain',
    '  --all          perform the action on all qubes\n  --exclude EXCLUDE\n                 exclude the qube from --all\n  --force, -f    do not prompt for confirmation\n',
  ),
  opts: [...COMMON_OPTS, ...ALL_OPTS, { long: ['force'], short: 'f', nargs: 0 }],
  async run(p, app, io) {
    needDomains(p);
    const qs = await domainsFrom(app, p.positional, p, { allowAll: true });
    if (!flag(p, 'force')) throw new ToolError('removing without confirmation needs --force (no prompt here)');
    for (const q of qs) {
      try {
        await app.call(q.name, 'admin.vm.Remove');
      } catch (e) {
        if (e instanceof AdminError && e.excType === 'QubesVMInUseError') {
          const deps = await dependencies(app, q);
          if (deps.length) {
            io.err(`VM ${q.name} cannot be removed. It is in use as:\n`);
            for (const [holder, prop] of deps) io.err(holder === null ? ` - global property ${prop}\n` : ` - ${prop} for ${holder}\n`);
          }
          throw new ToolError(e.message);
        }
        if (e instanceof AdminError) throw new ToolError(e.message);
        throw e;
      }
    }
    return 0;
  },
};
