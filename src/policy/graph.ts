/**
 * The policy as a graph: which qube may call which service on which target,
 * in Graphviz DOT, as the reference's qrexec-policy-graph draws it. Every
 * edge comes from the engine's own decision for one request (source x
 * target x service), never from matching rules here.
 */
import { PolicySyntaxError } from './errors.js';
import type { Policy } from './policy.js';
import { decide } from './report.js';
import type { Rule } from './rule.js';
import type { SystemInfo } from './system-info.js';
import { parseToken } from './tokens.js';

export interface GraphOptions {
  /** Also draw calls the user is asked about (orange). */
  readonly includeAsk?: boolean | undefined;
  /** Only calls from these qubes (default: every qube). */
  readonly sources?: readonly string[] | undefined;
  /** Only calls to these targets (as drawn: a qube, `@dispvm`, `@dispvm:NAME`, `@adminvm`, `@default`...). */
  readonly targets?: readonly string[] | undefined;
  /** Only these services: `SERVICE` (any argument) or `SERVICE+ARG`. */
  readonly services?: readonly string[] | undefined;
  /** No service names on edges; one edge per source and target. */
  readonly skipLabels?: boolean | undefined;
  /** Label edges with the service, the rule's argument and the whole action; asks included. */
  readonly fullOutput?: boolean | undefined;
}

/** Raised for an option value the graph cannot use. */
export class GraphOptionError extends Error {
  override name = 'GraphOptionError';
}

function byteOrder(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** DOT string contents: backslash and double quote escaped. */
function q(s: string): string {
  return '"' + s.replaceAll('\\', '\\\\').replaceAll('"', '\\"') + '"';
}

/** An action as the reference prints it in full output (`allow target=X user=Y`). */
function actionText(rule: Rule): string {
  const a = rule.action;
  if (a.type === 'deny') return 'deny';
  let s = a.type;
  if (a.target !== null) s += ` target=${a.target.text}`;
  if (a.type === 'ask' && a.defaultTarget !== null) s += ` default_target=${a.defaultTarget.text}`;
  if (a.user) s += ` user=${a.user}`;
  return s;
}

/** Check the option values (names of qubes, valid target tokens). */
export function validateGraphOptions(opts: GraphOptions, info: SystemInfo): void {
  for (const s of opts.sources ?? []) {
    if (!info.domains.has(s)) throw new GraphOptionError(`--source ${s} is not a valid call source (no such qube)`);
  }
  for (const t of opts.targets ?? []) {
    try {
      parseToken(t, 'redirect', { file: '<option>', line: null });
    } catch (e) {
      if (e instanceof PolicySyntaxError) throw new GraphOptionError(`--target ${t} is not a valid actual call target`);
      throw e;
    }
  }
}

/**
 * Draw the policy. Requests tried: every source (default: every qube) to
 * every qube, `@dispvm`, each `@dispvm:NAME` and `@default`, for each
 * service and argument some rule names (plus those asked for in
 * `services`). An allowed call is a red edge, an ask an orange one (with
 * includeAsk or fullOutput). The edge goes to the target the caller named,
 * or to the rule's `target=` when it has one. Unlike the reference, a call
 * of a qube to itself is not drawn: qrexec refuses it.
 */
export function policyGraph(policy: Policy, info: SystemInfo, opts: GraphOptions = {}): string {
  validateGraphOptions(opts, info);
  const names = [...info.names];
  const sources = opts.sources ? [...opts.sources] : names;
  const targets = [...names, '@dispvm'];
  for (const n of names) if (info.domains.get(n)?.template_for_dispvms) targets.push('@dispvm:' + n);
  targets.push('@default');

  // (service, argument) pairs; null service means `*`, null argument any
  const pairs = new Map<string, [string | null, string | null]>();
  const add = (s: string | null, a: string | null): void => {
    pairs.set(`${s ?? ''}\0${a ?? ''}`, [s, a]);
  };
  for (const r of policy.rules) add(r.service, r.argument);
  for (const s of opts.services ?? []) {
    const plus = s.indexOf('+');
    if (plus < 0) add(s, null);
    else add(s.slice(0, plus), s.slice(plus));
  }
  const ordered = [...pairs.values()].sort(
    (x, y) => byteOrder(x[0] ?? '', y[0] ?? '') || byteOrder(x[1] ?? '', y[1] ?? ''),
  );
  const wanted = opts.services ? new Set(opts.services) : null;
  const targetFilter = opts.targets ? new Set(opts.targets) : null;

  const seen = new Set<string>();
  const out: string[] = ['digraph g {'];
  const emit = (line: string): void => {
    if (seen.has(line)) return;
    seen.add(line);
    out.push(line);
  };
  const node = (n: string): string => {
    if (n.startsWith('@')) return `  ${q(n)} [style = dotted];`;
    const label = info.domains.get(n)?.label;
    return label ? `  ${q(n)} [color = ${q(label.replace('0x', '#'))}, penwidth = 3];` : `  ${q(n)} [penwidth = 3];`;
  };

  for (const [service, argument] of ordered) {
    if (wanted !== null && (service === null || (!wanted.has(service) && !wanted.has(service + (argument ?? ''))))) {
      continue;
    }
    // `*` rules alone: a service no specific rule names
    const svc = service ?? '*';
    const serviceAndArg = svc + (argument ?? '');
    for (const source of sources) {
      for (const target of targets) {
        const d = decide(policy, { source, intendedTarget: target, serviceAndArg }, info);
        if (d.result === 'deny') continue;
        if (d.result === 'ask' && !opts.includeAsk && !opts.fullOutput) continue;
        let label = opts.skipLabels ? '' : svc;
        if (!opts.skipLabels && opts.fullOutput && d.rule.argument !== null) label += d.rule.argument;
        const a = d.rule.action;
        const drawn = a.type !== 'deny' && a.target !== null ? a.target.text : d.request.intendedTarget;
        if (targetFilter !== null && !targetFilter.has(drawn)) continue;
        const from = d.request.source;
        if (drawn === from) continue; // loopback: refused by qrexec
        const color = d.result === 'ask' ? 'orange' : 'red';
        const lines = [node(from), node(drawn)];
        if (opts.fullOutput) label = `${label} ${actionText(d.rule)}`;
        lines.push(`  ${q(from)} -> ${q(drawn)} [label=${q(label)} color=${color}];`);
        for (const l of lines) emit(l);
      }
    }
  }
  out.push('}');
  return out.join('\n') + '\n';
}
