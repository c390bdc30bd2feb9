/**
 * Command lines as the reference's qvm-* tools read them (Python argparse
 * through qubesadmin.tools.QubesArgumentParser): long options with
 * unambiguous prefixes, `--opt=value`, combined short flags, options taking
 * one value, appending, or one-or-more values (`nargs='+'`), and
 * positionals. Errors use argparse's words; the runner prints them after the
 * usage line and exits 2.
 */
import { UsageError } from '../common/args.js';

export interface Opt {
  /** Long names without dashes; the first is the key in the result. */
  readonly long: readonly string[];
  readonly short?: string;
  /**
   * 0: a flag (count kept), 1: one value (last wins), '+': one or more,
   * 'append': one value, repeatable, '?': a flag, or a value given as
   * `--opt=VALUE` only (qvm-run's `--dispvm[=T]`).
   */
  readonly nargs: 0 | 1 | '+' | 'append' | '?';
  readonly dest?: string;
}

export interface Parsed {
  readonly flags: Map<string, number>;
  readonly values: Map<string, string[]>;
  readonly positional: string[];
  readonly help: boolean;
  /**
   * With `remainder`: how many of the positionals came before the first
   * option-like string (argparse's pattern of `A`s before an `O`).
   */
  readonly leadingArgs: number;
}

export interface ParseHow {
  /**
   * argparse.REMAINDER after the first positional (qvm-run's `COMMAND ARG...`):
   * from the first positional on, every string is a positional, options too;
   * only the first `--` of the command line is dropped.
   */
  readonly remainder?: boolean;
}

export function parse(argv: readonly string[], opts: readonly Opt[], how: ParseHow = {}): Parsed {
  const flags = new Map<string, number>();
  const values = new Map<string, string[]>();
  const positional: string[] = [];
  let help = false;
  const key = (o: Opt): string => o.dest ?? (o.long[0] as string).replace(/-/g, '_');
  const findLong = (name: string): Opt | 'help' => {
    const exact = opts.find((o) => o.long.includes(name));
    if (exact) return exact;
    if (name === 'help') return 'help';
    const cands = opts.filter((o) => o.long.some((l) => l.startsWith(name)));
    const helpMatch = 'help'.startsWith(name);
    if (cands.length === 1 && !helpMatch) return cands[0] as Opt;
    if (cands.length === 0 && helpMatch && name.length > 0) return 'help';
    if (cands.length > 1 || (cands.length === 1 && helpMatch)) {
      const names = cands.flatMap((o) => o.long.filter((l) => l.startsWith(name)).map((l) => `--${l}`));
      throw new UsageError(`ambiguous option: --${name} could match ${names.join(', ')}`);
    }
    throw new UsageError(`unrecognized arguments: --${name}`);
  };
  const isOptionLike = (a: string): boolean => a.startsWith('-') && a.length > 1 && !/^-\d/.test(a);
  let i = 0;
  const take = (o: Opt, inline: string | undefined, shown: string): void => {
    const k = key(o);
    if (o.nargs === 0) {
      if (inline !== undefined) throw new UsageError(`argument ${shown}: ignored explicit argument '${inline}'`);
      flags.set(k, (flags.get(k) ?? 0) + 1);
      return;
    }
    if (o.nargs === '?') {
      if (inline === undefined) flags.set(k, (flags.get(k) ?? 0) + 1);
      else values.set(k, [inline]);
      return;
    }
    const got: string[] = [];
    if (inline !== undefined) got.push(inline);
    if (o.nargs === '+') {
      while (i + 1 < argv.length && !isOptionLike(argv[i + 1] as string) && argv[i + 1] !== '--') got.push(argv[++i] as string);
      if (got.length === 0) throw new UsageError(`argument ${shown}: expected at least one argument`);
      values.set(k, got);
      return;
    }
    if (got.length === 0) {
      const next = argv[i + 1];
      if (next === undefined || isOptionLike(next)) throw new UsageError(`argument ${shown}: expected one argument`);
      got.push(next);
      i++;
    }
    if (o.nargs === 'append') values.set(k, [...(values.get(k) ?? []), ...got]);
    else values.set(k, got);
  };
  let leadingArgs = -1;
  for (; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '--') {
      positional.push(...argv.slice(i + 1));
      if (how.remainder) leadingArgs = argv.length - i - 1;
      break;
    }
    if (how.remainder && !isOptionLike(a)) {
      const rest = argv.slice(i);
      const dd = rest.indexOf('--');
      let lead = 0;
      while (lead < rest.length && !isOptionLike(rest[lead] as string)) lead++;
      if (dd >= 0) {
        // after the `--` everything counts as an argument
        if (dd === lead) lead = rest.length - 1;
        rest.splice(dd, 1);
      }
      positional.push(...rest);
      leadingArgs = lead;
      break;
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq < 0 ? a.slice(2) : a.slice(2, eq);
      const o = findLong(name);
      if (o === 'help') {
        help = true;
        continue;
      }
      take(o, eq < 0 ? undefined : a.slice(eq + 1), `--${o.long[0]}`);
    } else if (isOptionLike(a)) {
      for (let k = 1; k < a.length; k++) {
        const c = a[k] as string;
        if (c === 'h') {
          help = true;
          continue;
        }
        const o = opts.find((x) => x.short === c);
        if (!o) throw new UsageError(`unrecognized arguments: ${a}`);
        const shown = `-${c}/--${o.long[0]}`;
        if (o.nargs !== 0) {
          const rest = a.slice(k + 1);
          take(o, rest.length ? rest : undefined, shown);
          break;
        }
        take(o, undefined, shown);
      }
    } else positional.push(a);
  }
  return { flags, values, positional, help, leadingArgs: leadingArgs < 0 ? positional.length : leadingArgs };
}

export const flag = (p: Parsed, k: string): boolean => (p.flags.get(k) ?? 0) > 0;
export const value = (p: Parsed, k: string): string | undefined => p.values.get(k)?.at(-1);
export const list = (p: Parsed, k: string): string[] => p.values.get(k) ?? [];

/** The options every QubesArgumentParser has. */
export const COMMON_OPTS: readonly Opt[] = [
  { long: ['verbose'], short: 'v', nargs: 0 },
  { long: ['quiet'], short: 'q', nargs: 0 },
  { long: ['force-root'], nargs: 0 },
];
/** VmNameGroup: --all and --exclude. */
export const ALL_OPTS: readonly Opt[] = [
  { long: ['all'], nargs: 0, dest: 'all_domains' },
  { long: ['exclude'], nargs: 'append' },
];
