/**
 * One policy rule: a line of a new-format file, or of an old-format
 * (`!include-service`, 4.0 legacy) file. Parsing and validation follow the
 * reference's Rule class, including the order in which problems are found.
 */
import { PolicySyntaxError, pyRepr } from './errors.js';
import { parseToken, type Position, type Token } from './tokens.js';

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

const ACTION_PARAMS: Record<Action['type'], ReadonlySet<string>> = {
  deny: new Set(['notify']),
  allow: new Set(['target', 'user', 'notify', 'autostart']),
  ask: new Set(['target', 'default_target', 'user', 'notify', 'autostart']),
};

const ACTION_CLASS: Record<Action['type'], string> = { deny: 'Deny', allow: 'Allow', ask: 'Ask' };

function pyList(items: readonly string[]): string {
  return `[${items.map(pyRepr).join(', ')}]`;
}

/** Build a rule from its already-split columns. */
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
): Rule {
  const { service, argument } = validateServiceAndArgument(fields.service, fields.argument, pos);
  const source = parseToken(fields.source, 'source', pos);
  const target = parseToken(fields.target, 'target', pos);
  const type = fields.action;
  if (type !== 'allow' && type !== 'deny' && type !== 'ask') {
    throw new PolicySyntaxError(pos.file, pos.line, `invalid action: ${type}`);
  }
  const kw = new Map<string, string>();
  for (const param of fields.params) {
    const eq = param.indexOf('=');
    if (eq < 0) {
      throw new PolicySyntaxError(pos.file, pos.line, `invalid action parameter syntax: ${pyRepr(param)}`);
    }
    const key = param.slice(0, eq);
    if (kw.has(key)) throw new PolicySyntaxError(pos.file, pos.line, `parameter given twice: ${pyRepr(key)}`);
    kw.set(key, param.slice(eq + 1));
  }
  const bools = new Map<string, boolean>();
  for (const key of ['notify', 'autostart']) {
    const v = kw.get(key);
    if (v === undefined) continue;
    if (v !== 'yes' && v !== 'no') {
      throw new PolicySyntaxError(
        pos.file,
        pos.line,
        `${pyRepr(key)} is ${pyRepr(v)}, but can be only 'yes' or 'no'`,
      );
    }
    bools.set(key, v === 'yes');
  }
  for (const key of kw.keys()) {
    if (!ACTION_PARAMS[type].has(key)) {
      throw new PolicySyntaxError(
        pos.file,
        pos.line,
        `invalid parameters for action ${ACTION_CLASS[type]}: ${pyList(fields.params)}`,
      );
    }
  }
  let action: Action;
  if (type === 'deny') {
    action = { type, notify: bools.get('notify') ?? true };
  } else {
    const t = kw.get('target');
    const redirect = t === undefined ? null : parseToken(t, 'redirect', pos);
    const common = {
      target: redirect,
      user: kw.get('user') ?? null,
      notify: bools.get('notify') ?? false,
      autostart: bools.get('autostart') ?? true,
    };
    if (type === 'allow') {
      action = { type, ...common };
    } else {
      const d = kw.get('default_target');
      action = { type, ...common, defaultTarget: d === undefined ? null : parseToken(d, 'redirect', pos) };
    }
  }
  if (target.kind === 'default' && action.type === 'allow' && action.target === null) {
    throw new PolicySyntaxError(pos.file, pos.line, 'allow action for @default rule must specify target= option');
  }
  return { file: pos.file, line: pos.line, text, service, argument, source, target, action };
}

/** Fields of a line, split like Python's str.split() (see lines.ts). */
export function ruleFromFields(words: readonly string[], text: string, pos: Position): Rule {
  if (words.length < 5) throw new PolicySyntaxError(pos.file, pos.line, 'wrong number of fields');
  const [service, argument, source, target, action, ...params] = words as [string, string, string, string, string, ...string[]];
  return makeRule({ service, argument, source, target, action, params }, text, pos);
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
): Rule {
  if (words.length < 3) throw new PolicySyntaxError(pos.file, pos.line, 'wrong number of fields');
  const [source, target, ...rest] = words as [string, string, ...string[]];
  const split = rest.flatMap((w) => w.split(','));
  const [action, ...params] = split as [string, ...string[]];
  return makeRule(
    { service: service ?? '*', argument: argument ?? '*', source, target, action, params },
    text,
    pos,
  );
}
