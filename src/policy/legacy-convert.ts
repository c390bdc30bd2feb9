/**
 * Converting a Qubes 4.0 policy directory (`/etc/qubes-rpc/policy`: one file
 * per `SERVICE` or `SERVICE+ARG`, lines `SOURCE TARGET ACTION[,PARAM...]`)
 * into one new-format policy file that decides every call exactly as the
 * same files read through `!compat-4.0` do:
 *
 * - the files `!compat-4.0` reads, in its order (services sorted, within a
 *   service the `+ARG` files before the plain one); other files are skipped;
 * - each rule keeps its columns and parameters; `$` becomes `@` and commas
 *   become spaces, as the compatibility reader does;
 * - `$include:PATH` (and `!include PATH`) files are inlined, with the
 *   service and argument of the file that includes them;
 * - after each `SERVICE+ARG` file, the two denies 4.0 implied
 *   (`@anyvm @anyvm` and `@anyvm @adminvm`) are written out, so later
 *   rules still do not apply to that argument;
 * - comments are kept, in place.
 *
 * The policy is loaded by the engine's own loader first; the conversion
 * then re-reads the same files and checks, rule by rule, that it writes the
 * engine's rules in the engine's order (anything else is an internal error,
 * never a silently different policy). Pure: file access goes through a
 * {@link PolicySource}.
 */
import { PolicySyntaxError } from './errors.js';
import { decodeText, pySplitStripped, pyStrip, splitLines } from './lines.js';
import { loadRules, type DirEntry, type PolicySource } from './loader.js';
import { join, suffix } from './paths.js';
import type { Rule } from './rule.js';

export interface LegacyConvertOptions {
  /** The 4.0 policy directory; absolute (4.0 file paths are resolved against it). */
  readonly legacyDir: string;
  /** Convert only these file names of legacyDir (default: every file `!compat-4.0` reads). */
  readonly only?: readonly string[] | undefined;
  /** Keep the files' comments (default true). */
  readonly comments?: boolean | undefined;
  /** How the output's comments write the legacy directory (e.g. as the user gave it, relative); default: resolved. */
  readonly shownAs?: string | undefined;
}

export interface LegacyConversion {
  /** The new-format policy file. */
  readonly text: string;
  /** The 4.0 files converted, in order (paths). */
  readonly files: readonly string[];
  /** Number of rules written (including the implicit denies). */
  readonly rules: number;
}

/** Raised when named files are not 4.0 policy files `!compat-4.0` would read. */
export class LegacyConvertError extends Error {
  override name = 'LegacyConvertError';
}

const IGNORED_SUFFIXES = new Set(['.rpmsave', '.rpmnew', '.swp']);
const RPCNAME = /^[A-Za-z0-9+\-._]+$/;
/** A directory no real path can name: holds the one-line policy `!compat-4.0`. */
const VIRTUAL_DIR = '/\0legacy-convert';
const VIRTUAL_FILE = 'compat.policy';

/** Does `!compat-4.0` read this directory entry? (reference _list_compat_files) */
export function isLegacyPolicyFile(e: DirEntry): boolean {
  return e.isFile && !IGNORED_SUFFIXES.has(suffix(e.name)) && !e.name.startsWith('.') && RPCNAME.test(e.name);
}

function byteOrder(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** `SERVICE[+ARG]` file names in `!compat-4.0` order, with service and argument (`*` when none). */
function compatOrder(names: readonly string[]): Array<{ name: string; service: string; argument: string }> {
  const items = names.map((name) => {
    const plus = name.indexOf('+');
    return plus < 0
      ? { name, service: name, argument: '*' }
      : { name, service: name.slice(0, plus), argument: '+' + name.slice(plus + 1) };
  });
  return items.sort((a, b) => {
    if (a.service !== b.service) return byteOrder(a.service, b.service);
    if (a.argument === '*') return b.argument === '*' ? 0 : 1;
    return b.argument === '*' ? -1 : byteOrder(a.argument, b.argument);
  });
}

/** The compatibility substitutions of old-syntax lines (reference load_policy_file_service). */
function oldSyntax(line: string): string {
  return line.replaceAll('$include:', '!include ').replaceAll('$', '@').replaceAll(',', ' ');
}

/** A source that adds a policy directory holding just `!compat-4.0`, and shows only some legacy files. */
function compatSource(src: PolicySource, legacyDir: string, only: ReadonlySet<string> | null): PolicySource {
  const file = `${VIRTUAL_DIR}/${VIRTUAL_FILE}`;
  return {
    readDir: (p) => {
      if (p === VIRTUAL_DIR) return [{ name: VIRTUAL_FILE, isFile: true, isDir: false }];
      const entries = src.readDir(p);
      return only !== null && p === legacyDir ? entries.filter((e) => only.has(e.name)) : entries;
    },
    readFile: (p) => (p === file ? new TextEncoder().encode('!compat-4.0\n') : src.readFile(p)),
    isFile: (p) => p === file || src.isFile(p),
    isDir: (p) => p === VIRTUAL_DIR || src.isDir(p),
    resolve: (p) => (p === file || p === VIRTUAL_DIR ? p : src.resolve(p)),
  };
}

interface Row {
  /** A comment or blank line, written as is. */
  readonly comment?: string;
  /** Rule columns: service, argument, source, target, then action and parameters. */
  readonly cols?: readonly [string, string, string, string, string];
}

/**
 * Convert 4.0 legacy policy files into one new-format policy file.
 * @throws PolicySyntaxError where `!compat-4.0` would fail to load the files
 *   (the position is in the 4.0 file); LegacyConvertError for named files
 *   that are not 4.0 policy files.
 */
export function convertLegacy(src: PolicySource, opts: LegacyConvertOptions): LegacyConversion {
  // resolved as the loader resolves it, so that rule positions compare equal
  const legacyDir = src.resolve(opts.legacyDir);
  const shownAs = opts.shownAs;
  const shown = (p: string): string =>
    shownAs === undefined ? p : p === legacyDir ? shownAs : p.startsWith(legacyDir + '/') ? join(shownAs, p.slice(legacyDir.length + 1)) : p;
  const keepComments = opts.comments ?? true;
  let names: string[];
  const entries = src.readDir(legacyDir);
  if (opts.only !== undefined) {
    const byName = new Map(entries.map((e) => [e.name, e] as const));
    for (const n of opts.only) {
      const e = byName.get(n);
      if (e === undefined) throw new LegacyConvertError(`${join(legacyDir, n)}: no such file`);
      if (!isLegacyPolicyFile(e)) {
        throw new LegacyConvertError(`${join(legacyDir, n)}: not a 4.0 policy file (!compat-4.0 would skip it)`);
      }
    }
    names = [...new Set(opts.only)];
  } else {
    names = entries.filter(isLegacyPolicyFile).map((e) => e.name);
  }

  // 1. The engine loads the files, exactly as `!compat-4.0` would.
  let engineRules: Rule[];
  try {
    engineRules = loadRules(compatSource(src, legacyDir, opts.only ? new Set(names) : null), {
      policyDirs: [VIRTUAL_DIR],
      legacyDir,
    });
  } catch (e) {
    if (e instanceof PolicySyntaxError && e.file.startsWith(VIRTUAL_DIR)) {
      // a problem with the directory itself, reported at the virtual `!compat-4.0` line
      throw new PolicySyntaxError(legacyDir, null, e.detail);
    }
    throw e;
  }

  // 2. Walk the same files again, writing rules and comments, and check
  //    that each rule written is the engine's next rule.
  const rows: Row[] = [];
  let next = 0;
  const take = (file: string, line: number | null): Rule => {
    const r = engineRules[next++];
    if (r === undefined || r.file !== file || r.line !== line) {
      throw new Error(
        `internal error: conversion out of step with the loader at ${file}:${line ?? 0} ` +
          `(loader has ${r ? `${r.file}:${r.line ?? 0}` : 'no more rules'})`,
      );
    }
    return r;
  };
  const emitFile = (path: string, service: string, argument: string, depth: number): void => {
    const decoded = decodeText(src.readFile(path));
    if ('badLine' in decoded) throw new PolicySyntaxError(path, decoded.badLine, 'invalid UTF-8');
    const lines = splitLines(decoded.text);
    for (let i = 0; i < lines.length; i++) {
      const line = pyStrip(lines[i] as string);
      if (line.length === 0) continue;
      if (line.startsWith('#')) {
        if (keepComments) rows.push({ comment: line });
        continue;
      }
      const translated = oldSyntax(line);
      const words = pySplitStripped(pyStrip(translated));
      if (translated.startsWith('!')) {
        // `!include P` (validated by the loader): inline P, resolved as the loader does
        const included = src.resolve(join(legacyDir, words[1] as string));
        rows.push({ comment: `# ${line}  (inlined below: ${included})` });
        if (depth > 64) throw new Error('internal error: include nesting');
        emitFile(included, service, argument, depth + 1);
        rows.push({ comment: `# (end of ${included})` });
        continue;
      }
      take(path, i + 1);
      const [source, target, ...rest] = words as [string, string, ...string[]];
      rows.push({ cols: [service, argument, source, target, rest.join(' ')] });
    }
  };

  const files: string[] = [];
  for (const { name, service, argument } of compatOrder(names)) {
    // the path as the loader names it (it resolves the file's path against the directory)
    const path = src.resolve(join(legacyDir, join(legacyDir, name)));
    files.push(path);
    rows.push({ comment: '' });
    rows.push({ comment: `# ${service}${argument === '*' ? '' : argument}  (from ${shown(path)})` });
    emitFile(path, service, argument, 0);
    if (argument !== '*') {
      take(path, null);
      take(path, null);
      rows.push({ comment: `# 4.0 denied every other call for ${service}${argument}:` });
      rows.push({ cols: [service, argument, '@anyvm', '@anyvm', 'deny'] });
      rows.push({ cols: [service, argument, '@anyvm', '@adminvm', 'deny'] });
    }
  }
  if (next !== engineRules.length) {
    throw new Error(`internal error: conversion wrote ${next} of the loader's ${engineRules.length} rules`);
  }

  // 3. Lay out: rule columns aligned, as a human would write them.
  const width = [0, 0, 0, 0];
  for (const r of rows) {
    // very long values (uuid:...) just overflow their column
    if (r.cols) for (let c = 0; c < 4; c++) width[c] = Math.min(24, Math.max(width[c] as number, r.cols[c]!.length));
  }
  const out: string[] = [
    `# Converted by qrexec-legacy-convert from the Qubes 4.0 policy in ${shown(legacyDir)}.`,
    '# It decides every call as those files read through !compat-4.0 did: put it',
    '# where the !compat-4.0 line was, then move the 4.0 files away.',
  ];
  for (const r of rows) {
    if (r.cols) {
      const c = r.cols;
      out.push(c.map((v, i) => (i < 4 ? v.padEnd(width[i] as number) : v)).join('  ').trimEnd());
    } else {
      out.push(r.comment ?? '');
    }
  }
  return { text: out.join('\n') + '\n', files, rules: engineRules.length };
}
