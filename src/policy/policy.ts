/**
 * A loaded policy and its evaluation: first matching rule wins; allow, ask
 * and deny resolve exactly as the reference's Allow/Ask/Deny.evaluate() and
 * AllowResolution.execute() do. Pure: no I/O.
 */
import { EvaluationCrash, PolicySyntaxError } from './errors.js';
import type { AllowAction, AskAction, Rule } from './rule.js';
import { isDom0, type DomainInfo, type SystemInfo } from './system-info.js';
import {
  dispvmTemplateFor,
  expandToken,
  matchToken,
  nameToken,
  parseToken,
  uuidToName,
  type Token,
} from './tokens.js';

/** A qrexec call to decide, as the qrexec daemon describes it. */
export interface PolicyRequest {
  /** The calling qube (the owner of the channel), maybe as `uuid:…`. */
  readonly source: string;
  /** The target the caller asked for; '' or an unknown qube means `@default`. */
  readonly intendedTarget: string;
  /** `SERVICE+ARGUMENT`, or `SERVICE` alone (argument `+`). */
  readonly serviceAndArg: string;
  /** A RemoteVM the source (its relay) calls on behalf of. */
  readonly requestedSource?: string | undefined;
}

/** The request after validation, as every decision reports it. */
export interface ResolvedRequest {
  readonly service: string;
  /** Starts with `+`. */
  readonly argument: string;
  /** The source the policy saw (the requested source for relayed calls). */
  readonly source: string;
  /** The verified intended target token text, e.g. `@default`. */
  readonly intendedTarget: string;
  /** The relay that made the call, when requestedSource was given. */
  readonly relayvm: string | null;
  readonly requestedSource: string | null;
}

/** The rule a decision came from. */
export interface RuleRef {
  readonly file: string;
  readonly line: number | null;
  readonly text: string;
}

export interface AllowDecision {
  readonly result: 'allow';
  readonly request: ResolvedRequest;
  /** Resolved target: a qube (maybe `uuid:…`), `dom0`, or `@dispvm:NAME`. */
  readonly target: string;
  readonly user: string | null;
  readonly autostart: boolean;
  readonly notify: boolean;
  readonly rule: Rule;
}
export interface AskDecision {
  readonly result: 'ask';
  readonly request: ResolvedRequest;
  readonly targetsForAsk: readonly string[];
  readonly defaultTarget: string | null;
  readonly user: string | null;
  readonly autostart: boolean;
  readonly notify: boolean;
  readonly rule: Rule;
}
export interface DenyDecision {
  readonly result: 'deny';
  /** Null when the request could not even be built. */
  readonly request: ResolvedRequest | null;
  readonly notify: boolean;
  /** The rule that denied or whose action refused; null when none matched or the request was rejected first. */
  readonly rule: Rule | null;
  /** Why, for logs. */
  readonly reason: string;
}
export type Decision = AllowDecision | AskDecision | DenyDecision;

function deny(request: ResolvedRequest | null, rule: Rule | null, notify: boolean, reason: string): DenyDecision {
  return { result: 'deny', request, rule, notify, reason };
}

function ruleName(rule: Rule): string {
  return `${rule.file}:${rule.line ?? 0}`;
}

/** Request → validated parts, or a deny (reference Request.__init__). */
function resolveRequest(
  req: PolicyRequest,
  info: SystemInfo,
): { request: ResolvedRequest; target: Token } | DenyDecision {
  const plus = req.serviceAndArg.indexOf('+');
  const service = plus < 0 ? req.serviceAndArg : req.serviceAndArg.slice(0, plus);
  const argument = plus < 0 ? '+' : req.serviceAndArg.slice(plus);
  let target: Token;
  try {
    target = parseToken(req.intendedTarget === '' ? '@default' : req.intendedTarget, 'intendedtarget', {
      file: '<request>',
      line: null,
    });
  } catch (e) {
    if (e instanceof PolicySyntaxError) return deny(null, null, false, `invalid target: ${e.detail}`);
    throw e;
  }
  if (target.kind === 'name' && !info.domains.has(target.text)) {
    target = { text: '@default', kind: 'default', value: '@default' };
  } else if (target.kind === 'dispvm-template') {
    const d = info.domains.get(target.value);
    if (d === undefined || !d.template_for_dispvms) {
      return deny(null, null, true, `not a template for dispvm: ${target.value}`);
    }
  }
  let source = req.source;
  let relayvm: string | null = null;
  const rs = req.requestedSource ?? '';
  if (rs !== '') {
    const d = info.domains.get(rs);
    if (d === undefined) return deny(null, null, true, `unknown requested source qube '${rs}'`);
    if (d.type !== 'RemoteVM') return deny(null, null, true, `${rs}: requested source is only authorized for RemoteVM`);
    if (d.relayvm !== source) return deny(null, null, true, `${source} is not a relay for ${rs}`);
    relayvm = source;
    source = rs;
  }
  return {
    request: {
      service,
      argument,
      source,
      intendedTarget: target.text,
      relayvm,
      requestedSource: rs === '' ? null : rs,
    },
    target,
  };
}

/** Expansions by token text, per system info (an ask evaluates them over and over). */
const expansions = new WeakMap<SystemInfo, Map<string, readonly string[]>>();

/** expandToken() with uuids turned into names, as collect_targets_for_ask uses it; cached. */
function expansionOf(tok: Token, info: SystemInfo): readonly string[] {
  let m = expansions.get(info);
  if (!m) expansions.set(info, (m = new Map()));
  const cached = m.get(tok.text);
  if (cached) return cached;
  const out: string[] = [];
  for (const t of expandToken(tok, info)) {
    const n = uuidToName(info, t);
    if (n !== undefined) out.push(n);
  }
  m.set(tok.text, out);
  return out;
}

/** May this target be used without starting it? (reference allow_no_autostart) */
function runsWithoutAutostart(target: string, info: SystemInfo): boolean {
  if (isDom0(target)) return true;
  if (target.startsWith('@dispvm')) return false;
  const d = info.domains.get(target);
  if (d === undefined) throw new EvaluationCrash(`autostart check of unknown qube ${target}`);
  return d.power_state === 'Running';
}

/**
 * An immutable, fully loaded policy. Rules are indexed by service so that
 * a request only looks at rules for its service and `*` rules.
 */
export class Policy {
  /** Merged candidate lists, cached per service (and per service+argument where rules name that argument). */
  private readonly cache = new Map<string, readonly Rule[]>();
  /** Positions of rules naming a service, split by argument (null = any argument). */
  private readonly specific = new Map<string, { anyArg: number[]; byArg: Map<string, number[]> }>();
  /** Positions of `*` service rules. */
  private readonly anyServiceIdx: number[] = [];
  private readonly anyService: readonly Rule[];

  constructor(readonly rules: readonly Rule[]) {
    for (let i = 0; i < rules.length; i++) {
      const r = rules[i] as Rule;
      if (r.service === null) {
        this.anyServiceIdx.push(i);
        continue;
      }
      let s = this.specific.get(r.service);
      if (!s) this.specific.set(r.service, (s = { anyArg: [], byArg: new Map() }));
      if (r.argument === null) {
        s.anyArg.push(i);
      } else {
        let l = s.byArg.get(r.argument);
        if (!l) s.byArg.set(r.argument, (l = []));
        l.push(i);
      }
    }
    this.anyService = this.anyServiceIdx.map((i) => rules[i] as Rule);
  }

  /**
   * The rules that can match a service and argument, in policy order. Lists
   * are built on first use and cached only for names some rule mentions, so
   * requests for unknown services or arguments cost no memory.
   */
  rulesFor(service: string, argument?: string): readonly Rule[] {
    const s = this.specific.get(service);
    if (!s) return this.anyService;
    const withArg = argument !== undefined ? s.byArg.get(argument) : undefined;
    const key = withArg ? `${service}\0${argument}` : service;
    let merged = this.cache.get(key);
    if (!merged) {
      merged = this.merge(withArg ? [s.anyArg, withArg, this.anyServiceIdx] : [s.anyArg, this.anyServiceIdx]);
      this.cache.set(key, merged);
    }
    return merged;
  }

  /** All rules that mention a service (any argument) or `*`, in policy order. */
  rulesForService(service: string): readonly Rule[] {
    const s = this.specific.get(service);
    if (!s) return this.anyService;
    return this.merge([s.anyArg, ...s.byArg.values(), this.anyServiceIdx]);
  }

  private merge(lists: ReadonlyArray<readonly number[]>): Rule[] {
    return lists
      .flat()
      .sort((a, b) => a - b)
      .map((i) => this.rules[i] as Rule);
  }

  /** Decide a request. Never throws for anything a caller sends. */
  evaluate(req: PolicyRequest, info: SystemInfo): Decision {
    try {
      return this.evaluateUnsafe(req, info);
    } catch (e) {
      if (e instanceof EvaluationCrash || e instanceof PolicySyntaxError) {
        return deny(null, null, false, `evaluation failed: ${e.message}`);
      }
      throw e;
    }
  }

  private evaluateUnsafe(req: PolicyRequest, info: SystemInfo): Decision {
    const r = resolveRequest(req, info);
    if ('result' in r) return r;
    const { request, target } = r;
    const rules = this.rulesFor(request.service, request.argument);
    const source = nameToken(request.source);
    for (const rule of rules) {
      if (!this.matchesButTarget(rule, request, source, info)) continue;
      if (!matchToken(rule.target, target, info, request.source)) continue;
      switch (rule.action.type) {
        case 'deny':
          return deny(request, rule, rule.action.notify, `denied by policy ${ruleName(rule)}`);
        case 'allow':
          return this.allow(rule, rule.action, request, target, info);
        case 'ask':
          return this.ask(rule, rule.action, request, rules, source, info);
      }
    }
    return deny(request, null, true, 'no matching rule found');
  }

  private matchesButTarget(rule: Rule, request: ResolvedRequest, source: Token, info: SystemInfo): boolean {
    return (
      (rule.service === null || rule.service === request.service) &&
      (rule.argument === null || rule.argument === request.argument) &&
      matchToken(rule.source, source, info, null)
    );
  }

  private allow(rule: Rule, action: AllowAction, request: ResolvedRequest, intended: Token, info: SystemInfo): Decision {
    let target: Token = action.target ?? intended;
    if (target.kind === 'name' && !info.domains.has(target.text)) {
      target = { text: '@default', kind: 'default', value: '@default' };
    } else if (target.kind === 'dispvm-template') {
      const d = info.domains.get(target.value);
      if (d === undefined || !d.template_for_dispvms) {
        return deny(request, rule, true, `not a template for dispvm: ${target.value}`);
      }
    }
    let resolved: string;
    if (target.kind === 'default') {
      return deny(request, rule, true, `policy define 'allow' action at ${ruleName(rule)} but no target is specified by caller or policy`);
    } else if (target.kind === 'dispvm') {
      const t = dispvmTemplateFor(request.source, info);
      if (t === null) {
        return deny(request, rule, true, `policy define 'allow' action to @dispvm at ${ruleName(rule)} but no DispVM base is set for this VM`);
      }
      resolved = t.text;
    } else if (target.text === '@adminvm') {
      resolved = 'dom0';
    } else {
      resolved = target.text;
    }
    if (!action.autostart && !runsWithoutAutostart(resolved, info)) {
      return deny(request, rule, action.notify, `target ${resolved} is denied because it would require autostart`);
    }
    return {
      result: 'allow',
      request,
      target: resolved,
      user: action.user,
      autostart: action.autostart,
      notify: action.notify,
      rule,
    };
  }

  private ask(
    rule: Rule,
    action: AskAction,
    request: ResolvedRequest,
    rules: readonly Rule[],
    source: Token,
    info: SystemInfo,
  ): Decision {
    let targets: string[];
    if (action.target !== null) {
      targets = [isDom0(action.target.text) ? 'dom0' : action.target.text];
    } else {
      targets = [...this.collectTargetsForAsk(request, rules, source, info)];
    }
    if (!action.autostart) targets = targets.filter((t) => runsWithoutAutostart(t, info));
    if (targets.length === 0) {
      return deny(request, rule, true, `policy define 'ask' action at ${ruleName(rule)} but no target is available to choose from`);
    }
    let def: string | null = null;
    const dt = action.defaultTarget;
    if (dt !== null) {
      if (dt.kind === 'dispvm') def = dispvmTemplateFor(request.source, info)?.text ?? null;
      else if (isDom0(dt.text)) def = 'dom0';
      else def = dt.text;
    }
    if (def !== null && !targets.includes(def)) def = null;
    return {
      result: 'ask',
      request,
      targetsForAsk: targets,
      defaultTarget: def,
      user: action.user,
      autostart: action.autostart,
      notify: action.notify,
      rule,
    };
  }

  /** The choices an `ask` without `target=` offers (reference collect_targets_for_ask). */
  private collectTargetsForAsk(
    request: ResolvedRequest,
    rules: readonly Rule[],
    sourceTok: Token,
    info: SystemInfo,
  ): Set<string> {
    const targets = new Set<string>();
    const source = request.source;
    const srcInfo = info.domains.get(source);
    if (srcInfo === undefined) throw new EvaluationCrash(`unknown source ${source}`);
    const sourceName = source.startsWith('uuid:') ? srcInfo.name : source;
    if (!source.startsWith('uuid:') && srcInfo.uuid === null) throw new EvaluationCrash(`source ${source} has no uuid`);
    const sourceUuid = source.startsWith('uuid:') ? source : `uuid:${srcInfo.uuid}`;
    for (let i = rules.length - 1; i >= 0; i--) {
      const rule = rules[i] as Rule;
      if (!this.matchesButTarget(rule, request, sourceTok, info)) continue;
      const tok = (rule.action.type !== 'deny' ? rule.action.target : null) ?? rule.target;
      const expansion = expansionOf(tok, info);
      if (rule.action.type === 'deny') for (const t of expansion) targets.delete(t);
      else for (const t of expansion) targets.add(t);
    }
    if (targets.delete('@dispvm')) {
      const t = dispvmTemplateFor(source, info);
      if (t !== null) targets.add(t.text);
    }
    if (targets.delete('@adminvm')) targets.add('dom0');
    targets.delete(sourceName);
    targets.delete(sourceUuid);
    for (const t of [...targets]) {
      const name = t.startsWith('@dispvm:') ? t.slice(8) : t;
      const d = info.domains.get(name);
      if (d === undefined) throw new EvaluationCrash(`unknown ask candidate ${name}`);
      if (d.internal) targets.delete(t);
    }
    return targets;
  }
}

/**
 * The user answered an `ask` with `target` (reference
 * handle_user_response(True, target)): allow to it if it was offered.
 */
export function answerAsk(ask: AskDecision, target: string): AllowDecision | DenyDecision {
  if (!ask.targetsForAsk.includes(target)) {
    return deny(ask.request, ask.rule, true, `target ${target} is not a valid choice`);
  }
  if (target.startsWith('@dispvm:')) {
    try {
      parseToken(target, 'intendedtarget', { file: '<answer>', line: null });
    } catch {
      return deny(ask.request, null, false, `invalid answer ${target}`);
    }
  }
  return {
    result: 'allow',
    request: ask.request,
    target,
    user: ask.user,
    autostart: ask.autostart,
    notify: ask.notify,
    rule: ask.rule,
  };
}

/** The user refused an `ask`. */
export function refuseAsk(ask: AskDecision): DenyDecision {
  return deny(ask.request, ask.rule, ask.notify, `denied by the user ${ruleName(ask.rule)}`);
}

/** Python's str() of a bool. */
function pyBool(b: boolean): string {
  return b ? 'True' : 'False';
}

/**
 * The checks the reference makes only when it executes an allow: a call to
 * the caller itself (loopback) and a RemoteVM without a usable relay are
 * refused at the matched rule. Returns the deny, or null if the allow stands.
 * @throws EvaluationCrash where the reference dies on unknown qubes.
 */
function allowRefusal(allow: AllowDecision, info: SystemInfo): DenyDecision | null {
  const { request, target, rule } = allow;
  if (request.source === target) return deny(request, rule, true, 'loopback qrexec connection not supported');
  if (isDom0(target)) return null;
  const d = info.domains.get(target.startsWith('@dispvm:') ? target.slice(8) : target);
  if (d === undefined) throw new EvaluationCrash(`unknown target ${target}`);
  if (d.type === 'RemoteVM' && !target.startsWith('@dispvm:')) {
    if (!d.relayvm) return deny(request, rule, true, `${target}: relayvm is not set`);
    if (!d.transport_rpc) return deny(request, rule, true, `${target}: transport RPC is not set`);
    if (!info.domains.has(d.relayvm)) throw new EvaluationCrash(`unknown relay ${d.relayvm}`);
  }
  return null;
}

/**
 * An allow carried through the checks of execution (see allowRefusal):
 * the allow itself, or the deny the reference would answer.
 */
export function finalizeAllow(allow: AllowDecision, info: SystemInfo): AllowDecision | DenyDecision {
  try {
    return allowRefusal(allow, info) ?? allow;
  } catch (e) {
    if (e instanceof EvaluationCrash) return deny(allow.request, null, false, `evaluation failed: ${e.message}`);
    throw e;
  }
}

/**
 * What the qrexec daemon is told for an allow (reference
 * AllowResolution.execute()): the reply lines, or a deny for a call the
 * reference refuses at this stage (see allowRefusal).
 */
export function allowReplyLines(allow: AllowDecision, info: SystemInfo): string[] | DenyDecision {
  const final = finalizeAllow(allow, info);
  if (final.result === 'deny') return final;
  const { request, target } = allow;
  const user = `user=${allow.user || 'DEFAULT'}`;
  const auto = `autostart=${pyBool(allow.autostart)}`;
  const requested = `requested_target=${request.intendedTarget}`;
  const policySource = request.requestedSource ? [`policy_source=${request.source}`] : [];
  if (isDom0(target)) return [user, 'result=allow', 'target=dom0', auto, requested];
  if (target.startsWith('@dispvm:')) {
    const d = info.domains.get(target.slice(8)) as DomainInfo;
    return [user, 'result=allow', `target=${target}`, `target_uuid=@dispvm:uuid:${d.uuid}`, auto, requested, ...policySource];
  }
  const d = info.domains.get(target) as DomainInfo;
  if (d.type === 'RemoteVM') {
    const relay = info.domains.get(d.relayvm as string) as DomainInfo;
    return [
      'user=DEFAULT',
      'result=allow',
      `target=${d.relayvm}`,
      `target_uuid=uuid:${relay.uuid}`,
      auto,
      requested,
      `service=${d.transport_rpc}+${request.intendedTarget}+${request.service}${request.argument}`,
      ...policySource,
    ];
  }
  return [user, 'result=allow', `target=${target}`, `target_uuid=uuid:${d.uuid}`, auto, requested, ...policySource];
}

/** Is the target of an allow a RemoteVM (reached through its relay)? */
export function isRemoteTarget(target: string, info: SystemInfo): boolean {
  return info.domains.get(target)?.type === 'RemoteVM';
}
