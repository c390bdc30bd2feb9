/**
 * The Policy API in the host process: a PolicyAdmin over the policy the
 * daemon loads, whose accepted changes are audited and adopted by the daemon
 * at once; its services for qubes (in-process dom0 services) and dom0 (the
 * socket).
 */
import type { AuditLog } from '../audit/index.js';
import type { InProcessServices } from '../daemon/index.js';
import type { RunningDaemon } from '../policyd/index.js';
import { PolicyAdmin, type ChangeCheck, type ExtraService, type PolicyChange } from './admin.js';
import { inProcessServices, PolicyApiSocket } from './server.js';
import { diffService, evalService } from './extra.js';
import { delegationCheck } from './delegation.js';
import { policyTestsCheck } from './policy-tests.js';
import { historyService, PolicyHistory, showService, type HistoryOptions } from './history.js';
import * as path from 'node:path';
import type { SystemInfo } from '../policy/index.js';

export interface PolicyApiConfig {
  /** The directory edited (default: the last policy directory, /etc/qubes/policy.d). */
  readonly dir?: string;
  /** dom0 clients' socket; null: none. */
  readonly socketPath: string | null;
  readonly checks?: readonly ChangeCheck[];
  readonly extra?: ReadonlyMap<string, ExtraService>;
  readonly onChange?: (c: PolicyChange) => void;
  /** Where the history is kept (default: DIR-history beside the policy directory); null: none. */
  readonly history?: HistoryOptions | null;
}

export interface RunningPolicyApi {
  readonly admin: PolicyAdmin;
  readonly services: InProcessServices;
  close(): Promise<void>;
}

/** The audit record of a change: mode `policy_admin`, the file as rule, the tokens as reason. */
export function auditChange(audit: AuditLog, c: PolicyChange, log: (m: string) => void): void {
  audit.append(
    {
      timeMs: c.timeMs,
      client: c.caller,
      mode: 'policy_admin',
      source: c.caller,
      requestedSource: null,
      intendedTarget: 'dom0',
      target: null,
      service: c.service,
      argument: '+' + c.name,
      action: 'allow',
      result: 'allow',
      rule: c.file,
      askAnswer: null,
      reason: `old=${c.oldToken ?? 'none'} new=${c.newToken ?? 'removed'}`,
      durationUs: 0,
    },
    (err) => {
      if (err) log(`cannot audit the policy change of ${c.file}: ${err.message}`);
    },
  );
}

export async function startPolicyApi(daemon: RunningDaemon, policyDirs: readonly string[], legacyDir: string, cfg: PolicyApiConfig): Promise<RunningPolicyApi> {
  const log = daemon.log;
  const dir = cfg.dir ?? policyDirs[policyDirs.length - 1];
  if (dir === undefined) throw new Error('the Policy API needs a policy directory');
  const extra = new Map<string, ExtraService>(cfg.extra ?? []);
  const info = (): SystemInfo | Promise<SystemInfo> => daemon.systemInfo.get();
  let latestInfo: SystemInfo | null = null;
  const history = cfg.history === null ? null : new PolicyHistory(cfg.history ?? { dir: `${path.resolve(dir)}-history` });
  const admin: PolicyAdmin = new PolicyAdmin({
    dir,
    extra,
    access: [delegationCheck(dir)],
    checks: [policyTestsCheck(dir, () => latestInfo), ...(cfg.checks ?? [])],
    beforeWrite: async () => {
      try {
        latestInfo = await info();
      } catch (e) {
        log.warning(`policy API: no system info for the policy tests: ${(e as Error).message}`);
      }
    },
    current: () => {
      const s = daemon.store.current;
      return s.ok ? s.policy : null;
    },
    policyDirs,
    legacyDir,
    log: (level, m) => log[level](`policy API: ${m}`),
    onChange: (c, policy) => {
      daemon.store.adopt(policy);
      if (daemon.audit) auditChange(daemon.audit, c, (m) => log.error(m));
      try {
        history?.record(c);
      } catch (e) {
        log.error(`policy API: cannot record the change of ${c.file} in the history: ${(e as Error).message}`);
      }
      cfg.onChange?.(c);
    },
  });
  extra.set('policy.Eval', evalService(admin, info));
  extra.set('policy.Diff', diffService(admin, 'policy', info));
  extra.set('policy.include.Diff', diffService(admin, 'include', info));
  if (history) {
    extra.set('policy.History', historyService(history, 'policy'));
    extra.set('policy.include.History', historyService(history, 'include'));
    extra.set('policy.Show', showService(history));
  }
  let sock: PolicyApiSocket | null = null;
  if (cfg.socketPath !== null) {
    sock = new PolicyApiSocket(admin, (m) => log.warning(m));
    await sock.listen(cfg.socketPath);
  }
  return { admin, services: inProcessServices(admin), close: async () => sock?.close() };
}
