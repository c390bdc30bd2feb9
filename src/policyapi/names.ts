/**
 * The Policy API's pure rules: argument charset, file names, tokens and the
 * services' signatures (reference qrexec/policy/admin.py). No I/O.
 */
import { PolicyAdminInvalidFileNameException, PolicyAdminProtocolException, PolicyAdminTokenException } from './errors.js';

/** Letters, digits, dot, plus, hyphen and underscore (reference RPCNAME_ALLOWED_CHARSET). */
const RPCNAME_CHARS = /^[A-Za-z0-9.+\-_]*$/;
/** Policy file names: no dots (reference `^[\w-]+$`; after the charset check, ASCII only). */
const FILE_NAME = /^[A-Za-z0-9_-]+$/;

export type Kind = 'policy' | 'include';

/** What a service takes, and which file kind it works on. */
export interface Method {
  readonly op: 'List' | 'Get' | 'Replace' | 'Remove' | 'GetFiles';
  readonly kind: Kind;
  readonly noArg: boolean;
  readonly noPayload: boolean;
  /** Changes the policy (needs admin-policy-rwx). */
  readonly writes: boolean;
}

const m = (op: Method['op'], kind: Kind, noArg: boolean, noPayload: boolean): Method => ({
  op,
  kind,
  noArg,
  noPayload,
  writes: op === 'Replace' || op === 'Remove',
});

/** The reference's nine services. */
export const METHODS: ReadonlyMap<string, Method> = new Map([
  ['policy.List', m('List', 'policy', true, true)],
  ['policy.include.List', m('List', 'include', true, true)],
  ['policy.Get', m('Get', 'policy', false, true)],
  ['policy.include.Get', m('Get', 'include', false, true)],
  ['policy.Replace', m('Replace', 'policy', false, false)],
  ['policy.include.Replace', m('Replace', 'include', false, false)],
  ['policy.Remove', m('Remove', 'policy', false, false)],
  ['policy.include.Remove', m('Remove', 'include', false, false)],
  ['policy.GetFiles', m('GetFiles', 'policy', false, true)],
]);

/** Checks the argument's characters (reference handle_request). */
export function checkArgument(arg: string): void {
  if (!RPCNAME_CHARS.test(arg)) {
    throw new PolicyAdminProtocolException(
      `Invalid argument: "${arg}"\nValid characters are letters, numbers, dot, plus, hyphen and underline`,
    );
  }
}

/** Checks a file name (reference _get_path). */
export function checkFileName(arg: string): void {
  if (!FILE_NAME.test(arg)) {
    throw new PolicyAdminInvalidFileNameException(
      `Invalid policy file name: ${arg}\nNames must contain only alphanumeric characters, underscore and hyphen.`,
    );
  }
}

/** A token: `any`, `new` or `sha256:<hex>`. */
export type Token = { readonly kind: 'any' } | { readonly kind: 'new' } | { readonly kind: 'sha256'; readonly text: string };

export function parseToken(raw: string): Token {
  if (raw === 'any') return { kind: 'any' };
  if (raw === 'new') return { kind: 'new' };
  if (!raw.startsWith('sha256:')) throw new PolicyAdminProtocolException('Unrecognized token');
  return { kind: 'sha256', text: raw };
}

/**
 * Checks a token against the file's current token (null: no such file),
 * as the reference's _check_token.
 */
export function checkToken(token: Token, current: string | null): void {
  if (token.kind === 'any') return;
  if (token.kind === 'new') {
    if (current !== null) throw new PolicyAdminTokenException("File exists but token is 'new'");
    return;
  }
  if (current === null) throw new PolicyAdminTokenException("File doesn't exist, but token isn't 'new'");
  if (current !== token.text) throw new PolicyAdminTokenException('Token mismatch');
}

/** `Replace`'s payload: the token line, then the content. */
export function splitReplacePayload(payload: Uint8Array): { token: Token; content: Uint8Array } {
  const nl = payload.indexOf(0x0a);
  if (nl < 0) throw new PolicyAdminProtocolException('Payload needs to include first line with token');
  return { token: parseToken(new TextDecoder('latin1').decode(payload.subarray(0, nl))), content: payload.subarray(nl + 1) };
}

/** Reference GetFiles' check of the service name: non-empty, no `+`. */
export function checkServiceName(arg: string): void {
  if (arg === '') throw new PolicyAdminProtocolException('Service cannot be empty.');
  const bad = [...new Set([...arg].filter((c) => !/[A-Za-z0-9\-._]/.test(c)))].sort();
  if (bad.length > 0) {
    // Python's repr of the tuple of characters, as the reference prints it
    const repr = (s: string): string => `'${s}'`;
    const tuple = bad.length === 1 ? `(${repr(bad[0] as string)},)` : `(${bad.map(repr).join(', ')})`;
    throw new PolicyAdminProtocolException(`Service ${repr(arg)} contains invalid characters: ${tuple}`);
  }
}
