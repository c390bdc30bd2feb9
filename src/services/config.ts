/**
 * Per-service configuration files (QUBES_RPC_CONFIG_PATH), a small subset of
 * TOML read exactly as the reference's libqrexec/toml.c reads it: one
 * `key = value` per line, values `true`/`false`, decimal integers without
 * excess leading zeros, and single-quoted strings; `#` comments; no sections,
 * no double-quoted or multi-line strings. Unknown keys are logged and ignored;
 * anything malformed makes the whole file invalid (the call then fails with
 * exit status 125).
 */

/** What a service configuration file can set. */
export interface ServiceConfig {
  /** Wait for the GUI session (qubes.WaitForSession) before starting the service. */
  waitForSession: boolean;
  /** `force-user`: run the service as this user instead of the one dom0 named. */
  user: string | undefined;
  /** Send `SERVICE+ARG SOURCE\0` to socket services first (false: skip-service-descriptor). */
  sendServiceDescriptor: boolean;
  /** Socket services: end the call when the client closes its stdin (exit-on-client-eof). */
  exitOnClientEof: boolean;
  /** Socket services: end the call when the service closes its output (exit-on-service-eof). */
  exitOnServiceEof: boolean;
}

/** The configuration of a service without a configuration file. */
export function defaultServiceConfig(): ServiceConfig {
  return {
    waitForSession: false,
    user: undefined,
    sendServiceDescriptor: true,
    exitOnClientEof: false,
    exitOnServiceEof: false,
  };
}

/** A configuration file that cannot be used; `message` has the reference's `file:line: detail` form. */
export class ServiceConfigError extends Error {
  override name = 'ServiceConfigError';
  constructor(
    readonly file: string,
    readonly line: number,
    detail: string,
  ) {
    super(`${file}:${line}: ${detail}`);
  }
}

type TomlValue = { type: 'bool'; value: boolean } | { type: 'int'; value: bigint } | { type: 'string'; value: string };

const TYPE_NAMES = { bool: 'Boolean', int: 'Integer', string: 'String' } as const;

const isSpace = (c: number | undefined): boolean => c === 0x20 || c === 0x09;
const isKeyByte = (c: number | undefined): boolean =>
  c !== undefined &&
  ((c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c === 0x2e || c === 0x2d || c === 0x5f);
const isLetter = (c: number | undefined): boolean => c !== undefined && ((c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a));

/**
 * Parses the text of a configuration file. `log` receives the warnings the
 * reference logs without failing (unknown keys, missing final newline).
 * Throws ServiceConfigError for everything the reference rejects.
 */
export function parseServiceConfig(file: string, text: Buffer, log: (msg: string) => void = () => {}): ServiceConfig {
  const cfg = defaultServiceConfig();
  const seen = new Set<string>();
  let lineno = 0;
  let pos = 0;
  while (pos < text.length) {
    lineno++;
    let end = text.indexOf(0x0a, pos);
    let hadNewline = true;
    if (end < 0) {
      end = text.length;
      hadNewline = false;
    }
    let line = text.subarray(pos, end);
    pos = end + 1;
    if (line.includes(0)) throw new ServiceConfigError(file, lineno, 'NUL byte in line');
    if (hadNewline) {
      if (line.length > 0 && line[line.length - 1] === 0x0d) line = line.subarray(0, line.length - 1);
    } else {
      log(`${file}:${lineno}:missing newline at EOF`);
    }
    let len = line.length;
    while (len > 1 && isSpace(line[len - 1])) len--;
    line = line.subarray(0, len);
    const first = line[0];
    if (first === undefined || first === 0x23) continue; // blank or comment
    if (!isLetter(first)) {
      if (first === 0x5b) throw new ServiceConfigError(file, lineno, 'TOML section headers not supported');
      if (isSpace(first)) throw new ServiceConfigError(file, lineno, 'Unexpected whitespace at start of line');
      if (first > 0x20 && first <= 0x7e) {
        throw new ServiceConfigError(file, lineno, `Invalid character '${String.fromCharCode(first)}' at start of key`);
      }
      throw new ServiceConfigError(file, lineno, `Invalid byte 0x${first.toString(16)} at start of key`);
    }
    let i = 1;
    while (isKeyByte(line[i])) i++;
    const key = line.toString('latin1', 0, i);
    while (isSpace(line[i])) i++;
    if (line[i] !== 0x3d) throw new ServiceConfigError(file, lineno, "Missing '=' after key");
    i++;
    while (isSpace(line[i])) i++;
    const value = parseValue(file, lineno, line.subarray(i));
    const expect = (type: TomlValue['type'], what: string): void => {
      if (value.type !== type) throw new ServiceConfigError(file, lineno, `${TYPE_NAMES[value.type]} not valid for ${what}`);
    };
    const once = (): void => {
      if (seen.has(key)) throw new ServiceConfigError(file, lineno, `Key ${line.toString('latin1')} already seen`);
      seen.add(key);
    };
    switch (key) {
      case 'wait-for-session':
        once();
        if (value.type === 'int') {
          if (value.value >= 2n) {
            throw new ServiceConfigError(file, lineno, `Unsupported integer value ${value.value} for boolean`);
          }
          cfg.waitForSession = value.value === 1n;
        } else {
          expect('bool', 'wait-for-session');
          cfg.waitForSession = value.value as boolean;
        }
        break;
      case 'exit-on-client-eof':
        once();
        expect('bool', 'exit-on-client-eof');
        cfg.exitOnClientEof = value.value as boolean;
        break;
      case 'exit-on-service-eof':
        once();
        expect('bool', 'exit-on-service-eof');
        cfg.exitOnServiceEof = value.value as boolean;
        break;
      case 'skip-service-descriptor':
        once();
        expect('bool', 'skip-service-descriptor');
        cfg.sendServiceDescriptor = !(value.value as boolean);
        break;
      case 'force-user':
        once();
        expect('string', 'user name or user ID');
        cfg.user = value.value as string;
        break;
      default:
        log(`${file}:${lineno}: Unsupported key ${key}`);
    }
  }
  return cfg;
}

function parseValue(file: string, lineno: number, v: Buffer): TomlValue {
  const c = v[0];
  let result: TomlValue;
  let end: number;
  if (c === 0x30) {
    result = { type: 'int', value: 0n };
    end = 1;
  } else if (c !== undefined && c >= 0x31 && c <= 0x39) {
    end = 1;
    while (end < v.length && (v[end] as number) >= 0x30 && (v[end] as number) <= 0x39) end++;
    const n = BigInt(v.toString('latin1', 0, end));
    if (n > 0xffffffffffffffffn) throw new ServiceConfigError(file, lineno, 'strtoull(): Numerical result out of range');
    result = { type: 'int', value: n };
  } else if (c === 0x74) {
    if (v.toString('latin1', 0, 4) !== 'true') throw new ServiceConfigError(file, lineno, 'Unexpected unquoted string');
    result = { type: 'bool', value: true };
    end = 4;
  } else if (c === 0x66) {
    if (v.toString('latin1', 0, 5) !== 'false') throw new ServiceConfigError(file, lineno, 'Unexpected unquoted string');
    result = { type: 'bool', value: false };
    end = 5;
  } else if (c === 0x22) {
    throw new ServiceConfigError(file, lineno, 'Double-quoted strings not implemented, use single quotes');
  } else if (c === 0x27) {
    if (v[1] === 0x27 && v[2] === 0x27) throw new ServiceConfigError(file, lineno, 'Triple-quoted strings not implemented');
    const close = v.indexOf(0x27, 1);
    if (close < 0) throw new ServiceConfigError(file, lineno, 'Unterminated quoted string');
    result = { type: 'string', value: v.toString('utf8', 1, close) };
    end = close + 1;
  } else if (c !== undefined && c >= 0x20 && c <= 0x7e) {
    throw new ServiceConfigError(file, lineno, `Unsupported start of value: '${String.fromCharCode(c)}'`);
  } else {
    throw new ServiceConfigError(file, lineno, `Unsupproted byte at start of value: ${c ?? 0}`);
  }
  while (isSpace(v[end])) end++;
  if (end < v.length && v[end] !== 0x23) {
    throw new ServiceConfigError(
      file,
      lineno,
      result.type === 'int'
        ? 'Unexpected junk after integer; note that only decimal integers with no excess leading zeros are supported'
        : 'Unexpected junk after value',
    );
  }
  return result;
}

/**
 * The option that forbids `force-user` in the same file, if any: the
 * reference refuses an explicit user together with any of these.
 */
export function forceUserClash(config: ServiceConfig): string | undefined {
  if (config.user === undefined) return undefined;
  if (!config.sendServiceDescriptor) return 'skip-service-descriptor';
  if (config.exitOnClientEof) return 'exit-on-client-eof';
  if (config.exitOnServiceEof) return 'exit-on-service-eof';
  return undefined;
}
