/**
 * qvm-ls (qubesadmin/tools/qvm_ls.py): a table of qubes. One admin.vm.List,
 * then one admin.vm.property.GetAll per qube (or one Get per cell when
 * GetAll is refused), as the reference does with its cache enabled.
 * Formats simple, network, kernel, full, prefs, disk; --fields; --raw-data
 * (`|`-separated rows, no head), --raw-list (names only); the reference's
 * filters; --sort/--reverse/--ignore-case; --tree (network tree).
 *
 * Not shown: the reference's progress spinner on stderr.
 */
import { UsageError } from '../common/args.js';
import type { Qube } from './app.js';
import { ALL_OPTS, COMMON_OPTS, flag, list, value, type Parsed } from './argparse.js';
import { mapLimit } from '../common/map-limit.js';
import { domainsFrom, formatTable, isRunning, type ToolSpec } from './common.js';

export const FORMATS: Readonly<Record<string, readonly string[]>> = {
  simple: ['name', 'state', 'class', 'label', 'template', 'netvm'],
  network: ['name', 'state', 'netvm', 'ip', 'ipback', 'gateway'],
  kernel: ['name', 'state', 'class', 'template', 'kernel', 'kernelopts'],
  full: ['name', 'state', 'class', 'label', 'qid', 'xid', 'uuid'],
  prefs: ['name', 'label', 'template', 'netvm', 'vcpus', 'initialmem', 'maxmem', 'virt_mode'],
  disk: ['name', 'state', 'disk', 'priv-curr', 'priv-max', 'priv-used', 'root-curr', 'root-max', 'root-used'],
};

const SORT_NUMERIC = new Set(['MEMORY', 'DISK', 'PRIV-CURR', 'PRIV-MAX', 'ROOT-CURR', 'XID', 'ROOT-MAX', 'MAXMEM', 'QREXEC-TIMEOUT', 'SHUTDOWN-TIMEOUT', 'VCPUS', 'PRIV-USED', 'ROOT-USED']);
const MiB = 1024 * 1024;

type Cell = (q: Qube) => Promise<string | null>;

/** Volume sizes and usage for the disk columns, fetched once per qube. */
const volCache = new WeakMap<Qube, Promise<Map<string, Map<string, string>>>>();
const vols = (q: Qube): Promise<Map<string, Map<string, string>>> => {
  let v = volCache.get(q);
  if (!v) {
    v = q.volumes();
    volCache.set(q, v);
  }
  return v;
};
const volNum = async (q: Qube, vol: string, key: 'size' | 'usage'): Promise<number> => {
  const v = (await vols(q)).get(vol);
  return v ? Math.floor(Number(v.get(key) ?? 0) / MiB) : 0;
};

const BUILTIN: Readonly<Record<string, Cell>> = {
  // known from admin.vm.List, never asked (a qube may list what it may not read)
  NAME: async (q) => q.name,
  STATE: (q) => q.powerState(),
  CLASS: async (q) => q.klass,
  GATEWAY: async (q) => {
    const n = await q.value('netvm');
    if (!n) return null;
    const nq = await q.app.get(n);
    return nq ? nq.value('gateway') : null;
  },
  MEMORY: async (q) => {
    if (!isRunning(await q.powerState())) return null;
    const r = await q.app.call(q.name, 'admin.vm.CurrentState');
    const m = /(?:^| )mem=(\d+)/.exec(r);
    return m ? String(Math.floor(Number(m[1]) / 1024)) : null;
  },
  DISK: async (q) => {
    let sum = 0;
    for (const v of (await vols(q)).values()) sum += Number(v.get('usage') ?? 0);
    return String(Math.floor(sum / MiB));
  },
  'PRIV-CURR': async (q) => String(await volNum(q, 'private', 'usage')),
  'PRIV-MAX': async (q) => String(await volNum(q, 'private', 'size')),
  'PRIV-POOL': async (q) => (await vols(q)).get('private')?.get('pool') ?? '-',
  'PRIV-USED': async (q) => used(await volNum(q, 'private', 'size'), await volNum(q, 'private', 'usage')),
  'ROOT-CURR': async (q) => String(await volNum(q, 'root', 'usage')),
  'ROOT-MAX': async (q) => String(await volNum(q, 'root', 'size')),
  'ROOT-POOL': async (q) => (await vols(q)).get('root')?.get('pool') ?? '-',
  'ROOT-USED': async (q) => used(await volNum(q, 'root', 'size'), await volNum(q, 'root', 'usage')),
  FLAGS: flags,
};

function used(size: number, usage: number): string {
  return size === 0 ? '0' : `${Math.floor((usage * 100) / size)}%`;
}

async function flags(q: Qube): Promise<string> {
  const codes: Record<string, string> = { AdminVM: '0', TemplateVM: 't', AppVM: 'a', StandaloneVM: 's', DispVM: 'd' };
  let t = codes[q.klass] ?? '-';
  if (t !== '0' && t !== '-' && (await q.value('virt_mode')) === 'hvm') t = t.toUpperCase();
  const st = (await q.powerState()).toLowerCase();
  const p = ['running', 'transient', 'paused', 'suspended', 'halting', 'dying', 'crashed'].includes(st) ? (st[0] as string) : st === 'unknown' ? '?' : '-';
  const b = async (prop: string, letter: string): Promise<string> => ((await q.value(prop)) === 'True' ? letter : '-');
  const internal = await q.feature('internal');
  return (
    t +
    p +
    (await b('updateable', 'U')) +
    (await b('provides_network', 'N')) +
    (await b('installed_by_rpm', 'R')) +
    (internal ? 'i' : '-') +
    (await b('debug', 'D')) +
    (await b('autostart', 'A'))
  );
}

/** Calls to qubesd in flight at once while listing. */
const LS_CONCURRENCY = 8;

/** A column: its head and how a cell is computed (a property for anything not built in). */
function column(field: string): { head: string; cell: Cell } {
  const head = field.toUpperCase().replace(/_/g, '-');
  const b = BUILTIN[head];
  if (b) return { head, cell: b };
  const attr = field.toLowerCase();
  if (attr === 'tags') return { head, cell: async (q) => (await q.tags()).join(',') };
  if (attr === 'features') return { head, cell: async (q) => (await q.features()).join(',') };
  return { head: attr.replace(/_/g, '-').toUpperCase(), cell: (q) => q.value(attr) };
}

async function row(q: Qube, cols: { cell: Cell }[], indent = 0, nameCol = -1): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < cols.length; i++) {
    let v = (await (cols[i] as { cell: Cell }).cell(q)) || '-';
    if (i === nameCol && indent > 0) v = '  '.repeat(indent - 1) + '└─' + v;
    out.push(v);
  }
  return out;
}

async function matchesFilters(q: Qube, p: Parsed): Promise<boolean> {
  const classes = list(p, 'class');
  if (classes.length && !classes.includes(q.klass)) return false;
  const labels = list(p, 'label');
  if (labels.length && !labels.includes((await q.value('label')) ?? '')) return false;
  const tags = list(p, 'tags');
  const excl = list(p, 'exclude_tags');
  if (tags.length || excl.length) {
    const have = await q.tags();
    if (tags.length && !tags.some((t) => have.includes(t))) return false;
    if (excl.some((t) => have.includes(t))) return false;
  }
  const ts = list(p, 'template_source');
  if (ts.length && !ts.includes((await q.value('template')) ?? '')) return false;
  const nv = list(p, 'netvm_is');
  if (nv.length && !nv.includes((await q.value('netvm')) ?? '')) return false;
  const yes = ['1', 'true', 'True'];
  for (const [opt, feat] of [
    ['internal', 'internal'],
    ['servicevm', 'servicevm'],
  ] as const) {
    const v = value(p, opt);
    if (v === undefined) continue;
    const on = yes.includes((await q.feature(feat)) ?? '');
    if ((v === 'y' || v === 'yes') && !on) return false;
    if ((v === 'n' || v === 'no') && on) return false;
  }
  if (flag(p, 'pending_update') && !(await q.feature('updates-available'))) return false;
  for (const f of list(p, 'features')) {
    const eq = f.indexOf('=');
    if (eq <= 0) throw new UsageError(`Invalid argument: --features ${f}`);
    let want: string | undefined = f.slice(eq + 1);
    if (want === '') want = undefined;
    else if (want === "''" || want === '""') want = '';
    if ((await q.feature(f.slice(0, eq))) !== want) return false;
  }
  for (const f of list(p, 'prefs')) {
    const eq = f.indexOf('=');
    if (eq <= 0) throw new UsageError(`Invalid argument: --prefs ${f}`);
    let want = f.slice(eq + 1);
    if (want === '') want = 'None';
    else if (want === "''" || want === '""') want = '';
    const pv = await q.prop(f.slice(0, eq));
    const shown = pv === null || (pv.value === '' && pv.type !== 'str') ? 'None' : pv.value;
    if (shown !== want) return false;
  }
  const states = ['running', 'paused', 'halted'].filter((s) => flag(p, s));
  if (states.length && !states.includes((await q.powerState()).toLowerCase())) return false;
  return true;
}

async function treeOrder(domains: Qube[]): Promise<[number, Qube][]> {
  const out: [number, Qube][] = [];
  const left = new Set(domains);
  const netvm = async (q: Qube): Promise<string | null> => q.value('netvm');
  const provides = async (q: Qube): Promise<boolean> => (await q.value('provides_network')) === 'True';
  for (const q of domains) {
    if ((await netvm(q)) === null && !(await provides(q))) {
      out.push([0, q]);
      left.delete(q);
    }
  }
  const children = async (parent: Qube, level: number): Promise<void> => {
    for (const c of domains) {
      if (!left.has(c) || (await netvm(c)) !== parent.name) continue;
      left.delete(c);
      out.push([level, c]);
      if (await provides(c)) await children(c, level + 1);
    }
  };
  for (const q of domains) {
    if (left.has(q) && (await netvm(q)) === null && (await provides(q))) {
      left.delete(q);
      out.push([0, q]);
      await children(q, 1);
    }
  }
  return out;
}

export const QVM_LS: ToolSpec = {
  prog: 'qvm-ls',
  usage:
    'usage: qvm-ls [--verbose] [--quiet] [--help] [--all] [--exclude EXCLUDE] [--format FORMAT | --fields FIELD,... | --disk | --network | --kernel] [--tree] [--raw-data] [--raw-list] [--class CLASS [CLASS ...]] [--label LABEL [LABEL ...]] [--tags TAG [TAG ...]] [--exclude-tags TAG [TAG ...]] [--running] [--paused] [--halted] [--template-source TEMPLATE [TEMPLATE ...]] [--netvm-is NETVM [NETVM ...]] [--internal <y|n>] [--servicevm <y|n>] [--pending-update] [--features FEATURE=VALUE [FEATURE=VALUE ...]] [--prefs PREFERENCE=VALUE [PREFERENCE=VALUE ...]] [--sort COLUMN] [--reverse] [--ignore-case] [--spinner] [--no-spinner] [VMNAME ...]',
  get help(): string {
    return `${this.usage}

List Qubes domains and their parameters.

options (as the reference's qvm-ls):
  -h, --help            show this help message and exit
  --all                 list all qubes (also dom0); --exclude QUBE skips one
  --format FORMAT, -o FORMAT
                        simple (default), network, kernel, full, prefs, disk
  --fields FIELD,..., -O FIELD,...
                        columns to show (any qube property, or a column of --help-columns)
  --disk, -d / --network, -n / --kernel, -k
                        the disk, network or kernel format
  --tree, -t            sort as a network tree
  --raw-data            no head, cells separated by "|"
  --raw-list            only the names (--raw-data --fields name)
  --class CLASS ..., --label LABEL ..., --tags TAG ..., --exclude-tags TAG ...
  --running, --paused, --halted
  --template-source TEMPLATE ..., --netvm-is NETVM ...
  --internal <y|n>, --servicevm <y|n>, --pending-update
  --features FEATURE=VALUE ..., --prefs PREFERENCE=VALUE ...
  --sort COLUMN, --reverse, --ignore-case
  --help-formats, --help-columns

available formats:
${Object.entries(FORMATS).map(([k, v]) => `  ${k}: ${v.join(', ')}`).join('\n')}
`;
  },
  opts: [
    ...COMMON_OPTS,
    ...ALL_OPTS,
    { long: ['format'], short: 'o', nargs: 1 },
    { long: ['fields'], short: 'O', nargs: 1 },
    { long: ['tree'], short: 't', nargs: 0 },
    { long: ['raw-data'], nargs: 0 },
    { long: ['raw-list'], nargs: 0 },
    { long: ['disk'], short: 'd', nargs: 0 },
    { long: ['network'], short: 'n', nargs: 0 },
    { long: ['kernel'], short: 'k', nargs: 0 },
    { long: ['help-formats'], nargs: 0 },
    { long: ['help-columns'], nargs: 0 },
    { long: ['class'], nargs: '+' },
    { long: ['label'], nargs: '+' },
    { long: ['tags'], nargs: '+' },
    { long: ['exclude-tags'], nargs: '+' },
    { long: ['running'], nargs: 0 },
    { long: ['paused'], nargs: 0 },
    { long: ['halted'], nargs: 0 },
    { long: ['template-source'], nargs: '+' },
    { long: ['netvm-is'], nargs: '+' },
    { long: ['internal'], nargs: 1 },
    { long: ['servicevm'], nargs: 1 },
    { long: ['pending-update'], nargs: 0 },
    { long: ['features'], nargs: '+' },
    { long: ['prefs'], nargs: '+' },
    { long: ['sort'], nargs: 1 },
    { long: ['reverse'], nargs: 0 },
    { long: ['ignore-case'], nargs: 0 },
    { long: ['spinner'], nargs: 0 },
    { long: ['no-spinner'], nargs: 0 },
  ],
  async run(p, app, io) {
    if (flag(p, 'help_formats')) {
      io.out(`Available formats:\n${Object.keys(FORMATS).sort().map((f) => `  ${f.padEnd(7)}  ${FORMATS[f]?.join(',').toUpperCase()}\n`).join('')}\n`);
      return 0;
    }
    if (flag(p, 'help_columns')) {
      const heads = Object.keys(BUILTIN).sort();
      io.out(`Available columns:\n${heads.map((h) => `  ${h}`).join('\n')}\n\nAdditionally any VM property may be used as a column, see qvm-prefs --help-properties for available values\n\n`);
      return 0;
    }
    let format = value(p, 'format') ?? 'simple';
    if (flag(p, 'disk')) format = 'disk';
    if (flag(p, 'network')) format = 'network';
    if (flag(p, 'kernel')) format = 'kernel';
    if (!FORMATS[format]) {
      throw new UsageError(`argument --format/-o: invalid choice: '${format}' (choose from ${Object.keys(FORMATS).map((f) => `'${f}'`).join(', ')})`);
    }
    for (const s of ['internal', 'servicevm']) {
      const v = value(p, s);
      if (v !== undefined && !['y', 'yes', 'n', 'no'].includes(v)) throw new UsageError(`argument --${s}: invalid choice: '${v}' (choose from 'y', 'yes', 'n', 'no')`);
    }
    app.cacheEnabled = true;
    let rawData = flag(p, 'raw_data');
    let fields = value(p, 'fields');
    if (flag(p, 'raw_list')) {
      rawData = true;
      fields = 'name';
    }
    const names = fields !== undefined ? fields.split(',').map((c) => c.trim()) : (FORMATS[format] as string[]);
    const cols = names.map(column);
    const nameCol = cols.findIndex((c) => c.head === 'NAME');
    let domains: Qube[];
    if (flag(p, 'all_domains')) {
      const ex = list(p, 'exclude');
      domains = (await app.list()).filter((q) => !ex.includes(q.name));
    } else if (p.positional.length) domains = await domainsFrom(app, p.positional, p);
    else {
      if (list(p, 'exclude').length) throw new UsageError('--exclude can only be used with --all');
      domains = await app.list();
    }
    const kept: Qube[] = [];
    for (const q of domains) if (await matchesFilters(q, p)) kept.push(q);
    kept.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    // fetch the qubes' properties a few calls at a time (one connection each; a thousand at once
    // costs more than it saves); rows keep the order
    const rows = await mapLimit(kept, LS_CONCURRENCY, (q) => row(q, cols));
    if (rawData) {
      io.out(rows.map((r) => `${r.join('|')}\n`).join(''));
      return 0;
    }
    const head = cols.map((c) => c.head);
    let body: string[][];
    if (flag(p, 'tree')) {
      body = [];
      for (const [level, q] of await treeOrder(kept)) body.push(await row(q, cols, level, nameCol));
    } else {
      body = rows;
      const sortCol = head.indexOf((value(p, 'sort') ?? 'NAME').toUpperCase());
      if (sortCol >= 0) {
        const numeric = SORT_NUMERIC.has(head[sortCol] as string);
        const ic = flag(p, 'ignore_case');
        const keyOf = (r: string[]): string | number => {
          const f = r[sortCol] as string;
          if (numeric) {
            const n = Number.parseInt(f.endsWith('%') ? f.slice(0, -1) : f, 10);
            return Number.isNaN(n) ? 0 : n;
          }
          return ic ? f.toUpperCase() : f;
        };
        const dir = flag(p, 'reverse') ? -1 : 1;
        body = body
          .map((r, i) => [r, i] as const)
          .sort(([a, ia], [b, ib]) => {
            const ka = keyOf(a);
            const kb = keyOf(b);
            return (ka < kb ? -1 : ka > kb ? 1 : ia - ib) * (ka === kb ? 1 : dir);
          })
          .map(([r]) => r);
      }
    }
    io.out(formatTable([head, ...body]));
    return 0;
  },
};
