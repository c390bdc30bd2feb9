/**
 * Text handling exactly like the reference's Python: universal newlines
 * (`\n`, `\r\n`, lone `\r`) and str.strip()/str.split() whitespace, which
 * includes \x1c-\x1f and \x85 but not U+FEFF (unlike JavaScript's \s).
 */

const WS_CLASS = '\\t\\n\\v\\f\\r \\x1c-\\x1f\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const WS_RUN = new RegExp(`[${WS_CLASS}]+`);
const STRIP = new RegExp(`^[${WS_CLASS}]+|[${WS_CLASS}]+$`, 'g');
const LINE_END = /\r\n|\r|\n/;

/** Python str.strip(). */
export function pyStrip(s: string): string {
  return s.replace(STRIP, '');
}

/** Python str.split() with no arguments, on an already stripped string. */
export function pySplitStripped(s: string): string[] {
  return s.length === 0 ? [] : s.split(WS_RUN);
}

/** Python str.split() with no arguments. */
export function pySplit(s: string): string[] {
  return pySplitStripped(pyStrip(s));
}

/** Lines as Python's text-mode iteration yields them (without terminators). */
export function splitLines(text: string): string[] {
  const lines = text.split(LINE_END);
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  return lines;
}

/**
 * Decode a policy file. Invalid UTF-8 is a syntax error at the line holding
 * the first bad byte (the reference dies with an exception there).
 */
export function decodeText(bytes: Uint8Array): { text: string } | { badLine: number } {
  try {
    return { text: new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes) };
  } catch {
    // find the first bad byte: the longest valid prefix
    let lo = 0;
    let hi = bytes.length;
    const dec = (n: number): boolean => {
      try {
        new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(0, n), { stream: true });
        return true;
      } catch {
        return false;
      }
    };
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (dec(mid)) lo = mid;
      else hi = mid - 1;
    }
    const prefix = new TextDecoder('utf-8').decode(bytes.subarray(0, lo));
    return { badLine: prefix.split(LINE_END).length };
  }
}
