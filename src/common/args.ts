/**
 * A small, strict command-line parser shared by our commands: long options
 * (`--name VALUE`, `--name=VALUE`), short flags, repeatable options, `--`.
 * Unknown options are errors; `--help` is always recognised.
 */

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

export class UsageError extends Error {
  override name = 'UsageError';
}

export function parseArgs(argv: readonly string[], specs: readonly OptionSpec[]): ParsedArgs {
  const options = new Map<string, string[]>();
  const flags = new Set<string>();
  const positional: string[] = [];
  let help = false;
  const byLong = new Map(specs.map((s) => [s.name, s]));
  const byShort = new Map(specs.filter((s) => s.short).map((s) => [s.short as string, s]));
  const take = (spec: OptionSpec, value: string | undefined, i: number): number => {
    if (!spec.value) {
      if (value !== undefined) throw new UsageError(`option --${spec.name} takes no value`);
      flags.add(spec.name);
      return i;
    }
    let v = value;
    let next = i;
    if (v === undefined) {
      next = i + 1;
      v = argv[next];
      if (v === undefined) throw new UsageError(`option --${spec.name} needs a value`);
    }
    const list = options.get(spec.name) ?? [];
    if (list.length > 0 && !spec.repeat) throw new UsageError(`option --${spec.name} given twice`);
    list.push(v);
    options.set(spec.name, list);
    return next;
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
      const spec = byLong.get(name);
      if (!spec) throw new UsageError(`unknown option --${name}`);
      i = take(spec, eq < 0 ? undefined : a.slice(eq + 1), i);
    } else if (a.startsWith('-') && a.length > 1) {
      for (let k = 1; k < a.length; k++) {
        const spec = byShort.get(a[k] as string);
        if (!spec) throw new UsageError(`unknown option -${a[k]}`);
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

/** Run a command's main, turning UsageError into exit status 2 with a hint. */
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
          process.stderr.write(`${prog}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
          process.exitCode = 1;
        }
      },
    );
}
