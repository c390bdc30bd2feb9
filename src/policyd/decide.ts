/**
 * One decision, end to end: the reference's handle_request
 * (qrexec_policy_exec.py) with its resolution classes, minus the process
 * spawning.
 *
 * Reply text, as the reference daemon sends it:
 * - deny, for every reason: `result=deny`;
 * - `just_evaluate=yes`: `result=allow` for an allow; an ask is `result=deny`
 *   unless `assume_yes_for_ask=yes` too, which answers it with the intended
 *   target (then `result=allow` if that was offered);
 * - otherwise an allow (or an ask answered yes) gives the engine's reply
 *   lines (`user=`, `result=allow`, `target=`, ...) joined by `\n`, with no
 *   trailing newline.
 * Where the reference crashes (e.g. `assume_yes_for_ask` on an ask offering
 * `@dispvm`), we deny.
 *
 * Notifications (`policy.Notify` to the source's GUI domain), sent after the
 * reply is decided and never awaited: a deny notifies unless its rule says
 * `notify=no` (or the request was invalid); an allow notifies only with
 * `notify=yes`; nothing is notified for `just_evaluate`, nor after a real
 * ask (the user has just answered it).
 */
import {
  allowReplyLines,
  answerAsk,
  refuseAsk,
  type AllowDecision,
  type AskDecision,
  type Decision,
  type DenyDecision,
  type SystemInfo,
} from '../policy/index.js';
import type { AuditRecord } from '../audit/index.js';
import type { GuiServiceCaller } from './gui-caller.js';
import { safe, type Logger } from './log.js';
import type { PolicyState } from './policy-store.js';
import type { DaemonRequest } from './request.js';

export interface DecideContext {
  readonly policy: () => PolicyState;
  /** Called when a request is denied because the policy is broken (rate-limited loud log). */
  readonly reportBroken?: () => void;
  readonly log: Logger;
  /** null: no GUI domain can be reached (asks are denied, notifications dropped). */
  readonly gui: GuiServiceCaller | null;
  readonly askTimeoutMs: number;
  readonly notify: Notifier;
}

export interface Outcome {
  readonly reply: string;
  readonly record: AuditRecord;
}

export const DENY_REPLY = 'result=deny';

/** Where the request came from, for the audit log. */
export interface Origin {
  readonly client: string;
  readonly mode: string;
}

function modeOf(req: DaemonRequest): string {
  if (req.justEvaluate) return 'just_evaluate';
  if (req.assumeYesForAsk) return 'assume_yes';
  return 'exec';
}

function ruleRef(rule: { file: string; line: number | null } | null): string | null {
  if (rule === null) return null;
  const base = rule.file.slice(rule.file.lastIndexOf('/') + 1);
  return `${base}:${rule.line ?? 0}`;
}

function splitService(serviceAndArg: string): { service: string; argument: string } {
  const i = serviceAndArg.indexOf('+');
  return i < 0
    ? { service: serviceAndArg, argument: '+' }
    : { service: serviceAndArg.slice(0, i), argument: serviceAndArg.slice(i) };
}

/** Builds the audit record as the decision unfolds. */
class Recorder {
  private readonly t0 = performance.now();
  private readonly timeMs = Date.now();
  action: AuditRecord['action'] = 'error';
  target: string | null = null;
  rule: string | null = null;
  askAnswer: string | null = null;
  reason: string | null = null;

  constructor(
    private readonly req: DaemonRequest,
    private readonly origin: Origin,
  ) {}

  /** `qrexec: SERVICE: SOURCE -> TARGET:` for log lines, built only when one is logged. */
  get logPrefix(): string {
    const r = this.req;
    return `qrexec: ${safe(r.serviceAndArg)}: ${safe(r.source)} -> ${safe(r.intendedTarget)}:`;
  }

  done(reply: string): Outcome {
    const { service, argument } = splitService(this.req.serviceAndArg);
    const allowed = reply === 'result=allow' || reply.includes('\nresult=allow');
    return {
      reply,
      record: {
        timeMs: this.timeMs,
        client: this.origin.client,
        mode: this.origin.mode,
        source: this.req.source,
        requestedSource: this.req.requestedSource ?? null,
        intendedTarget: this.req.intendedTarget,
        target: allowed ? this.target : null,
        service,
        argument,
        action: this.action,
        result: allowed ? 'allow' : 'deny',
        rule: this.rule,
        askAnswer: this.askAnswer,
        reason: allowed ? null : this.reason,
        durationUs: (performance.now() - this.t0) * 1000,
      },
    };
  }
}

/**
 * Decide a request. Resolves (never rejects) with the reply and its audit
 * record; anything unexpected becomes a deny.
 */
export function decide(
  req: DaemonRequest,
  info: SystemInfo | Error,
  ctx: DecideContext,
  origin: Origin = { client: 'qrexec-daemon', mode: modeOf(req) },
): Outcome | Promise<Outcome> {
  const rec = new Recorder(req, origin);
  if (info instanceof Error) {
    ctx.log.error(`${rec.logPrefix} error getting system info: ${info.message}`);
    rec.reason = `system info: ${info.message}`;
    return rec.done(DENY_REPLY);
  }
  const state = ctx.policy();
  if (!state.ok) {
    ctx.reportBroken?.();
    rec.reason = `policy not loaded: ${state.error}`;
    return rec.done(DENY_REPLY);
  }
  let decision: Decision;
  try {
    decision = state.policy.evaluate(
      {
        source: req.source,
        intendedTarget: req.intendedTarget,
        serviceAndArg: req.serviceAndArg,
        requestedSource: req.requestedSource,
      },
      info,
    );
  } catch (e) {
    ctx.log.error(`${rec.logPrefix} evaluation failed: ${(e as Error).message}`);
    rec.reason = `evaluation failed: ${(e as Error).message}`;
    return rec.done(DENY_REPLY);
  }
  rec.action = decision.result;
  rec.rule = ruleRef(decision.rule);
  try {
    switch (decision.result) {
      case 'deny':
        return denied(decision, req, info, ctx, rec, true);
      case 'allow':
        return allowed(decision, req, info, ctx, rec, true);
      case 'ask':
        return asked(decision, req, info, ctx, rec);
    }
  } catch (e) {
    // A bug of ours; never an allow.
    ctx.log.error(`${rec.logPrefix} internal error: ${(e as Error).stack ?? String(e)}`);
    rec.reason = `internal error: ${(e as Error).message}`;
    return rec.done(DENY_REPLY);
  }
}

/**
 * The GUI domain that answers for a call's source: its own, or for a
 * RemoteVM relayed here the GUI domain of its relay, a qube of this host
 * (qubes-issues #10913). A RemoteVM's own guivm would name no qube that
 * can show anything here.
 */
function guivmOf(info: SystemInfo, source: string, relayvm: string | null): string | null {
  const d = info.domains.get(source);
  if (relayvm !== null && d?.type === 'RemoteVM') return info.domains.get(relayvm)?.guivm ?? null;
  return d?.guivm ?? null;
}

/** policy.Notify to the GUI domain of the call's source, if it has one (fire and forget). */
function notifyGuivm(
  ctx: DecideContext,
  info: SystemInfo,
  params: { resolution: 'allow' | 'deny'; service: string; argument: string; source: string; target: string },
  relayvm: string | null,
): void {
  const guivm = guivmOf(info, params.source, relayvm);
  if (guivm) ctx.notify.send(guivm, params);
}

function denied(
  d: DenyDecision,
  req: DaemonRequest,
  info: SystemInfo,
  ctx: DecideContext,
  rec: Recorder,
  mayNotify: boolean,
): Outcome {
  if (ctx.log.enabled?.('info') !== false) ctx.log.info(`${rec.logPrefix} denied: ${d.reason}`);
  rec.reason = d.reason;
  if (d.rule !== null) rec.rule = ruleRef(d.rule);
  if (mayNotify && d.notify && !req.justEvaluate) {
    // The reference notifies with the request as the daemon sent it.
    const { service, argument } = splitService(req.serviceAndArg);
    notifyGuivm(ctx, info, { resolution: 'deny', service, argument, source: req.source, target: req.intendedTarget }, null);
  }
  return rec.done(DENY_REPLY);
}

function allowed(
  a: AllowDecision,
  req: DaemonRequest,
  info: SystemInfo,
  ctx: DecideContext,
  rec: Recorder,
  mayNotify: boolean,
): Outcome {
  rec.target = a.target;
  if (req.justEvaluate) return rec.done('result=allow');
  const lines = allowReplyLines(a, info);
  if (!Array.isArray(lines)) return denied(lines as DenyDecision, req, info, ctx, rec, mayNotify);
  if (ctx.log.enabled?.('info') !== false) ctx.log.info(`${rec.logPrefix} allowed to ${safe(a.target)}`);
  if (mayNotify && a.notify) {
    const { service, argument, source, relayvm } = a.request;
    notifyGuivm(ctx, info, { resolution: 'allow', service, argument, source, target: a.target }, relayvm);
  }
  return rec.done(lines.join('\n'));
}

function asked(
  ask: AskDecision,
  req: DaemonRequest,
  info: SystemInfo,
  ctx: DecideContext,
  rec: Recorder,
): Outcome | Promise<Outcome> {
  if (req.assumeYesForAsk) {
    rec.askAnswer = 'assumed-yes';
    const r = answerAsk(ask, ask.request.intendedTarget);
    return r.result === 'allow'
      ? allowed(r, req, info, ctx, rec, true)
      : denied(r, req, info, ctx, rec, true);
  }
  if (req.justEvaluate) {
    rec.reason = 'ask (just_evaluate)';
    return rec.done(DENY_REPLY);
  }
  const guivm = guivmOf(info, ask.request.source, ask.request.relayvm);
  if (!guivm || ctx.gui === null) {
    ctx.log.error(
      `${safe(ask.request.service)} not allowed from ${safe(ask.request.source)}: the resolution was "ask", ` +
        (guivm ? 'but no way to reach its GuiVM is configured' : 'but source domain has no GuiVM'),
    );
    rec.askAnswer = 'no-guivm';
    rec.reason = 'ask without a GuiVM';
    return rec.done(DENY_REPLY);
  }
  const params = {
    source: ask.request.source,
    service: ask.request.service,
    argument: ask.request.argument,
    targets: ask.targetsForAsk,
    default_target: ask.defaultTarget ?? '',
    icons: askIcons(info),
  };
  return ctx.gui.call(guivm, 'policy.Ask', params, ctx.askTimeoutMs).then(
    (answer) => {
      if (answer === 'deny') {
        rec.askAnswer = 'deny';
        return denied(refuseAsk(ask), req, info, ctx, rec, false);
      }
      if (answer.startsWith('allow:')) {
        rec.askAnswer = 'allow:' + safe(answer.slice(6), 100);
        const r = answerAsk(ask, answer.slice(6));
        return r.result === 'allow'
          ? allowed(r, req, info, ctx, rec, false)
          : denied(r, req, info, ctx, rec, false);
      }
      ctx.log.error(`invalid ask response for ${safe(ask.request.service)}: ${safe(answer)}`);
      rec.askAnswer = 'invalid';
      rec.reason = 'invalid ask response';
      return rec.done(DENY_REPLY);
    },
    (e: unknown) => {
      ctx.log.error(`${rec.logPrefix} ask in ${safe(guivm)} failed, denying: ${(e as Error).message}`);
      rec.askAnswer = /no answer within/.test((e as Error).message) ? 'timeout' : 'error';
      rec.reason = `ask failed: ${(e as Error).message}`;
      return rec.done(DENY_REPLY);
    },
  );
}

/** Icons for the ask dialog: every qube's icon, and `@dispvm:NAME` for disposable templates (app → disp). */
export function askIcons(info: SystemInfo): Record<string, string | null> {
  const icons: Record<string, string | null> = Object.create(null) as Record<string, string | null>;
  for (const name of info.names) {
    const d = info.domains.get(name);
    if (d) icons[name] = d.icon;
  }
  for (const name of info.names) {
    const d = info.domains.get(name);
    if (d?.template_for_dispvms) icons['@dispvm:' + name] = d.icon === null ? null : d.icon.replaceAll('app', 'disp');
  }
  return icons;
}

/**
 * Fire-and-forget `policy.Notify` calls, bounded: at most `maxInFlight` at
 * once (more are logged and dropped), each with a deadline. A failing agent
 * is logged, never allowed to delay or change a decision.
 */
export class Notifier {
  private inFlight = 0;

  constructor(
    private readonly gui: GuiServiceCaller | null,
    private readonly log: Logger,
    private readonly timeoutMs = 5000,
    private readonly maxInFlight = 64,
  ) {}

  send(guivm: string, params: Record<string, string>): void {
    if (this.gui === null) return;
    if (this.inFlight >= this.maxInFlight) {
      this.log.warning(`dropping notification for ${safe(params['service'] ?? '')}: ${this.inFlight} already pending`);
      return;
    }
    this.inFlight++;
    this.gui.call(guivm, 'policy.Notify', params, this.timeoutMs).then(
      () => {
        this.inFlight--;
      },
      (e: unknown) => {
        this.inFlight--;
        this.log.warning(`error calling qrexec-policy-agent in ${safe(guivm)}: ${(e as Error).message}`);
      },
    );
  }

  get pending(): number {
    return this.inFlight;
  }
}
