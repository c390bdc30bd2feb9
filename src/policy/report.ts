/**
 * Decisions as the batch-evaluation contract prints them (see
 * qrexec-policy-eval in the README): one JSON object per request.
 */
import { basename } from './paths.js';
import { finalizeAllow, isRemoteTarget, type Decision, type Policy, type PolicyRequest } from './policy.js';
import type { Rule } from './rule.js';
import { isDom0, type SystemInfo } from './system-info.js';

export type DecisionJson =
  | { result: 'allow'; target: string; user: string | null; autostart: boolean; notify: boolean; rule: string }
  | {
      result: 'ask';
      targets_for_ask: string[];
      default_target: string | null;
      user: string | null;
      autostart: boolean;
      notify: boolean;
      rule: string;
    }
  | { result: 'deny'; notify: boolean; rule: string | null };

/** `<basename>:<line>` of a rule (line 0 for the implicit compat denies). */
export function ruleLabel(rule: Rule): string {
  return `${basename(rule.file)}:${rule.line ?? 0}`;
}

/**
 * The final outcome of a request: the policy decision, with an allow
 * carried through the checks the reference makes when it executes it
 * (loopback, RemoteVM relay).
 */
export function decide(policy: Policy, req: PolicyRequest, info: SystemInfo): Decision {
  const d = policy.evaluate(req, info);
  return d.result === 'allow' ? finalizeAllow(d, info) : d;
}

export function decisionToJson(d: Decision, info: SystemInfo): DecisionJson {
  switch (d.result) {
    case 'allow':
      return {
        result: 'allow',
        target: isDom0(d.target) ? 'dom0' : d.target,
        user: d.user === null || d.user === '' || isRemoteTarget(d.target, info) ? null : d.user,
        autostart: d.autostart,
        notify: d.notify,
        rule: ruleLabel(d.rule),
      };
    case 'ask':
      return {
        result: 'ask',
        targets_for_ask: [...d.targetsForAsk],
        default_target: d.defaultTarget,
        user: d.user === null || d.user === '' ? null : d.user,
        autostart: d.autostart,
        notify: d.notify,
        rule: ruleLabel(d.rule),
      };
    case 'deny':
      return { result: 'deny', notify: d.notify, rule: d.rule ? ruleLabel(d.rule) : null };
  }
}

/** A request line of the batch format; throws on anything malformed. */
export function parseRequestJson(line: string): PolicyRequest {
  const o: unknown = JSON.parse(line);
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new Error('request: expected a JSON object');
  const r = o as Record<string, unknown>;
  const str = (k: string, optional = false): string | undefined => {
    const v = r[k];
    if (v === undefined && optional) return undefined;
    if (typeof v !== 'string') throw new Error(`request: "${k}" must be a string`);
    return v;
  };
  return {
    source: str('source') as string,
    intendedTarget: str('intended_target') as string,
    serviceAndArg: str('service_and_arg') as string,
    requestedSource: str('requested_source', true),
  };
}
