/**
 * Linting policy files line by line, as the reference's qubes-policy-lint
 * does: each non-comment line is checked on its own, so every problem of a
 * file is reported, not only the first one. Included files are not read
 * (a linted file may come from anywhere); an include's path is only checked
 * to lie where the Policy API keeps files (the policy directory itself or
 * its `include/` subdirectory), as the reference does.
 *
 * Pure: the caller reads the file; this module only sees its bytes.
 */
import { PolicySyntaxError } from './errors.js';
import { pySplitStripped, pyStrip } from './lines.js';
import { loadRulesFromFiles } from './loader.js';

/** One finding of the linter. */
export interface LintDiagnostic {
  /** The file name as given to the linter (`-` for stdin). */
  readonly file: string;
  /** 1-based line; 0 for a problem with the file itself. */
  readonly line: number;
  readonly severity: 'error' | 'warning';
  /** The problem, as the policy loader words it. */
  readonly message: string;
  /** The offending line, stripped ('' for file-level problems). */
  readonly text: string;
}

export interface LintOptions {
  /**
   * Lint a file meant for `!include-service` (the old 3-column syntax:
   * `SOURCE TARGET ACTION[,PARAM...]`, `$`-tokens, `$include:`), instead of
   * a `.policy` file.
   */
  readonly includeService?: boolean;
}

/** The directory the reference resolves relative include paths against (only used in messages). */
const POLICYPATH = '/etc/qubes/policy.d';

/** Virtual file names for the one-line policies each line is loaded as. */
const MAIN = '/__main__';
const SERVICE_FILE = '/__include_service__';
const LEGACY_DIR = '/__legacy__';

/** `str(pathlib.PurePosixPath(p))`: collapse `//` and `.` parts, drop a trailing slash. */
function purePosix(p: string): string {
  let lead = '';
  if (p.startsWith('//') && !p.startsWith('///')) lead = '//';
  else if (p.startsWith('/')) lead = '/';
  const parts = p.split('/').filter((x) => x !== '' && x !== '.');
  const s = lead + parts.join('/');
  return s === '' ? '.' : s;
}

/**
 * The reference only accepts include paths inside the policy directory or
 * its `include/` subdirectory (the layout the Policy API manages). Returns
 * the complaint, or null.
 */
export function includePathProblem(included: string): string | null {
  const key = purePosix(included);
  if (key.includes('/') && (!key.startsWith('include/') || key.split('/').length - 1 > 1)) {
    return (
      `invalid path ${key}, only paths inside the directories ` +
      `${POLICYPATH} and ${POLICYPATH}/include are considered`
    );
  }
  return null;
}

/** The compatibility substitutions of old-syntax lines (reference load_policy_file_service). */
function oldSyntax(line: string): string {
  return line.replaceAll('$include:', '!include ').replaceAll('$', '@').replaceAll(',', ' ');
}

/** Split bytes into lines at `\n`, `\r\n` and lone `\r`, like Python's text-mode readlines(). */
function byteLines(bytes: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  let start = 0;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    if (b === 0x0a || b === 0x0d) {
      out.push(bytes.subarray(start, i));
      if (b === 0x0d && bytes[i + 1] === 0x0a) i++;
      start = i + 1;
    }
  }
  if (start < bytes.length) out.push(bytes.subarray(start));
  return out;
}

/**
 * Check one stripped, non-empty, non-comment line. Throws the loader's
 * PolicySyntaxError for a problem; returns warnings otherwise.
 */
function lintLine(line: string, includeService: boolean): string[] {
  const warnings: string[] = [];
  // The paths an include on this line names: they must pass the layout
  // check, and then exist (empty) so that the line itself loads.
  const included: string[] = [];
  if (line.startsWith('!')) {
    const [directive, ...params] = pySplitStripped(line);
    if (directive === '!include-dir') {
      // Not resolved (in either mode, as the reference); only the number of
      // parameters can be checked.
      if (params.length !== 1) throw new PolicySyntaxError(MAIN, 1, 'invalid number of params');
      return warnings;
    }
  }
  if (!includeService && line.startsWith('!')) {
    const [directive, ...params] = pySplitStripped(line);
    if (directive === '!include' && params.length === 1) included.push(params[0] as string);
    else if (directive === '!include-service' && params.length === 3) included.push(params[2] as string);
    else if (directive === '!compat-4.0' && params.length === 0) {
      warnings.push('!compat-4.0 directive is transitional and will be deprecated');
    }
  } else if (includeService) {
    const translated = oldSyntax(line);
    if (translated.startsWith('!')) {
      const [directive, ...params] = pySplitStripped(pyStrip(translated));
      // `$include:P` is `!include P` here; both name a file to check.
      if (directive === '!include' && params.length === 1) included.push(params[0] as string);
    }
  }
  for (const p of included) {
    const problem = includePathProblem(p);
    if (problem !== null) throw new PolicySyntaxError(MAIN, 1, problem);
  }
  const files = new Map<string, string>();
  if (includeService) {
    files.set(MAIN, `!include-service * * ${SERVICE_FILE}`);
    files.set(SERVICE_FILE, line);
  } else {
    files.set(MAIN, line);
  }
  files.set(`${LEGACY_DIR}/.empty`, '');
  for (const p of included) files.set(p.startsWith('/') ? p : '/' + p, '');
  loadRulesFromFiles(files, MAIN, LEGACY_DIR);
  return warnings;
}

/**
 * Lint the contents of one file. Every line is checked independently and
 * every problem reported; a file that is not valid UTF-8 gets an error on
 * each line holding bad bytes, and the other lines are still checked.
 */
export function lintPolicyText(content: Uint8Array | string, file: string, opts: LintOptions = {}): LintDiagnostic[] {
  const out: LintDiagnostic[] = [];
  const bytes = typeof content === 'string' ? new TextEncoder().encode(content) : content;
  const fatal = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
  const lenient = new TextDecoder('utf-8', { ignoreBOM: true });
  const raw = byteLines(bytes);
  for (let i = 0; i < raw.length; i++) {
    const lineno = i + 1;
    const rawLine = raw[i] as Uint8Array;
    let decoded: string;
    try {
      decoded = fatal.decode(rawLine);
    } catch {
      const text = pyStrip(lenient.decode(rawLine));
      out.push({ file, line: lineno, severity: 'error', message: 'invalid UTF-8', text });
      continue;
    }
    const line = pyStrip(decoded);
    if (line.length === 0 || line.startsWith('#')) continue;
    try {
      for (const w of lintLine(line, opts.includeService ?? false)) {
        out.push({ file, line: lineno, severity: 'warning', message: w, text: line });
      }
    } catch (e) {
      if (!(e instanceof PolicySyntaxError)) throw e;
      out.push({ file, line: lineno, severity: 'error', message: e.detail, text: line });
    }
  }
  return out;
}

/**
 * A diagnostic as the reference prints it: `file:line: error: message`,
 * with `: <line>` appended when `showLine` is set. Warnings read
 * `file:line: warning: message`.
 */
export function formatDiagnostic(d: LintDiagnostic, showLine = false): string {
  const base = `${d.file}:${d.line}: ${d.severity}: ${d.message}`;
  return showLine && d.text !== '' ? `${base}: ${d.text}` : base;
}
