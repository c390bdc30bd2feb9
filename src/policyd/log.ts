/**
 * A minimal logger for the policy daemon and its tools: one line per event on
 * stderr, prefixed with the program name. Values that came from a client are
 * passed through {@link safe} first so that a hostile byte cannot forge a log
 * line or drive the terminal.
 */

export type LogLevel = 'debug' | 'info' | 'warning' | 'error';

export interface Logger {
  debug(msg: string): void;
  info(msg: string): void;
  warning(msg: string): void;
  error(msg: string): void;
  /** Whether messages of this level are written (callers may skip building them); absent: yes. */
  enabled?(level: LogLevel): boolean;
}

const ORDER: Record<LogLevel, number> = { debug: 0, info: 1, warning: 2, error: 3 };

/** A logger writing `prog: level: message` lines to a sink (stderr by default). */
export function createLogger(
  prog: string,
  opts: { level?: LogLevel; sink?: (line: string) => void } = {},
): Logger {
  const min = ORDER[opts.level ?? 'info'];
  const sink = opts.sink ?? ((line: string) => void process.stderr.write(line + '\n'));
  const at =
    (level: LogLevel) =>
    (msg: string): void => {
      if (ORDER[level] >= min) sink(`${prog}: ${level}: ${msg}`);
    };
  return {
    debug: at('debug'),
    info: at('info'),
    warning: at('warning'),
    error: at('error'),
    enabled: (level) => ORDER[level] >= min,
  };
}

/** A logger that drops everything (tests, benchmarks). */
export const silentLogger: Logger = { debug() {}, info() {}, warning() {}, error() {}, enabled: () => false };

/**
 * Printable, bounded rendering of untrusted text: control and non-ASCII
 * characters become `\xNN`, and anything past `max` characters is cut.
 */
export function safe(s: string | Uint8Array, max = 200): string {
  let out = '';
  const n = s.length;
  for (let i = 0; i < n && i < max; i++) {
    const c = typeof s === 'string' ? s.charCodeAt(i) : (s[i] as number);
    if (c >= 0x20 && c < 0x7f && c !== 0x5c) out += String.fromCharCode(c);
    else if (c === 0x5c) out += '\\\\';
    else out += '\\x' + (c & 0xff).toString(16).padStart(2, '0');
  }
  if (n > max) out += `...(${n} bytes)`;
  return out;
}
