/**
 * One policy rule: a line of a new-format file, or of an old-format
 * (`!include-service`, 4.0 legacy) file. Parsing and validation follow the
 * reference's Rule class, including the order in which problems are found.
 */
import { PolicySyntaxError, pyRepr } from './errors.js';
import { parseToken, type Position, type Token, type TokenContext } from './tokens.js';

/** Characters legal in service names and arguments (reference RPCNAME_ALLOWED_CHARSET). */
const RPCNAME_CHAR = /^[A-Za-z0-9+\-._]*$/;

export interface DenyAction {
  readonly type: 'deny';
  readonly notify: boolean;
}
export interface AllowAction {
  readonly type: 'allow';
  /** `target=` redirect, if any. */
  readonly target: Token | null;
  /** `user=` as written ('' when given empty), null when absent. */
  readonly user: string | null;
  readonly notify: boolean;
  readonly autostart: boolean;
}
export interface AskAction {
  readonly type: 'ask';
  readonly target: Token | null;
  readonly defaultTarget: Token | null;
  readonly user: string | null;
  readonly notify: boolean;
  readonly autostart: boolean;
}
export type Action = DenyAction | AllowAction | AskAction;

export interface Rule {
  /** Path of the file the rule came from. */
  readonly file: string;
  /** 1-based line; null for the implicit denies `!compat-4.0` adds. */
  readonly line: number | null;
  /** The line as written (stripped). */
  readonly text: string;
  /** null means any service (`*`). */
  readonly service: string | null;
  /** null means any argument (`*`); else starts with `+`. */
  readonly argument: string | null;
  readonly source: Token;
  readonly target: Token;
  readonly action: Action;
}

function invalidChars(s: string, allowPlus: boolean): string[] {
  const bad = new Set<string>();
  for (const ch of s) {
    if (!/[A-Za-z0-9\-._]/.test(ch) && !(allowPlus && ch === '+')) bad.add(ch);
  }
  return [...bad].sort();
}

function pyTuple(items: string[]): string {
  return items.length === 1 ? `(${pyRepr(items[0] ?? '')},)` : `(${items.map(pyRepr).join(', ')})`;
}

/**
 * Validate the service and argument columns (or `!include-service`
 * parameters). `*` becomes null.
 */
export function validateServiceAndArgument(
  service: string | null,
  argument: string | null,
  pos: Position,
): { service: string | null; argument: string | null } {
  const svc = service === '*' ? null : service;
  if (svc !== null && !(RPCNAME_CHAR.test(svc) && !svc.includes('+'))) {
    throw new PolicySyntaxError(
      pos.file,
      pos.line,
      `service ${pyRepr(svc)} contains invalid characters: ${pyTuple(invalidChars(svc, false))}`,
    );
  }
  const arg = argument === '*' ? null : argument;
  if (arg !== null) {
    if (!RPCNAME_CHAR.test(arg)) {
      throw new PolicySyntaxError(
        pos.file,
        pos.line,
        `argument ${pyRepr(arg)} contains invalid characters: ${pyTuple(invalidChars(arg, true))}`,
      );
    }
    if (!arg.startsWith('+')) {
      throw new PolicySyntaxError(pos.file, pos.line, `argument ${pyRepr(arg)} does not start with +`);
    }
    if (svc === null) throw new PolicySyntaxError(pos.file, pos.line, 'only * argument allowed for * service');
  }
  return { service: svc, argument: arg };
}

const ACTION_CLASS: Record<Action['type'], string> = { deny: 'Deny', allow: 'Allow', ask: 'Ask' };

function pyList(items: readonly string[]): string {
  return `[${items.map(pyRepr).join(', ')}]`;
}

/** Token objects shared within one load, per context: identical tokens are one object. */
export type TokenCache = Record<TokenContext, Map<string, Token>>;

export function newTokenCache(): TokenCache {
  return { source: new Map(), target: new Map(), redirect: new Map(), intendedtarget: new Map() };
}

function token(text: string, ctx: TokenContext, pos: Position, cache: TokenCache | undefined): Token {
  if (!cache) return parseToken(text, ctx, pos);
  const m = cache[ctx];
  let t = m.get(text);
  if (!t) m.set(text, (t = parseToken(text, ctx, pos)));
  return t;
}

function yesNo(key: string, v: string | undefined, pos: Position): boolean | undefined {
  if (v === undefined) return undefined;
  if (v === 'yes') return true;
  if (v === 'no') return false;
  throw new PolicySyntaxError(pos.file, pos.line, `${pyRepr(key)} is ${pyRepr(v)}, but can be only 'yes' or 'no'`);
}

/** Build a rule from its already-split columns, checking in the reference's order. */
export function makeRule(
  fields: {
    service: string | null;
    argument: string | null;
    source: string;
    target: string;
    action: string;
    params: readonly string[];
  },
  text: string,
  pos: Position,
  cache?: TokenCache,
): Rule {
  const { service, argument } = validateServiceAndArgument(fields.service, fields.argument, pos);
  const source = token(fields.source, 'source', pos, cache);
  const target = token(fields.target, 'target', pos, cache);
  const type = fields.action;
  if (type !== 'allow' && type !== 'deny' && type !== 'ask') {
    throw new PolicySyntaxError(pos.file, pos.line, `invalid action: ${type}`);
  }
  let pTarget: string | undefined;
  let pDefault: string | undefined;
  let pUser: string | undefined;
  let pNotify: string | undefined;
  let pAutostart: string | undefined;
  let unknown = false;
  const seen: string[] = [];
  for (const param of fields.params) {
    const eq = param.indexOf('=');
    if (eq < 0) {
      throw new PolicySyntaxError(pos.file, pos.line, `invalid action parameter syntax: ${pyRepr(param)}`);
    }
    const key = param.slice(0, eq);
    if (seen.includes(key)) throw new PolicySyntaxError(pos.file, pos.line, `parameter given twice: ${pyRepr(key)}`);
    seen.push(key);
    const value = param.slice(eq + 1);
    if (key === 'notify') pNotify = value;
    else if (key === 'autostart') pAutostart = value;
    else if (key === 'target' && type !== 'deny') pTarget = value;
    else if (key === 'user' && type !== 'deny') pUser = value;
    else if (key === 'default_target' && type === 'ask') pDefault = value;
    else unknown = true;
  }
  const notify = yesNo('notify', pNotify, pos);
  const autostart = yesNo('autostart', pAutostart, pos);
  if (unknown || (type === 'deny' && autostart !== undefined)) {
    throw new PolicySyntaxError(
      pos.file,
      pos.line,
      `invalid parameters for action ${ACTION_CLASS[type]}: ${pyList(fields.params)}`,
    );
  }
  let action: Action;
  if (type === 'deny') {
    action = { type, notify: notify ?? true };
  } else {
    const redirect = pTarget === undefined ? null : token(pTarget, 'redirect', pos, cache);
    const user = pUser ?? null;
    if (type === 'allow') {
      action = { type, target: redirect, user, notify: notify ?? false, autostart: autostart ?? true };
    } else {
      const defaultTarget = pDefault === undefined ? null : token(pDefault, 'redirect', pos, cache);
      action = { type, target: redirect, defaultTarget, user, notify: notify ?? false, autostart: autostart ?? true };
    }
  }
  if (target.kind === 'default' && action.type === 'allow' && action.target === null) {
    throw new PolicySyntaxError(pos.file, pos.line, 'allow action for @default rule must specify target= option');
  }
  return { file: pos.file, line: pos.line, text, service, argument, source, target, action };
}

/** Fields of a line, split like Python's str.split() (see lines.ts). */
export function ruleFromFields(words: readonly string[], text: string, pos: Position, cache?: TokenCache): Rule {
  if (words.length < 5) throw new PolicySyntaxError(pos.file, pos.line, 'wrong number of fields');
  const [service, argument, source, target, action] = words as [string, string, string, string, string];
  return makeRule({ service, argument, source, target, action, params: words.slice(5) }, text, pos, cache);
}

/**
 * A line of an old-format file for a given service and argument:
 * `SOURCE TARGET ACTION[,PARAM...]` (commas already turned into spaces).
 */
export function ruleFromServiceFields(
  service: string | null,
  argument: string | null,
  words: readonly string[],
  text: string,
  pos: Position,
  cache?: TokenCache,
): Rule {
  if (words.length < 3) throw new PolicySyntaxError(pos.file, pos.line, 'wrong number of fields');
  const [source, target, ...rest] = words as [string, string, ...string[]];
  const split = rest.flatMap((w) => w.split(','));
  const [action, ...params] = split as [string, ...string[]];
  return makeRule(
    { service: service ?? '*', argument: argument ?? '*', source, target, action, params },
    text,
    pos,
    cache,
  );
}
