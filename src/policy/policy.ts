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

/**
 * Every string a token expansion can yield for one system info (names,
 * `@dispvm:NAME`, `@dispvm`, `@adminvm`), numbered, so that an ask's
 * candidate set is a bit set and each rule costs a few word operations.
 */
interface Universe {
  readonly list: readonly string[];
  readonly index: ReadonlyMap<string, number>;
  readonly words: number;
  /** Expansion masks by token text. */
  readonly masks: Map<string, Uint32Array>;
}

const universes = new WeakMap<SystemInfo, Universe>();

function universeOf(info: SystemInfo): Universe {
  let u = universes.get(info);
  if (u) return u;
  const list: string[] = ['@dispvm', '@adminvm'];
  for (const name of info.names) {
    list.push(name);
    if (info.domains.get(name)?.template_for_dispvms) list.push('@dispvm:' + name);
  }
  const index = new Map(list.map((t, i) => [t, i] as const));
  u = { list, index, words: (list.length + 31) >>> 5, masks: new Map() };
  universes.set(info, u);
  return u;
}

/** expandToken() with uuids turned into names, as collect_targets_for_ask uses it, as a bit set; cached. */
function expansionMask(tok: Token, info: SystemInfo, u: Universe): Uint32Array {
  const cached = u.masks.get(tok.text);
  if (cached) return cached;
  const mask = new Uint32Array(u.words);
  for (const t of expandToken(tok, info)) {
    const n = uuidToName(info, t);
    if (n === undefined) continue;
    const i = u.index.get(n);
    if (i === undefined) throw new EvaluationCrash(`expansion ${n} outside the universe`);
    mask[i >>> 5] = (mask[i >>> 5] as number) | (1 << (i & 31));
  }
  u.masks.set(tok.text, mask);
  return mask;
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
  /** Positions of rules naming a service, split by argument (null = any argument), with merged lists cached. */
  private readonly specific = new Map<
    string,
    { anyArg: number[]; byArg: Map<string, number[]>; merged?: readonly Rule[]; mergedByArg: Map<string, readonly Rule[]> }
  >();
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
      if (!s) this.specific.set(r.service, (s = { anyArg: [], byArg: new Map(), mergedByArg: new Map() }));
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
    if (withArg === undefined) return (s.merged ??= this.merge([s.anyArg, this.anyServiceIdx]));
    let merged = s.mergedByArg.get(argument as string);
    if (!merged) s.mergedByArg.set(argument as string, (merged = this.merge([s.anyArg, withArg, this.anyServiceIdx])));
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
          return deny(request, rule, rule.action.notify, 'denied by policy');
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
    const u = universeOf(info);
    const acc = new Uint32Array(u.words);
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
      const mask = expansionMask(tok, info, u);
      if (rule.action.type === 'deny') for (let w = 0; w < acc.length; w++) acc[w] = (acc[w] as number) & ~(mask[w] as number);
      else for (let w = 0; w < acc.length; w++) acc[w] = (acc[w] as number) | (mask[w] as number);
    }
    const targets = new Set<string>();
    for (let i = 0; i < u.list.length; i++) if (((acc[i >>> 5] as number) >>> (i & 31)) & 1) targets.add(u.list[i] as string);
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
