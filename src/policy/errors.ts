/**
 * Errors of the policy engine.
 *
 * They mirror the reference's exception classes (qrexec/exc.py): a syntax
 * error carries the file and line of the offending text and prints as
 * `file:line: detail`; an access denial carries whether the user should be
 * notified.
 */

/** A policy that cannot be loaded. Loading stops at the first one (fail closed). */
export class PolicySyntaxError extends SyntaxError {
  override name = 'PolicySyntaxError';
  /** Path of the file holding the offending line (as the loader saw it). */
  readonly file: string;
  /** 1-based line number, or null when the problem is the file itself. */
  readonly line: number | null;
  /** The message without the `file:line: ` prefix. */
  readonly detail: string;

  constructor(file: string, line: number | null, detail: string) {
    super(line === null ? `${file}: ${detail}` : `${file}:${line}: ${detail}`);
    this.file = file;
    this.line = line;
    this.detail = detail;
  }
}

/**
 * A condition under which the reference engine raises an unexpected
 * exception (KeyError, AttributeError...) while evaluating. The qrexec
 * policy daemon then answers `result=deny` without notifying; we do the same,
 * deliberately, instead of guessing a better answer.
 */
export class EvaluationCrash extends Error {
  override name = 'EvaluationCrash';
}

/** Python's repr() of a str, for messages that quote values like the reference does. */
export function pyRepr(s: string): string {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of s) {
    const c = ch.codePointAt(0) ?? 0;
    if (ch === '\\') out += '\\\\';
    else if (ch === quote) out += '\\' + ch;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (c < 0x20 || c === 0x7f) out += '\\x' + c.toString(16).padStart(2, '0');
    else out += ch;
  }
  return out + quote;
}
