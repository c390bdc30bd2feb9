/**
 * Impact diff (ours, not in the reference): which decisions a change of one
 * file would change, for the qubes that exist now.
 *
 * A request's decision depends only on the rules whose service and argument
 * columns match it (first match, and for `ask` the targets collected from
 * the same rules). So only requests matched by a rule of the changed file —
 * in its old or its new version — can change: the services those rules name
 * (all services when one says `*`) and their arguments (all arguments the
 * policy names, plus "any other", when one says `*`). Those requests are
 * evaluated with both policies, every source qube × every target (each qube,
 * `@default`, `@adminvm`, `@dispvm` and `@dispvm:` each DispVM template).
 * Pure: no I/O.
 */
import { decide, decisionToJson, isDom0, type Policy, type Rule, type SystemInfo } from '../policy/index.js';

/** Stand-ins for "a service / an argument no rule names" (listed as `*`). */
export const OTHER_SERVICE = 'qrexec-ts.AnyOtherService';
export const OTHER_ARGUMENT = '+qrexec-ts-any-other-argument';

export interface DecisionChange {
  readonly source: string;
  readonly target: string;
  readonly old: string;
  readonly new: string;
}

export interface ServiceDiff {
  /** The service, `*` for any service no rule names. */
  readonly service: string;
  /** `+ARG`, `+` for none, `*` for any argument no rule names. */
  readonly argument: string;
  readonly count: number;
  readonly changes: readonly DecisionChange[];
}

export interface ImpactDiff {
  readonly total: number;
  readonly requestsEvaluated: number;
  readonly services: readonly ServiceDiff[];
}

/** A decision as one comparable line: `allow target=work user=... autostart=no notify=no`. */
export function summarize(policy: Policy, source: string, target: string, serviceAndArg: string, info: SystemInfo): string {
  const j = decisionToJson(decide(policy, { source, intendedTarget: target, serviceAndArg }, info), info);
  switch (j.result) {
    case 'allow':
      return `allow target=${j.target}${j.user !== null ? ` user=${j.user}` : ''}${j.autostart ? '' : ' autostart=no'}${j.notify ? ' notify=yes' : ''}`;
    case 'ask':
      return `ask targets=${j.targets_for_ask.join(',')}${j.default_target !== null ? ` default_target=${j.default_target}` : ''}${j.user !== null ? ` user=${j.user}` : ''}${j.autostart ? '' : ' autostart=no'}${j.notify ? ' notify=yes' : ''}`;
    case 'deny':
      return `deny${j.notify ? '' : ' notify=no'}`;
  }
}

/**
 * The (service, argument) pairs a set of rules can affect, given every rule
 * of both policies. An argument named by a `*`-service rule is an argument
 * of every service.
 */
export function affectedRequests(touched: readonly Rule[], all: readonly Rule[]): { service: string; argument: string }[] {
  const argsOf = new Map<string, Set<string>>();
  const globalArgs = new Set<string>();
  for (const r of all) {
    if (r.service === null) {
      if (r.argument !== null) globalArgs.add(r.argument);
      continue;
    }
    let s = argsOf.get(r.service);
    if (!s) argsOf.set(r.service, (s = new Set()));
    if (r.argument !== null) s.add(r.argument);
  }
  const out = new Map<string, Set<string>>();
  const add = (service: string, args: Iterable<string>): void => {
    let s = out.get(service);
    if (!s) out.set(service, (s = new Set()));
    for (const a of args) s.add(a);
  };
  const everyArg = (service: string): string[] => [...(argsOf.get(service) ?? []), ...globalArgs, '+', OTHER_ARGUMENT];
  const services = [...argsOf.keys(), OTHER_SERVICE];
  for (const r of touched) {
    for (const service of r.service === null ? services : [r.service]) add(service, r.argument === null ? everyArg(service) : [r.argument]);
  }
  return [...out].flatMap(([service, args]) => [...args].map((argument) => ({ service, argument })));
}

/** Every target a request can name, for the qubes of `info`. */
export function targetsOf(info: SystemInfo): string[] {
  const t = info.names.filter((n) => !isDom0(n));
  t.push('@default', '@adminvm', '@dispvm');
  for (const n of info.names) if (info.domains.get(n)?.template_for_dispvms) t.push(`@dispvm:${n}`);
  return t;
}

/**
 * The decisions that differ between `oldPolicy` and `newPolicy`, where
 * `touched` are the rules of the changed file in both versions.
 */
export function impactDiff(oldPolicy: Policy, newPolicy: Policy, touched: readonly Rule[], info: SystemInfo): ImpactDiff {
  const sources = info.names.filter((n) => !isDom0(n));
  const targets = targetsOf(info);
  const groups: ServiceDiff[] = [];
  let total = 0;
  let evaluated = 0;
  for (const { service, argument } of affectedRequests(touched, [...oldPolicy.rules, ...newPolicy.rules])) {
    const sa = argument === '+' ? service : `${service}${argument}`;
    const changes: DecisionChange[] = [];
    for (const source of sources) {
      for (const target of targets) {
        evaluated++;
        const o = summarize(oldPolicy, source, target, sa, info);
        const n = summarize(newPolicy, source, target, sa, info);
        if (o !== n) changes.push({ source, target, old: o, new: n });
      }
    }
    if (changes.length === 0) continue;
    total += changes.length;
    groups.push({
      service: service === OTHER_SERVICE ? '*' : service,
      argument: argument === OTHER_ARGUMENT ? '*' : argument,
      count: changes.length,
      changes,
    });
  }
  groups.sort((a, b) => (a.service + a.argument < b.service + b.argument ? -1 : a.service + a.argument > b.service + b.argument ? 1 : 0));
  return { total, requestsEvaluated: evaluated, services: groups };
}

/** The diff as text: one header a service and argument, one line a change, then the total. */
export function formatImpactDiff(d: ImpactDiff): string {
  const out: string[] = [];
  for (const g of d.services) {
    out.push(`${g.service} ${g.argument}: ${g.count} decision${g.count === 1 ? '' : 's'} change${g.count === 1 ? 's' : ''}`);
    for (const c of g.changes) out.push(`  ${c.source} -> ${c.target}: ${c.old} => ${c.new}`);
  }
  out.push(`${d.total} decision${d.total === 1 ? '' : 's'} change${d.total === 1 ? 's' : ''}`);
  return out.join('\n') + '\n';
}
