/**
 * A small, strict command-line parser shared by our commands: long options
 * (`--name VALUE`, `--name=VALUE`), short flags (combinable: `-ab`), short
 * options with a value (`-s PATH`, `-sPATH`), repeatable options, `--`.
 * Unknown options are errors; `--help`/`-h` are always recognised.
 *
 * Two conventions. The default is ours: a non-repeatable option given twice
 * is an error, and errors read `unknown option --x`. With `{ argparse: true }`
 * it behaves as Python's argparse does for the Qubes tools we replace
 * (qrexec-policy-daemon, qrexec-policy-exec...): an unambiguous prefix of a
 * long option is accepted (`--just` for `--just-evaluate`), the last of a
 * repeated option wins, and errors are argparse's words
 * (`unrecognized arguments: --x`, `argument --x: expected one argument`),
 * to be printed by {@link usageExit}.
 */

import { CommandError, errorLine } from './errors.js';

export interface OptionSpec {
  /** Long name without dashes. */
  readonly name: string;
  readonly short?: string;
  /** Takes a value. */
  readonly value?: boolean;
  /** May be given several times (values collected). */
  readonly repeat?: boolean;
}

export interface ParsedArgs {
  readonly options: Map<string, string[]>;
  readonly flags: Set<string>;
  readonly positional: string[];
  readonly help: boolean;
}

export interface ParseOptions {
  /** Python argparse conventions (see the module comment). */
  readonly argparse?: boolean;
}

export class UsageError extends Error {
  override name = 'UsageError';
}

export function parseArgs(argv: readonly string[], specs: readonly OptionSpec[], how: ParseOptions = {}): ParsedArgs {
  const argparse = how.argparse === true;
  const options = new Map<string, string[]>();
  const flags = new Set<string>();
  const positional: string[] = [];
  let help = false;
  const byLong = new Map(specs.map((s) => [s.name, s]));
  const byShort = new Map(specs.filter((s) => s.short).map((s) => [s.short as string, s]));
  const take = (spec: OptionSpec, value: string | undefined, i: number): number => {
    if (!spec.value) {
      if (value !== undefined) {
        throw new UsageError(
          argparse ? `argument --${spec.name}: ignored explicit argument '${value}'` : `option --${spec.name} takes no value`,
        );
      }
      flags.add(spec.name);
      return i;
    }
    let v = value;
    let next = i;
    if (v === undefined) {
      next = i + 1;
      v = argv[next];
      if (v === undefined) {
        throw new UsageError(argparse ? `argument --${spec.name}: expected one argument` : `option --${spec.name} needs a value`);
      }
    }
    const list = options.get(spec.name) ?? [];
    if (list.length > 0 && !spec.repeat) {
      if (!argparse) throw new UsageError(`option --${spec.name} given twice`);
      list.length = 0; // argparse: the last one wins
    }
    list.push(v);
    options.set(spec.name, list);
    return next;
  };
  /** A long option by name; with argparse, also by an unambiguous prefix. */
  const long = (name: string): OptionSpec | 'help' | undefined => {
    const spec = byLong.get(name);
    if (spec !== undefined || !argparse || name === '') return spec;
    const matches: (OptionSpec | 'help')[] = specs.filter((s) => s.name.startsWith(name));
    if ('help'.startsWith(name)) matches.push('help');
    return matches.length === 1 ? matches[0] : undefined;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '--') {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (a === '--help' || a === '-h') {
      help = true;
      continue;
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq < 0 ? a.slice(2) : a.slice(2, eq);
      const spec = long(name);
      if (spec === 'help' && eq < 0) {
        help = true;
        continue;
      }
      if (spec === undefined || spec === 'help') {
        throw new UsageError(argparse ? `unrecognized arguments: ${a}` : `unknown option --${name}`);
      }
      i = take(spec, eq < 0 ? undefined : a.slice(eq + 1), i);
    } else if (a.startsWith('-') && a.length > 1) {
      for (let k = 1; k < a.length; k++) {
        const c = a[k] as string;
        const spec = byShort.get(c);
        if (!spec) throw new UsageError(argparse ? `unrecognized arguments: ${a}` : `unknown option -${c}`);
        if (spec.value) {
          const rest = a.slice(k + 1);
          i = take(spec, rest.length > 0 ? rest : undefined, i);
          break;
        }
        take(spec, undefined, i);
      }
    } else {
      positional.push(a);
    }
  }
  return { options, flags, positional, help };
}

/** The one value of an option, or undefined. */
export function opt(args: ParsedArgs, name: string): string | undefined {
  return args.options.get(name)?.[0];
}

/** The last value of an option (argparse: the one that counts), or undefined. */
export function last(args: ParsedArgs, name: string): string | undefined {
  const l = args.options.get(name);
  return l === undefined ? undefined : l[l.length - 1];
}

/** A non-negative number option (seconds, counts...), argparse-worded error. */
export function numberOption(args: ParsedArgs, name: string, dflt: number): number {
  const v = last(args, name);
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new UsageError(`argument --${name}: invalid value: '${v}'`);
  return n;
}

/** Print an argparse-style error (`usage...` then `prog: error: ...`) and exit 2. */
export function usageExit(prog: string, usage: string, e: UsageError): never {
  process.stderr.write(`${usage}\n${prog}: error: ${e.message}\n`);
  process.exit(2);
}

/**
 * Run a command's main, turning UsageError into exit status 2 with the usage,
 * and any other error into one `<prog>: <message>` line (see errorLine).
 */
export function runMain(prog: string, usage: string, main: () => Promise<number> | number): void {
  Promise.resolve()
    .then(main)
    .then(
      (code) => {
        process.exitCode = code;
      },
      (e: unknown) => {
        if (e instanceof UsageError) {
          process.stderr.write(`${prog}: ${e.message}\n${usage}`);
          process.exitCode = 2;
        } else {
          process.stderr.write(`${prog}: ${errorLine(e)}\n`);
          process.exitCode = e instanceof CommandError ? e.exitCode : 1;
        }
      },
    );
}
