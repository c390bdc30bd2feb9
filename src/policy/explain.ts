/**
 * Explaining a decision: which rule made it, why each earlier rule for the
 * same service did not match (the first column that failed, in words), and
 * how an `ask` gathered its choices. Answers "why was my call denied?"
 * (QubesOS/qubes-issues #6264, #6569).
 *
 * The decision itself always comes from the engine ({@link decide}); this
 * module only re-walks the same rules with the engine's own matching
 * functions to describe what happened. It never decides anything itself.
 */
import { EvaluationCrash, pyRepr } from './errors.js';
import { pySplit } from './lines.js';
import { basename } from './paths.js';
import type { Decision, Policy, PolicyRequest, ResolvedRequest } from './policy.js';
import { decide, decisionToJson, ruleLabel, type DecisionJson } from './report.js';
import type { Rule } from './rule.js';
import { isDom0, type SystemInfo } from './system-info.js';
import {
  dispvmTemplateFor,
  expandToken,
  matchToken,
  nameToken,
  parseToken,
  uuidToName,
  type Token,
} from './tokens.js';

/** The columns of a rule, in the order they are checked. */
export type RuleColumn = 'service' | 'argument' | 'source' | 'target';

/** An earlier rule that did not match, and why. */
export interface RuleMiss {
  readonly rule: Rule;
  readonly column: RuleColumn;
  /** e.g. `source @tag:work: qube 'personal' has no tag 'work'`. */
  readonly why: string;
}

/** What one rule did to the choices of an `ask` (the reference walks rules last to first). */
export interface AskStep {
  readonly rule: Rule;
  readonly effect: 'add' | 'remove';
  /** The token whose expansion was used (the rule's `target=`, else its target column). */
  readonly token: string;
  /** The qubes the token stands for. */
  readonly expansion: readonly string[];
  /** Of those, the ones that actually entered (add) or left (remove) the set. */
  readonly changed: readonly string[];
}

/** How the choices of an `ask` came about. */
export interface AskTrace {
  /** Set when the rule has `target=`: the only choice. */
  readonly fixedTarget: string | null;
  readonly steps: readonly AskStep[];
  /** Later adjustments, in words (`@dispvm` resolution, caller and internal qubes removed, autostart). */
  readonly adjustments: readonly string[];
  /** The resulting choices (equal to the decision's). */
  readonly targets: readonly string[];
}

export interface Explanation {
  readonly request: PolicyRequest;
  /** The request as the engine saw it; null if it was rejected before any rule. */
  readonly resolved: ResolvedRequest | null;
  readonly decision: Decision;
  /** The decision as qrexec-policy-eval prints it. */
  readonly json: DecisionJson;
  /** The first rule that matched, if any. */
  readonly rule: Rule | null;
  /** Every rule before it for this service (or `*`) that did not match; all of them if none matched. */
  readonly misses: readonly RuleMiss[];
  /** Anything else worth knowing, in words (target resolution, refusals, warnings). */
  readonly notes: readonly string[];
  readonly ask: AskTrace | null;
}

/** How a request's intended target reads in a sentence. */
function describeTarget(t: Token): string {
  switch (t.kind) {
    case 'default':
      return 'no particular qube (@default)';
    case 'dispvm':
      return 'a new disposable (@dispvm)';
    case 'dispvm-template':
      return `a disposable of ${pyRepr(t.value)} (${t.text})`;
    case 'adminvm':
      return 'dom0 (@adminvm)';
    default:
      return pyRepr(t.text);
  }
}

/** Why a source token does not match the calling qube `source`. */
function whySource(tok: Token, source: string, info: SystemInfo): string {
  const d = info.domains.get(source);
  const q = pyRepr(source);
  switch (tok.kind) {
    case 'adminvm':
      return `the caller ${q} is not dom0`;
    case 'anyvm':
      return 'matches any qube but dom0, and the caller is dom0';
    case 'type':
      return d ? `qube ${q} is of type ${d.type || '(none)'}` : `qube ${q} is unknown`;
    case 'tag':
      return d ? `qube ${q} has no tag ${pyRepr(tok.value)}` : `qube ${q} is unknown`;
    case 'dispvm-template':
    case 'dispvm-tag':
      return 'matches no caller: a caller is always a named qube';
    default:
      return `the caller is ${q}`;
  }
}

/** Why a target token does not match the request's verified intended target. */
function whyTarget(tok: Token, target: Token, source: string, info: SystemInfo): string {
  const desc = describeTarget(target);
  const qube = target.kind === 'name' ? info.domains.get(target.text) : undefined;
  const dispvmTemplate = (): string | null => {
    if (target.kind === 'dispvm-template') return target.value;
    if (target.kind === 'dispvm') return dispvmTemplateFor(source, info)?.value ?? null;
    return null;
  };
  switch (tok.kind) {
    case 'adminvm':
      return `the call is for ${desc}, not dom0`;
    case 'anyvm':
      return 'matches any qube but dom0, and the call is for dom0';
    case 'default':
      return `matches only calls that name no target, and the call is for ${desc}`;
    case 'dispvm':
      return `matches only calls for @dispvm, and the call is for ${desc}`;
    case 'type':
    case 'tag': {
      if (qube === undefined) return `the call is for ${desc}, which is not a named qube`;
      const q = pyRepr(qube.name);
      return tok.kind === 'type'
        ? `qube ${q} is of type ${qube.type || '(none)'}`
        : `qube ${q} has no tag ${pyRepr(tok.value)}`;
    }
    case 'dispvm-template': {
      const tpl = dispvmTemplate();
      if (tpl === null) return `matches only disposables of ${pyRepr(tok.value)}, and the call is for ${desc}`;
      if (target.kind === 'dispvm') {
        return `the caller's default disposable template is ${pyRepr(tpl)}, not ${pyRepr(tok.value)}`;
      }
      return `the call is for ${desc}`;
    }
    case 'dispvm-tag': {
      const tpl = dispvmTemplate();
      if (tpl === null) return `matches only disposables, and the call is for ${desc}`;
      const d = info.domains.get(tpl);
      if (d === undefined) return `disposable template ${pyRepr(tpl)} is unknown`;
      if (!d.template_for_dispvms) return `${pyRepr(tpl)} is not a disposable template`;
      return `disposable template ${pyRepr(tpl)} has no tag ${pyRepr(tok.value)}`;
    }
    default:
      return `the call is for ${desc}`;
  }
}

/**
 * The first column of `rule` that does not match, or null if it matches.
 * Uses the engine's own token matching.
 */
function firstMismatch(
  rule: Rule,
  req: ResolvedRequest,
  target: Token,
  info: SystemInfo,
): { column: RuleColumn; why: string } | null {
  if (rule.service !== null && rule.service !== req.service) {
    return { column: 'service', why: `service ${rule.service}: the call is for ${pyRepr(req.service)}` };
  }
  if (rule.argument !== null && rule.argument !== req.argument) {
    const has = req.argument === '+' ? 'the call has no argument (+)' : `the call's argument is ${pyRepr(req.argument)}`;
    return { column: 'argument', why: `argument ${rule.argument}: ${has}` };
  }
  if (!matchToken(rule.source, nameToken(req.source), info, null)) {
    return { column: 'source', why: `source ${rule.source.text}: ${whySource(rule.source, req.source, info)}` };
  }
  if (!matchToken(rule.target, target, info, req.source)) {
    return { column: 'target', why: `target ${rule.target.text}: ${whyTarget(rule.target, target, req.source, info)}` };
  }
  return null;
}

/** May `target` be used without starting it (reference allow_no_autostart)? */
function runsWithoutAutostart(target: string, info: SystemInfo): boolean {
  if (isDom0(target)) return true;
  if (target.startsWith('@dispvm')) return false;
  return info.domains.get(target)?.power_state === 'Running';
}

/** Re-trace how the engine collects the choices of an `ask` rule. */
function traceAsk(rule: Rule, rules: readonly Rule[], req: ResolvedRequest, info: SystemInfo): AskTrace {
  const action = rule.action;
  if (action.type !== 'ask') throw new Error('traceAsk: not an ask rule');
  const adjustments: string[] = [];
  let fixedTarget: string | null = null;
  const steps: AskStep[] = [];
  let targets: string[];
  if (action.target !== null) {
    fixedTarget = isDom0(action.target.text) ? 'dom0' : action.target.text;
    targets = [fixedTarget];
  } else {
    const set = new Set<string>();
    const source = nameToken(req.source);
    for (let i = rules.length - 1; i >= 0; i--) {
      const r = rules[i] as Rule;
      if (r.service !== null && r.service !== req.service) continue;
      if (r.argument !== null && r.argument !== req.argument) continue;
      if (!matchToken(r.source, source, info, null)) continue;
      const tok = (r.action.type !== 'deny' ? r.action.target : null) ?? r.target;
      const expansion: string[] = [];
      for (const t of expandToken(tok, info)) {
        const n = uuidToName(info, t);
        if (n !== undefined) expansion.push(n);
      }
      const changed: string[] = [];
      if (r.action.type === 'deny') {
        for (const t of expansion) if (set.delete(t)) changed.push(t);
      } else {
        for (const t of expansion) {
          if (!set.has(t)) changed.push(t);
          set.add(t);
        }
      }
      steps.push({ rule: r, effect: r.action.type === 'deny' ? 'remove' : 'add', token: tok.text, expansion, changed });
    }
    if (set.delete('@dispvm')) {
      const t = dispvmTemplateFor(req.source, info);
      if (t !== null) {
        set.add(t.text);
        adjustments.push(`@dispvm stands for ${t.text} (the default_dispvm of ${pyRepr(req.source)})`);
      } else {
        adjustments.push(`@dispvm is dropped: ${pyRepr(req.source)} has no default_dispvm`);
      }
    }
    if (set.delete('@adminvm')) {
      set.add('dom0');
      adjustments.push('@adminvm is offered as dom0');
    }
    const srcInfo = info.domains.get(req.source);
    const sourceName = srcInfo?.name ?? req.source;
    if (set.delete(sourceName)) adjustments.push(`the caller ${pyRepr(sourceName)} is removed`);
    if (srcInfo?.uuid && set.delete('uuid:' + srcInfo.uuid)) adjustments.push(`the caller's uuid:${srcInfo.uuid} is removed`);
    for (const t of [...set]) {
      const name = t.startsWith('@dispvm:') ? t.slice(8) : t;
      if (info.domains.get(name)?.internal) {
        set.delete(t);
        adjustments.push(`${pyRepr(t)} is removed: internal qube`);
      }
    }
    targets = [...set];
  }
  if (!action.autostart) {
    const kept = targets.filter((t) => runsWithoutAutostart(t, info));
    for (const t of targets) {
      if (!kept.includes(t)) adjustments.push(`${pyRepr(t)} is removed: autostart=no and it is not running`);
    }
    targets = kept;
  }
  return { fixedTarget, steps, adjustments, targets };
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x) => b.includes(x));
}

/** Explain the decision for one request. Never throws for anything a caller sends. */
export function explain(policy: Policy, req: PolicyRequest, info: SystemInfo): Explanation {
  const decision = decide(policy, req, info);
  const json = decisionToJson(decision, info);
  const resolved = decision.request;
  const notes: string[] = [];
  const misses: RuleMiss[] = [];
  let rule: Rule | null = null;
  let ask: AskTrace | null = null;
  const base = { request: req, resolved, decision, json };
  if (resolved === null) {
    notes.push(
      decision.result === 'deny' ? `the request is refused before any rule is read: ${decision.reason}` : 'no rule was read',
    );
    return { ...base, rule, misses, notes, ask };
  }
  let target: Token;
  try {
    target = parseToken(resolved.intendedTarget, 'intendedtarget', { file: '<request>', line: null });
  } catch {
    notes.push(`the target ${pyRepr(resolved.intendedTarget)} is not a valid target`);
    return { ...base, rule, misses, notes, ask };
  }
  if (req.intendedTarget !== '' && req.intendedTarget !== '@default' && resolved.intendedTarget === '@default') {
    notes.push(`${pyRepr(req.intendedTarget)} is not a known qube, so the call is treated as one for @default`);
  }
  if (resolved.relayvm !== null) {
    notes.push(`the call is relayed by ${pyRepr(resolved.relayvm)} on behalf of ${pyRepr(resolved.source)}, so the policy sees source ${pyRepr(resolved.source)}`);
  }
  const rules = policy.rulesForService(resolved.service);
  try {
    for (const r of rules) {
      const miss = firstMismatch(r, resolved, target, info);
      if (miss === null) {
        rule = r;
        break;
      }
      misses.push({ rule: r, ...miss });
    }
    if (rule !== null && rule.action.type === 'ask') ask = traceAsk(rule, rules, resolved, info);
  } catch (e) {
    if (!(e instanceof EvaluationCrash)) throw e;
    notes.push(`evaluation fails here (the reference engine raises an error, so the call is denied): ${e.message}`);
  }
  if (rule === null && misses.length === rules.length) notes.push('no rule matched, so the call is denied');
  const action = rule?.action;
  if (rule !== null && action !== undefined && action.type !== 'deny' && action.target !== null) {
    notes.push(`the rule's target=${action.target.text} replaces the requested target`);
  }
  if (decision.result === 'allow' && target.kind === 'dispvm' && action?.type === 'allow' && action.target === null) {
    notes.push(`@dispvm stands for ${decision.target} (the default_dispvm of ${pyRepr(resolved.source)})`);
  }
  if (decision.result === 'deny' && decision.rule !== null && rule !== null && rule.action.type !== 'deny') {
    notes.push(`the rule matched, but the call is refused: ${decision.reason}`);
  }
  if (decision.result === 'ask' && action?.type === 'ask' && action.defaultTarget !== null && decision.defaultTarget === null) {
    notes.push(`default_target=${action.defaultTarget.text} is not among the choices, so there is no default`);
  }
  // The engine is authoritative; say so if this re-trace ever disagrees with it.
  const engineRule = decision.rule;
  if (engineRule !== null && engineRule !== rule) {
    notes.push(`internal: the engine matched ${ruleLabel(engineRule)}, this explanation found ${rule ? ruleLabel(rule) : 'none'}`);
  }
  if (decision.result === 'ask' && ask !== null && !sameSet(ask.targets, decision.targetsForAsk)) {
    notes.push('internal: the traced ask choices differ from the engine\'s');
  }
  return { ...base, rule, misses, notes, ask };
}

/** A rule as JSON: where it is and what it says. */
function ruleJson(r: Rule): { file: string; line: number | null; label: string; text: string } {
  return { file: r.file, line: r.line, label: ruleLabel(r), text: ruleText(r) };
}

/**
 * The text of a rule. A line of a 4.0-syntax file (legacy or
 * `!include-service`) is shown as the new-format rule it stands for, with
 * the line as written; the implicit denies of `!compat-4.0` have no line.
 */
function ruleText(r: Rule): string {
  const head = `${r.service ?? '*'} ${r.argument ?? '*'}`;
  if (r.line === null) return `${head} ${r.text}  (implicit, after the 4.0 file ${basename(r.file)})`;
  const words = pySplit(r.text);
  if (words[0] === (r.service ?? '*') && words[1] === (r.argument ?? '*')) return r.text;
  const converted = pySplit(r.text.replaceAll('$', '@').replaceAll(',', ' ')).join(' ');
  return `${head} ${converted}  (4.0 syntax: ${words.join(' ')})`;
}

/** Machine-readable form of an explanation (`--json`). */
export function explanationToJson(x: Explanation): unknown {
  return {
    request: {
      source: x.request.source,
      intended_target: x.request.intendedTarget,
      service_and_arg: x.request.serviceAndArg,
      ...(x.request.requestedSource ? { requested_source: x.request.requestedSource } : {}),
    },
    resolved: x.resolved && {
      service: x.resolved.service,
      argument: x.resolved.argument,
      source: x.resolved.source,
      intended_target: x.resolved.intendedTarget,
    },
    decision: x.json,
    reason: x.decision.result === 'deny' ? x.decision.reason : null,
    rule: x.rule && ruleJson(x.rule),
    not_matched: x.misses.map((m) => ({ ...ruleJson(m.rule), column: m.column, why: m.why })),
    ask: x.ask && {
      fixed_target: x.ask.fixedTarget,
      steps: x.ask.steps.map((s) => ({
        ...ruleJson(s.rule),
        effect: s.effect,
        token: s.token,
        expansion: s.expansion,
        changed: s.changed,
      })),
      adjustments: x.ask.adjustments,
      targets: x.ask.targets,
    },
    notes: x.notes,
  };
}

/** Options of {@link formatExplanation}. */
export interface FormatOptions {
  /** How a rule's file is written (e.g. relative, as the user named its directory); default: as loaded. */
  readonly showFile?: (file: string) => string;
}

/** Human-readable form of an explanation. */
export function formatExplanation(x: Explanation, opts: FormatOptions = {}): string {
  const show = opts.showFile ?? ((f: string): string => f);
  const where = (r: Rule): string => `${show(r.file)}:${r.line ?? 0}`;
  const out: string[] = [];
  const r = x.resolved;
  const svc = r ? `${r.service}${r.argument === '+' ? '' : r.argument}` : x.request.serviceAndArg;
  const from = r?.relayvm ? `${r.source} (via ${r.relayvm})` : (r?.source ?? x.request.source);
  out.push(`request:  ${from} -> ${r?.intendedTarget ?? (x.request.intendedTarget || '@default')}  ${svc}`);
  const d = x.decision;
  let summary: string;
  switch (d.result) {
    case 'allow':
      summary = `allow, target ${x.json.result === 'allow' ? x.json.target : d.target}`;
      if (d.user) summary += `, user ${d.user}`;
      break;
    case 'ask':
      summary = `ask, choices: ${d.targetsForAsk.join(', ')}; default: ${d.defaultTarget ?? 'none'}`;
      break;
    case 'deny':
      summary = `deny (${d.reason})`;
      break;
  }
  out.push(`decision: ${summary}`);
  out.push(`          ${JSON.stringify(x.json)}`);
  if (x.rule) {
    out.push(`rule:     ${where(x.rule)}`);
    out.push(`          ${ruleText(x.rule)}`);
  } else {
    out.push(x.resolved === null ? 'rule:     none read (the request was refused first)' : 'rule:     none matched');
  }
  if (x.misses.length > 0) {
    out.push('');
    const what = x.rule ? 'Earlier rules' : 'Rules';
    out.push(`${what} for ${r?.service ?? svc} (or *) that did not match (${x.misses.length}):`);
    for (const m of x.misses) {
      out.push(`  ${where(m.rule)}: ${ruleText(m.rule)}`);
      out.push(`      no match: ${m.why}`);
    }
  }
  if (x.ask) {
    out.push('');
    if (x.ask.fixedTarget !== null) {
      out.push(`Ask choices: the rule's target=${x.ask.fixedTarget} is the only choice.`);
    } else {
      out.push('Ask choices: every rule for this service, argument and source, last to first;');
      out.push('deny removes the qubes its target stands for, allow and ask add them:');
      for (const s of x.ask.steps) {
        const verb = s.effect === 'add' ? 'adds' : 'removes';
        const list = s.changed.length > 0 ? s.changed.join(', ') : 'nothing new';
        out.push(`  ${where(s.rule)}: ${ruleText(s.rule)}`);
        out.push(`      ${s.token} ${verb} ${list}`);
      }
    }
    for (const a of x.ask.adjustments) out.push(`  ${a}`);
    out.push(`  choices: ${x.ask.targets.length > 0 ? x.ask.targets.join(', ') : 'none'}`);
  }
  if (x.notes.length > 0) {
    out.push('');
    out.push('Notes:');
    for (const n of x.notes) out.push(`  - ${n}`);
  }
  return out.join('\n') + '\n';
}
