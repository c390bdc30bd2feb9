/**
 * Loading a policy: policy directories, `!include`, `!include-dir`,
 * `!include-service`, `!compat-4.0` and 4.0 legacy files, as the reference's
 * FilePolicy and Compat40Loader do. All file access goes through the
 * {@link PolicySource} interface; the first problem stops loading (fail
 * closed) with a PolicySyntaxError naming file and line.
 */
import { PolicySyntaxError } from './errors.js';
import { decodeText, pySplitStripped, pyStrip, splitLines } from './lines.js';
import { basename, join, suffix } from './paths.js';
import { ruleFromFields, ruleFromServiceFields, validateServiceAndArgument, makeRule, type Rule, type TokenCache, newTokenCache } from './rule.js';
import type { Position } from './tokens.js';

/** A directory entry; `isFile`/`isDir` follow symlinks (as pathlib does). */
export interface DirEntry {
  readonly name: string;
  readonly isFile: boolean;
  readonly isDir: boolean;
}

/**
 * The file system as the loader sees it. Implementations: the disk
 * (src/policy-files/disk.ts) and in-memory maps in tests. Methods throw
 * {@link PolicyIoError} for I/O problems.
 */
export interface PolicySource {
  readDir(path: string): DirEntry[];
  readFile(path: string): Uint8Array;
  isFile(path: string): boolean;
  isDir(path: string): boolean;
  /** Absolute, normalised, symlinks resolved where they exist (pathlib's resolve()). */
  resolve(path: string): string;
}

/** An I/O failure reported by a PolicySource. */
export class PolicyIoError extends Error {
  override name = 'PolicyIoError';
  constructor(
    readonly path: string,
    message: string,
    /** Why, without the path ("does not exist", "permission denied"...), when the source knows. */
    readonly reason?: string,
  ) {
    super(message);
  }
}

/** Where the policy lives. */
export interface LoadOptions {
  /** Policy directories, earliest first; a file name in an earlier one shadows later ones. */
  readonly policyDirs: readonly string[];
  /** The 4.0 policy directory for `!compat-4.0` (reference: /etc/qubes-rpc/policy). */
  readonly legacyDir: string;
  /**
   * Reuse the rules of a top-level file from an earlier load when every
   * read its load made (its bytes, included files, directories listed,
   * paths resolved) gives the same answer again: only changed files are
   * parsed. Filled by successful loads.
   */
  readonly cache?: LoadCache;
}

/** One read a file's load made, and its answer. */
type Read =
  | { readonly op: 'readFile'; readonly arg: string; readonly bytes: Uint8Array | null }
  | { readonly op: 'readDir' | 'isFile' | 'isDir' | 'resolve'; readonly arg: string; readonly answer: string | null };

/** Rules of top-level files by path, with the reads they came from. */
export class LoadCache {
  readonly entries = new Map<string, { readonly baseDir: string; readonly reads: readonly Read[]; readonly rules: readonly Rule[] }>();
}

function sameBytes(a: Uint8Array | null, b: Uint8Array | null): boolean {
  if (a === null || b === null) return a === b;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** `src`, recording every answer it gives into `reads` (a thrown error is answered null). */
function recording(src: PolicySource, reads: Read[]): PolicySource {
  const rec = <T>(op: 'readDir' | 'isFile' | 'isDir' | 'resolve', arg: string, f: () => T): T => {
    try {
      const v = f();
      reads.push({ op, arg, answer: JSON.stringify(v) });
      return v;
    } catch (e) {
      reads.push({ op, arg, answer: null });
      throw e;
    }
  };
  return {
    readDir: (p) => rec('readDir', p, () => src.readDir(p)),
    isFile: (p) => rec('isFile', p, () => src.isFile(p)),
    isDir: (p) => rec('isDir', p, () => src.isDir(p)),
    resolve: (p) => rec('resolve', p, () => src.resolve(p)),
    readFile(p) {
      try {
        const b = src.readFile(p);
        reads.push({ op: 'readFile', arg: p, bytes: b });
        return b;
      } catch (e) {
        reads.push({ op: 'readFile', arg: p, bytes: null });
        throw e;
      }
    },
  };
}

/** Whether every recorded read gives the same answer from `src` now. */
function unchanged(src: PolicySource, reads: readonly Read[]): boolean {
  const answer = (f: () => unknown): string | null => {
    try {
      return JSON.stringify(f());
    } catch {
      return null;
    }
  };
  for (const r of reads) {
    if (r.op === 'readFile') {
      let b: Uint8Array | null;
      try {
        b = src.readFile(r.arg);
      } catch {
        b = null;
      }
      if (!sameBytes(b, r.bytes)) return false;
    } else if (answer(() => src[r.op](r.arg)) !== r.answer) {
      return false;
    }
  }
  return true;
}

/** Longest include chain accepted; deeper nesting is surely a mistake (or a loop). */
export const MAX_INCLUDE_DEPTH = 32;

const POLICY_FILENAME = /^[0-9a-z_.-]+$/;
const RPCNAME = /^[A-Za-z0-9+\-._]+$/;
const LEGACY_IGNORED_SUFFIXES = new Set(['.rpmsave', '.rpmnew', '.swp']);

/** Directory entries that are policy files, checked and sorted (reference filter_filepaths). */
export function policyFilesIn(entries: readonly DirEntry[], dir: string): string[] {
  const files = entries.filter((e) => e.isFile && suffix(e.name) === '.policy' && !e.name.startsWith('.'));
  for (const e of files) {
    if (!POLICY_FILENAME.test(e.name)) {
      throw new PolicySyntaxError(join(dir, e.name), null, `invalid filename: ${join(dir, e.name)}`);
    }
  }
  return files.map((e) => e.name).sort(byteOrder);
}

function byteOrder(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

class Loader {
  readonly rules: Rule[] = [];
  private readonly tokens: TokenCache = newTokenCache();
  /** Files being read, innermost last, to refuse include loops. */
  private readonly stack: string[] = [];
  /** Directory of the top-level file being loaded; relative includes resolve against it. */
  private baseDir = '';

  constructor(
    private src: PolicySource,
    private readonly opts: LoadOptions,
  ) {}

  loadDirs(): void {
    const seen = new Map<string, string>();
    for (const dir of this.opts.policyDirs) {
      let entries: DirEntry[];
      try {
        entries = this.src.readDir(dir);
      } catch (e) {
        if (e instanceof PolicyIoError && e.reason !== undefined) throw new PolicySyntaxError(dir, null, `policy directory ${e.reason}`);
        throw this.ioError(e, dir, null, dir);
      }
      for (const name of policyFilesIn(entries, dir)) {
        if (!seen.has(name)) seen.set(name, join(dir, name));
      }
    }
    for (const name of [...seen.keys()].sort(byteOrder)) {
      const path = seen.get(name) as string;
      this.baseDir = path.slice(0, path.length - name.length - 1) || '/';
      const cache = this.opts.cache;
      if (!cache) {
        this.loadFile(path, null);
        continue;
      }
      const hit = cache.entries.get(path);
      if (hit && hit.baseDir === this.baseDir && unchanged(this.src, hit.reads)) {
        for (const r of hit.rules) this.rules.push(r);
        continue;
      }
      const reads: Read[] = [];
      const plain = this.src;
      const start = this.rules.length;
      this.src = recording(plain, reads);
      try {
        this.loadFile(path, null);
      } catch (e) {
        cache.entries.delete(path);
        throw e;
      } finally {
        this.src = plain;
      }
      cache.entries.set(path, { baseDir: this.baseDir, reads, rules: this.rules.slice(start) });
    }
  }

  private ioError(e: unknown, path: string, line: number | null, file: string): PolicySyntaxError {
    if (e instanceof PolicySyntaxError) return e;
    const msg = e instanceof Error ? e.message : String(e);
    return new PolicySyntaxError(file, line, `failed to load ${path}: ${msg}`);
  }

  /** Read and split a file; `from` is the directive that asked for it. */
  private readLines(path: string, from: Position | null): { lines: string[]; key: string } {
    let key: string;
    try {
      key = this.src.resolve(path);
    } catch (e) {
      throw from ? this.ioError(e, path, from.line, from.file) : this.ioError(e, path, null, path);
    }
    if (this.stack.includes(key)) {
      const p = from ?? { file: path, line: null };
      throw new PolicySyntaxError(p.file, p.line, `include loop: ${path} is already being read`);
    }
    if (this.stack.length >= MAX_INCLUDE_DEPTH) {
      const p = from ?? { file: path, line: null };
      throw new PolicySyntaxError(p.file, p.line, `includes nested deeper than ${MAX_INCLUDE_DEPTH} levels`);
    }
    let bytes: Uint8Array;
    try {
      bytes = this.src.readFile(path);
    } catch (e) {
      throw from ? this.ioError(e, path, from.line, from.file) : this.ioError(e, path, null, path);
    }
    const decoded = decodeText(bytes);
    if ('badLine' in decoded) throw new PolicySyntaxError(path, decoded.badLine, 'invalid UTF-8');
    return { lines: splitLines(decoded.text), key };
  }

  private resolveInclude(included: string, pos: Position, base: string): string {
    let path: string;
    try {
      path = this.src.resolve(join(base, included));
    } catch (e) {
      throw this.ioError(e, included, pos.line, pos.file);
    }
    if (!this.src.isFile(path)) throw new PolicySyntaxError(pos.file, pos.line, `not a file: ${path}`);
    return path;
  }

  /** A new-format file. */
  loadFile(path: string, from: Position | null): void {
    const { lines, key } = this.readLines(path, from);
    this.stack.push(key);
    try {
      for (let i = 0; i < lines.length; i++) {
        const line = pyStrip(lines[i] as string);
        if (line.length === 0 || line.charCodeAt(0) === 0x23 /* # */) continue;
        const pos: Position = { file: path, line: i + 1 };
        const words = pySplitStripped(line);
        if (line.charCodeAt(0) === 0x21 /* ! */) {
          this.directive(words, pos);
          continue;
        }
        this.rules.push(ruleFromFields(words, line, pos, this.tokens));
      }
    } finally {
      this.stack.pop();
    }
  }

  private directive(words: string[], pos: Position): void {
    const [directive, ...params] = words as [string, ...string[]];
    switch (directive) {
      case '!include': {
        if (params.length !== 1) throw new PolicySyntaxError(pos.file, pos.line, 'invalid number of params');
        this.loadFile(this.resolveInclude(params[0] as string, pos, this.baseDir), pos);
        return;
      }
      case '!include-dir': {
        if (params.length !== 1) throw new PolicySyntaxError(pos.file, pos.line, 'invalid number of params');
        this.includeDir(params[0] as string, pos);
        return;
      }
      case '!include-service': {
        if (params.length !== 3) throw new PolicySyntaxError(pos.file, pos.line, 'invalid number of params');
        const [svc, arg, path] = params as [string, string, string];
        this.includeService(svc, arg, path, pos, this.baseDir);
        return;
      }
      case '!compat-4.0': {
        if (params.length !== 0) throw new PolicySyntaxError(pos.file, pos.line, 'invalid number of params');
        this.compat40(pos);
        return;
      }
      default:
        throw new PolicySyntaxError(pos.file, pos.line, 'invalid directive');
    }
  }

  private includeDir(included: string, pos: Position): void {
    let dir: string;
    try {
      dir = this.src.resolve(join(this.baseDir, included));
    } catch (e) {
      throw this.ioError(e, included, pos.line, pos.file);
    }
    if (!this.src.isDir(dir)) throw new PolicySyntaxError(pos.file, pos.line, `not a directory: ${dir}`);
    let entries: DirEntry[];
    try {
      entries = this.src.readDir(dir);
    } catch (e) {
      throw this.ioError(e, dir, pos.line, pos.file);
    }
    for (const name of policyFilesIn(entries, dir)) this.loadFile(join(dir, name), pos);
  }

  private includeService(service: string, argument: string, included: string, pos: Position, base: string): void {
    const sa = validateServiceAndArgument(service, argument, pos);
    const path = this.resolveInclude(included, pos, base);
    this.loadServiceFile(sa.service, sa.argument, path, pos, base);
  }

  /** An old-format (4.0 syntax) file: `SOURCE TARGET ACTION[,PARAMS]` for one service. */
  private loadServiceFile(
    service: string | null,
    argument: string | null,
    path: string,
    from: Position,
    base: string,
  ): void {
    const { lines, key } = this.readLines(path, from);
    this.stack.push(key);
    try {
      for (let i = 0; i < lines.length; i++) {
        let line = pyStrip(lines[i] as string);
        if (line.length === 0 || line.charCodeAt(0) === 0x23) continue;
        const original = line;
        line = line.replaceAll('$include:', '!include ').replaceAll('$', '@').replaceAll(',', ' ');
        const pos: Position = { file: path, line: i + 1 };
        const words = pySplitStripped(pyStrip(line));
        if (line.startsWith('!')) {
          if (words[0] !== '!include') throw new PolicySyntaxError(pos.file, pos.line, 'invalid directive');
          if (words.length !== 2) throw new PolicySyntaxError(pos.file, pos.line, 'invalid number of params');
          // validation of service/argument again, as the reference does
          this.includeService(service ?? '*', argument ?? '*', words[1] as string, pos, base);
          continue;
        }
        this.rules.push(ruleFromServiceFields(service, argument, words, original, pos, this.tokens));
      }
    } finally {
      this.stack.pop();
    }
  }

  /** `!compat-4.0`: every legacy file as `!include-service`, plus the implicit denies. */
  private compat40(pos: Position): void {
    let dir: string;
    let entries: DirEntry[];
    try {
      // absolute, so that the legacy file paths below resolve once, not twice
      dir = this.src.resolve(this.opts.legacyDir);
      entries = this.src.readDir(dir);
    } catch (e) {
      throw this.ioError(e, this.opts.legacyDir, pos.line, pos.file);
    }
    const services = new Map<string, Map<string, string>>();
    for (const e of entries) {
      if (!e.isFile || LEGACY_IGNORED_SUFFIXES.has(suffix(e.name)) || e.name.startsWith('.')) continue;
      if (!RPCNAME.test(e.name)) continue;
      const plus = e.name.indexOf('+');
      const svc = plus < 0 ? e.name : e.name.slice(0, plus);
      const arg = plus < 0 ? '*' : '+' + e.name.slice(plus + 1);
      let m = services.get(svc);
      if (!m) services.set(svc, (m = new Map()));
      m.set(arg, join(dir, e.name));
    }
    const argOrder = (a: string, b: string): number => (a === '*' ? (b === '*' ? 0 : 1) : b === '*' ? -1 : byteOrder(a, b));
    for (const svc of [...services.keys()].sort(byteOrder)) {
      const args = services.get(svc) as Map<string, string>;
      for (const arg of [...args.keys()].sort(argOrder)) {
        const path = args.get(arg) as string;
        this.includeService(svc, arg, path, pos, dir);
        if (arg !== '*') {
          // After a file for one argument the 4.0 engine denied everything
          // else for that argument; keep that, so later rules do not apply.
          const p: Position = { file: path, line: null };
          for (const target of ['@anyvm', '@adminvm']) {
            this.rules.push(
              makeRule({ service: svc, argument: arg, source: '@anyvm', target, action: 'deny', params: [] }, `@anyvm ${target} deny`, p, this.tokens),
            );
          }
        }
      }
    }
  }
}

/**
 * Load every rule of a policy, in evaluation order.
 * @throws PolicySyntaxError at the first problem; nothing partial is returned.
 */
export function loadRules(src: PolicySource, opts: LoadOptions): Rule[] {
  const loader = new Loader(src, opts);
  loader.loadDirs();
  return loader.rules;
}

/**
 * Load rules from one file's text alone (no includes resolved against a
 * directory); used by lint for standalone files and by tests.
 */
export function loadRulesFromFiles(
  files: ReadonlyMap<string, string>,
  main: string,
  legacyDir = '/etc/qubes-rpc/policy',
): Rule[] {
  const src = memorySource(files);
  const loader = new Loader(src, { policyDirs: [], legacyDir });
  loader.loadFile(main, null);
  return loader.rules;
}

/**
 * An in-memory file system: paths (absolute) to contents. Directories are
 * implied by the paths. Symlinks are not modelled.
 */
export function memorySource(files: ReadonlyMap<string, string | Uint8Array>): PolicySource {
  const enc = new TextEncoder();
  const norm = (p: string): string => {
    const out: string[] = [];
    for (const part of p.split('/')) {
      if (part === '' || part === '.') continue;
      if (part === '..') out.pop();
      else out.push(part);
    }
    return '/' + out.join('/');
  };
  const all = new Map<string, string | Uint8Array>();
  for (const [k, v] of files) all.set(norm(k), v);
  const isDir = (p: string): boolean => {
    const n = norm(p);
    const prefix = n === '/' ? '/' : n + '/';
    for (const k of all.keys()) if (k.startsWith(prefix)) return true;
    return false;
  };
  return {
    readDir(path) {
      const n = norm(path);
      if (!isDir(n)) throw new PolicyIoError(path, `no such directory: ${path}`);
      const prefix = n === '/' ? '/' : n + '/';
      const names = new Map<string, DirEntry>();
      for (const k of all.keys()) {
        if (!k.startsWith(prefix)) continue;
        const rest = k.slice(prefix.length);
        const slash = rest.indexOf('/');
        const name = slash < 0 ? rest : rest.slice(0, slash);
        names.set(name, { name, isFile: slash < 0, isDir: slash >= 0 });
      }
      return [...names.values()];
    },
    readFile(path) {
      const v = all.get(norm(path));
      if (v === undefined) throw new PolicyIoError(path, `no such file: ${path}`);
      return typeof v === 'string' ? enc.encode(v) : v;
    },
    isFile: (p) => all.has(norm(p)),
    isDir,
    resolve: norm,
  };
}

export { basename };
