/**
 * Qube specifications ("tokens") in policy columns and parameters, and how
 * they match and expand. Semantics follow the reference's VMToken classes
 * (qrexec/policy/parser.py); which token is legal where is a table here
 * instead of an inheritance tower.
 */
import { EvaluationCrash, PolicySyntaxError, pyRepr } from './errors.js';
import { isDom0, type SystemInfo } from './system-info.js';

export type TokenKind =
  | 'name' // a qube name or uuid:<uuid> (also dom0)
  | 'wildcard' // *
  | 'adminvm' // @adminvm
  | 'anyvm' // @anyvm
  | 'default' // @default
  | 'dispvm' // @dispvm
  | 'type' // @type:T
  | 'tag' // @tag:T
  | 'dispvm-template' // @dispvm:NAME
  | 'dispvm-tag'; // @dispvm:@tag:T

/** Where a token appears; decides which kinds are legal. */
export type TokenContext = 'source' | 'target' | 'redirect' | 'intendedtarget';

export interface Token {
  /** The token as written. */
  readonly text: string;
  readonly kind: TokenKind;
  /** The part after the prefix for prefixed kinds, else the text. */
  readonly value: string;
}

const ALLOWED: Record<TokenContext, ReadonlySet<TokenKind>> = {
  source: new Set(['wildcard', 'adminvm', 'anyvm', 'type', 'tag', 'dispvm-template', 'dispvm-tag']),
  target: new Set([
    'wildcard', 'adminvm', 'anyvm', 'default', 'type', 'tag', 'dispvm', 'dispvm-template', 'dispvm-tag',
  ]),
  redirect: new Set(['adminvm', 'dispvm', 'dispvm-template']),
  intendedtarget: new Set(['adminvm', 'default', 'dispvm', 'dispvm-template']),
};

// Order matters: it is the order in which the reference tries them.
const EXACT: ReadonlyArray<readonly [string, TokenKind]> = [
  ['*', 'wildcard'],
  ['@adminvm', 'adminvm'],
  ['@anyvm', 'anyvm'],
  ['@default', 'default'],
  ['@dispvm', 'dispvm'],
];
const PREFIX: ReadonlyArray<readonly [string, TokenKind]> = [
  ['@type:', 'type'],
  ['@tag:', 'tag'],
  ['@dispvm:', 'dispvm-template'],
  ['@dispvm:@tag:', 'dispvm-tag'],
];

/** Where a syntax error should point. */
export interface Position {
  readonly file: string;
  readonly line: number | null;
}

/**
 * Parse a token for a context.
 * @throws PolicySyntaxError for an empty or illegal token.
 */
export function parseToken(text: string, ctx: TokenContext, pos: Position): Token {
  if (text.length === 0) {
    throw new PolicySyntaxError(pos.file, pos.line ?? 0, `invalid empty ${ctx} token`);
  }
  if (!(text.startsWith('@') || text === '*')) return { text, kind: 'name', value: text };
  const allowed = ALLOWED[ctx];
  for (const [exact, kind] of EXACT) {
    if (text === exact && allowed.has(kind)) return { text, kind, value: text };
  }
  for (const [prefix, kind] of PREFIX) {
    if (!allowed.has(kind) || !text.startsWith(prefix)) continue;
    const value = text.slice(prefix.length);
    if (value.length === 0) {
      throw new PolicySyntaxError(pos.file, pos.line ?? 0, `invalid empty ${prefix} token: ${pyRepr(text)}`);
    }
    if (value.startsWith('@')) continue; // part of a longer prefix, or invalid
    return { text, kind, value };
  }
  throw new PolicySyntaxError(pos.file, pos.line ?? 0, `invalid ${ctx} token: ${pyRepr(text)}`);
}

/** A plain qube name as a token (used for the source of a request). */
export function nameToken(name: string): Token {
  return { text: name, kind: 'name', value: name };
}

/** Compare two qube designations, either of which may be `uuid:<uuid>`. */
export function matchStrings(info: SystemInfo, a: string, b: string): boolean {
  if (a.startsWith('uuid:')) {
    if (b.startsWith('uuid:')) return a === b;
    const d = info.domains.get(b);
    return d !== undefined && d.uuid !== null && a.slice(5) === d.uuid;
  }
  if (b.startsWith('uuid:')) {
    const d = info.domains.get(a);
    return d !== undefined && d.uuid !== null && b.slice(5) === d.uuid;
  }
  return a === b;
}

/**
 * The `@dispvm:NAME` a request from `source` to `@dispvm` goes to: the
 * source's default_dispvm, or null if it has none.
 */
export function dispvmTemplateFor(source: string, info: SystemInfo): Token | null {
  const d = info.domains.get(source);
  if (d === undefined || d.default_dispvm === null) return null;
  const text = '@dispvm:' + d.default_dispvm;
  try {
    return parseToken(text, 'intendedtarget', { file: '<system info>', line: null });
  } catch {
    throw new EvaluationCrash(`default_dispvm of ${source} is not a valid qube name`);
  }
}

/**
 * Does a rule's token match the request's `other` (a verified intended
 * target, or the source as a name token)? `source` is the request's source,
 * given when matching the target column.
 */
export function matchToken(tok: Token, other: Token, info: SystemInfo, source: string | null): boolean {
  switch (tok.kind) {
    case 'wildcard':
      return true;
    case 'adminvm':
      return isDom0(other.text);
    case 'anyvm':
      return !isDom0(other.text);
    case 'type': {
      const d = info.domains.get(other.text);
      return d !== undefined && d.type === tok.value;
    }
    case 'tag': {
      const d = info.domains.get(other.text);
      return d !== undefined && d.tags.includes(tok.value);
    }
    case 'dispvm':
      return tok.text === other.text;
    case 'dispvm-template': {
      if (other.kind === 'dispvm' && source !== null) {
        const t = dispvmTemplateFor(source, info);
        // the reference dereferences None here
        if (t === null) throw new EvaluationCrash('@dispvm:NAME rule against @dispvm with no default_dispvm');
        return matchStrings(info, tok.text, t.text);
      }
      if (other.kind !== 'dispvm-template') return false;
      return matchStrings(info, tok.value, other.value);
    }
    case 'dispvm-tag': {
      let o: Token | null = other;
      if (o.kind === 'dispvm') {
        if (source === null) throw new EvaluationCrash('@dispvm:@tag: match without a source');
        o = dispvmTemplateFor(source, info);
      }
      if (o === null || o.kind !== 'dispvm-template') return false;
      const d = info.domains.get(o.value);
      if (d === undefined) throw new EvaluationCrash(`unknown disposable template ${o.value}`);
      return d.template_for_dispvms && d.tags.includes(tok.value);
    }
    case 'name':
    case 'default':
      if (isDom0(tok.text)) return isDom0(other.text);
      return matchStrings(info, tok.text, other.text);
  }
}

/** `uuid:X` → X's name, `@dispvm:uuid:X` → `@dispvm:` + X's name; undefined if X is unknown. */
export function uuidToName(info: SystemInfo, s: string): string | undefined {
  if (s.startsWith('uuid:')) return info.domains.get(s)?.name;
  if (s.startsWith('@dispvm:uuid:')) {
    const d = info.domains.get(s.slice(8));
    return d === undefined ? undefined : '@dispvm:' + d.name;
  }
  return s;
}

/**
 * Every target a token in a rule could stand for, for the list of choices
 * of an `ask` (reference: VMToken.expand()). Values may still be uuid forms.
 */
export function expandToken(tok: Token, info: SystemInfo): string[] {
  const out: string[] = [];
  switch (tok.kind) {
    case 'name':
      if (info.domains.has(tok.text)) {
        const n = uuidToName(info, tok.text);
        if (n !== undefined) out.push(n);
      }
      return out;
    case 'adminvm':
    case 'dispvm':
      return [tok.text];
    case 'default':
      return out;
    case 'wildcard':
    case 'anyvm':
      for (const name of info.names) {
        const d = info.domains.get(name);
        if (d === undefined) continue;
        if (tok.kind === 'wildcard' || !isDom0(name)) out.push(name);
        if (d.template_for_dispvms) out.push('@dispvm:' + name);
      }
      out.push('@dispvm');
      return out;
    case 'type':
    case 'tag':
      for (const name of info.names) {
        const d = info.domains.get(name);
        if (d === undefined) continue;
        if (tok.kind === 'type' ? d.type === tok.value : d.tags.includes(tok.value)) out.push(name);
      }
      return out;
    case 'dispvm-template': {
      const d = info.domains.get(tok.value);
      if (d === undefined) throw new EvaluationCrash(`unknown disposable template ${tok.value}`);
      if (d.template_for_dispvms) {
        const n = uuidToName(info, tok.text);
        if (n !== undefined) out.push(n);
      }
      return out;
    }
    case 'dispvm-tag':
      for (const name of info.names) {
        const d = info.domains.get(name);
        if (d !== undefined && d.template_for_dispvms && d.tags.includes(tok.value)) out.push('@dispvm:' + name);
      }
      return out;
  }
}
