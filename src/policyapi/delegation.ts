/**
 * Scoped delegation (ours, not in the reference): a policy file handed to a
 * management qube, which may then hold only rules within a scope.
 *
 * Declared by dom0 in `delegations.conf` in the policy directory (the API
 * cannot write it: its names have no dots). One delegation a line, `#`
 * starts a comment:
 *   FILE QUBE SCOPE [SCOPE...]
 * e.g. `50-mgmt-work mgmt @tag:created-by-mgmt`. Then:
 * - QUBE may change (Replace/Remove) only the files delegated to it, of
 *   either kind: being named here restricts it, whatever admin-policy-rwx
 *   grants;
 * - FILE (a `.policy` file) may only hold plain rules (no `!` directives:
 *   no includes, no compat) whose source and target are each one of the
 *   SCOPE tokens, literally, with no `target=` or `default_target=`
 *   redirection. This holds for every writer, dom0 included: the file is
 *   always within its scope. SCOPE tokens are `@tag:NAME` or `@type:NAME`.
 * So `@anyvm`, `*`, `@default`, `@dispvm:...`, `@adminvm`, plain and
 * `uuid:` names are refused as source or target.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PolicyAdminAccessException } from './errors.js';
import type { AccessCheck } from './admin.js';

export const DELEGATIONS_FILE = 'delegations.conf';

export interface Delegation {
  readonly file: string;
  readonly qube: string;
  readonly scope: readonly string[];
}

const NAME = /^[A-Za-z0-9_-]+$/;
const SCOPE = /^@(?:tag|type):[A-Za-z0-9_.-]+$/;

export class DelegationSyntaxError extends Error {
  override name = 'DelegationSyntaxError';
}

export function parseDelegations(text: string, file = DELEGATIONS_FILE): Delegation[] {
  const out: Delegation[] = [];
  text.split('\n').forEach((raw, i) => {
    const t = raw.replace(/#.*/, '').trim();
    if (t === '') return;
    const [name, qube, ...scope] = t.split(/\s+/);
    const where = `${file}:${i + 1}`;
    if (name === undefined || qube === undefined || scope.length === 0) throw new DelegationSyntaxError(`${where}: want FILE QUBE SCOPE [SCOPE...]`);
    if (!NAME.test(name)) throw new DelegationSyntaxError(`${where}: invalid file name ${name} (a .policy file, without the suffix)`);
    if (!/^[A-Za-z0-9_.-]+$/.test(qube) || qube === 'dom0') throw new DelegationSyntaxError(`${where}: invalid qube ${qube}`);
    for (const s of scope) if (!SCOPE.test(s)) throw new DelegationSyntaxError(`${where}: a scope is @tag:NAME or @type:NAME, not ${s}`);
    out.push({ file: name, qube, scope });
  });
  return out;
}

export function loadDelegations(policyDir: string): Delegation[] {
  const p = path.join(policyDir, DELEGATIONS_FILE);
  let text: string;
  try {
    text = fs.readFileSync(p, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  return parseDelegations(text, p);
}

/** Why a delegated file's content leaves its scope, or null when it does not. */
export function scopeViolation(content: string, scope: readonly string[]): string | null {
  const lines = content.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const t = (lines[i] as string).trim();
    if (t === '' || t.startsWith('#')) continue;
    const at = `line ${i + 1}`;
    if (t.startsWith('!')) return `${at}: a delegated file cannot hold directives (${t.split(/\s+/)[0]})`;
    const f = t.split(/\s+/);
    const [, , source, target, , ...params] = f;
    if (source === undefined || target === undefined) return `${at}: not a rule`;
    if (!scope.includes(source)) return `${at}: source ${source} is outside the scope ${scope.join(' ')}`;
    if (!scope.includes(target)) return `${at}: target ${target} is outside the scope ${scope.join(' ')}`;
    for (const p of params.join(' ').split(/[\s,]+/)) {
      if (/^(?:target|default_target)=/.test(p)) return `${at}: ${p.split('=')[0]}= cannot be used in a delegated file`;
    }
  }
  return null;
}

/** The check of every change against delegations.conf in `policyDir`. */
export function delegationCheck(policyDir: string): AccessCheck {
  return (c) => {
    let ds: Delegation[];
    try {
      ds = loadDelegations(policyDir);
    } catch (e) {
      throw new PolicyAdminAccessException(`Delegations cannot be read: ${e instanceof Error ? e.message : String(e)}`);
    }
    if (ds.length === 0) return;
    const mine = ds.filter((d) => d.qube === c.caller);
    if (mine.length > 0 && !(c.kind === 'policy' && mine.some((d) => d.file === c.name))) {
      throw new PolicyAdminAccessException(`${c.caller} may only change ${mine.map((d) => d.file).join(', ')}`);
    }
    if (c.kind !== 'policy' || c.content === null) return;
    const d = ds.find((x) => x.file === c.name && (mine.length === 0 || x.qube === c.caller));
    if (!d) return;
    const why = scopeViolation(c.content.toString('utf8'), d.scope);
    if (why) throw new PolicyAdminAccessException(`${c.name} is delegated to ${d.qube} within ${d.scope.join(' ')}: ${why}`);
  };
}
