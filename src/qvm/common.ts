/**
 * What every qvm-* tool shares: the run loop (usage errors exit 2 after the
 * usage line, as argparse does; errors from qubesd print
 * `PROG: error: MESSAGE` and exit 1, as QubesArgumentParser.error_runtime
 * does), the domain arguments (names, wildcards, --all, --exclude) and the
 * table printer (`column -t`: two spaces between columns, the last one not
 * padded).
 */
import { UsageError } from '../common/args.js';
import { CommandError } from '../common/errors.js';
import { loadNative } from '../native/addon.js';
import { AdminError, AdminTransportError, defaultTransport, type AdminTransport } from '../qubesd-client/client.js';
import { QubesApp, type Qube } from './app.js';
import { parse, type Opt, type ParseHow, type Parsed } from './argparse.js';

export interface ToolIO {
  out(s: string): void;
  err(s: string): void;
}

export interface ToolSpec {
  readonly prog: string;
  readonly usage: string;
  readonly help: string;
  readonly opts: readonly Opt[];
  /** How the command line is read (default: argparse's usual way). */
  readonly how?: ParseHow;
  run(p: Parsed, app: QubesApp, io: ToolIO): Promise<number>;
}

/** A runtime error of a qvm-* tool: printed as `PROG: error: MESSAGE` (argparse's way), exit status `exitCode`. */
export class ToolError extends CommandError {
  override name = 'ToolError';
}

export const processIO: ToolIO = {
  out: (s) => process.stdout.write(s),
  err: (s) => process.stderr.write(s),
};

/** Run a tool with an argv; resolves with the exit status. */
export async function runTool(spec: ToolSpec, argv: readonly string[], io: ToolIO = processIO, transport?: AdminTransport): Promise<number> {
  try {
    const p = parse(argv, spec.opts, spec.how);
    if (p.help) {
      io.out(spec.help);
      return 0;
    }
    const app = new QubesApp(transport ?? defaultTransport());
    return await spec.run(p, app, io);
  } catch (e) {
    if (e instanceof UsageError) {
      // an empty message: the usage line alone (argparse's print_usage + exit 2)
      io.err(e.message ? `${spec.usage}\n${spec.prog}: error: ${e.message}\n` : `${spec.usage}\n`);
      return 2;
    }
    if (e instanceof ToolError) {
      io.err(`${spec.prog}: error: ${e.message}\n`);
      return e.exitCode;
    }
    if (e instanceof AdminError) {
      io.err(`${spec.prog}: error: ${e.message}\n`);
      return 1;
    }
    if (e instanceof AdminTransportError) {
      // as QubesArgumentParser.error_runtime for a QubesDaemonAccessError
      io.err(`${spec.prog}: error: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
}

/**
 * A command's main: run the tool on process.argv and exit with its status.
 * A command has nothing else to do while it waits for qubesd, so its calls
 * over the socket block (with the native addon; see SocketTransport).
 */
export function toolMain(spec: ToolSpec): void {
  const native = loadNative();
  runTool(spec, process.argv.slice(2), processIO, native ? defaultTransport(process.env, native) : undefined).then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      process.stderr.write(`${spec.prog}: error: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exitCode = 1;
    },
  );
}

/** Python's fnmatch for qube names (* ? [seq] [!seq]). */
function fnmatch(name: string, pat: string): boolean {
  let re = '';
  for (let i = 0; i < pat.length; i++) {
    const c = pat[i] as string;
    if (c === '*') re += '.*';
    else if (c === '?') re += '.';
    else if (c === '[') {
      const j = pat.indexOf(']', i + 2);
      if (j < 0) re += '\\[';
      else {
        let body = pat.slice(i + 1, j);
        if (body.startsWith('!')) body = `^${body.slice(1)}`;
        re += `[${body.replace(/\\/g, '\\\\')}]`;
        i = j;
      }
    } else re += c.replace(/[.+^${}()|\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`).test(name);
}

/**
 * The qubes named on the command line (VmNameAction): wildcards expanded,
 * unknown names a usage error; with --all every qube but dom0 minus --exclude.
 */
export async function domainsFrom(app: QubesApp, names: readonly string[], p: Parsed, opts: { allowAll?: boolean } = {}): Promise<Qube[]> {
  const all = opts.allowAll && (p.flags.get('all_domains') ?? 0) > 0;
  const exclude = p.values.get('exclude') ?? [];
  const qubes = await app.list();
  if (all) return qubes.filter((q) => q.klass !== 'AdminVM' && !exclude.includes(q.name));
  if (exclude.length) throw new UsageError('--exclude can only be used with --all');
  const wanted: string[] = [];
  for (const n of names) {
    if (/[*?[!\]]/.test(n)) {
      for (const q of qubes) if (!wanted.includes(q.name) && fnmatch(q.name, n)) wanted.push(q.name);
    } else if (!wanted.includes(n)) wanted.push(n);
  }
  const out: Qube[] = [];
  for (const n of wanted) {
    const q = await app.get(n);
    if (!q) throw new UsageError(`no such domain: '${n}'`);
    out.push(q);
  }
  return out;
}

/** `column -t`: columns padded to their widest cell plus two spaces; the last column is not padded. */
export function formatTable(rows: readonly (readonly string[])[]): string {
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, [...c].length)));
  let s = '';
  for (const r of rows) {
    s += r.map((c, i) => (i === r.length - 1 ? c : c + ' '.repeat((widths[i] as number) - [...c].length + 2))).join('') + '\n';
  }
  return s;
}

/** qubesadmin's is_running(): any state but Halted. */
export const isRunning = (state: string): boolean => state !== 'Halted';

/** The qube names a tool takes: at least one unless --all. */
export function needDomains(p: Parsed, min = 1): void {
  if ((p.flags.get('all_domains') ?? 0) === 0 && p.positional.length < min) throw new UsageError('one of the arguments --all VMNAME is required');
}
