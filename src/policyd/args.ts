/**
 * A small argparse-like command-line parser for the policy tools: long
 * options with a value (`--opt VALUE` or `--opt=VALUE`, maybe repeated),
 * flags, short aliases, and positional arguments. Errors print like
 * argparse's (`usage...` then `prog: error: ...`, exit status 2).
 */

export interface OptionSpec {
  /** Long name without dashes. */
  readonly name: string;
  readonly short?: string;
  /** Takes a value. */
  readonly value?: boolean;
  /** May be given several times (values collected in order). */
  readonly repeat?: boolean;
}

export interface ParsedArgs {
  readonly values: Map<string, string[]>;
  readonly flags: Set<string>;
  readonly positional: string[];
}

export class UsageError extends Error {
  override name = 'UsageError';
}

export function parseArgs(argv: readonly string[], specs: readonly OptionSpec[]): ParsedArgs {
  const values = new Map<string, string[]>();
  const flags = new Set<string>();
  const positional: string[] = [];
  const byName = new Map(specs.map((s) => [s.name, s]));
  const byShort = new Map(specs.filter((s) => s.short !== undefined).map((s) => [s.short as string, s]));
  let onlyPositional = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (onlyPositional || a === '-' || !a.startsWith('-')) {
      positional.push(a);
      continue;
    }
    if (a === '--') {
      onlyPositional = true;
      continue;
    }
    let spec: OptionSpec | undefined;
    let inline: string | undefined;
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq < 0 ? a.slice(2) : a.slice(2, eq);
      if (eq >= 0) inline = a.slice(eq + 1);
      spec = byName.get(name);
      if (spec === undefined) {
        // argparse accepts unambiguous prefixes
        const matches = specs.filter((s) => s.name.startsWith(name));
        if (matches.length === 1) spec = matches[0];
      }
    } else {
      spec = byShort.get(a.slice(1, 2));
      if (a.length > 2) inline = a.slice(2);
    }
    if (spec === undefined) throw new UsageError(`unrecognized arguments: ${a}`);
    if (spec.value) {
      let v = inline;
      if (v === undefined) {
        if (i + 1 >= argv.length) throw new UsageError(`argument --${spec.name}: expected one argument`);
        v = argv[++i] as string;
      }
      const list = values.get(spec.name) ?? [];
      if (!spec.repeat) list.length = 0;
      list.push(v);
      values.set(spec.name, list);
    } else {
      if (inline !== undefined) throw new UsageError(`argument --${spec.name}: ignored explicit argument '${inline}'`);
      flags.add(spec.name);
    }
  }
  return { values, flags, positional };
}

/** Last value of an option, or undefined. */
export function last(p: ParsedArgs, name: string): string | undefined {
  const l = p.values.get(name);
  return l === undefined ? undefined : l[l.length - 1];
}

/** A positive number option (milliseconds, counts...). */
export function numberOption(p: ParsedArgs, name: string, dflt: number): number {
  const v = last(p, name);
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new UsageError(`argument --${name}: invalid value: '${v}'`);
  return n;
}

/** Print an argparse-style error and exit 2. */
export function usageExit(prog: string, usage: string, e: UsageError): never {
  process.stderr.write(`${usage}\n${prog}: error: ${e.message}\n`);
  process.exit(2);
}
