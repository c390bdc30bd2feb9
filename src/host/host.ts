/**
 * The dom0 side in one process (ARCHITECTURE: one event loop, all qubes):
 * the policy daemon — its socket still served for other clients — and the
 * qrexec daemons of every qube. A qube's call is decided by the policy
 * daemon in this process: the same request text, parser, decision, audit
 * record and ask/notify routing as over the socket, without the socket's
 * connection and two process hops.
 */
import { createQubeDaemons, parsePolicyResponse, formatPolicyRequest, type PolicyOutcome, type PolicyQuery, type QubeDaemon, type QubeSpec } from '../daemon/index.js';
import { createLogger, startDaemon, type DaemonConfig, type RunningDaemon, type GuiServiceCaller, type Logger } from '../policyd/index.js';
import type { VchanEnv } from '../vchan/index.js';
import { startPolicyApi, type PolicyApiConfig, type RunningPolicyApi } from '../policyapi/host.js';

export interface HostConfig {
  /** The policy daemon's configuration (its command line). */
  readonly policy: DaemonConfig;
  /** The qubes served; at least one. */
  readonly qubes: readonly QubeSpec[];
  /** Directory of the `qrexec.<domid|name|uuid:…>` client sockets. */
  readonly socketDir: string;
  readonly vchan: VchanEnv;
  /** Where services addressed to dom0 are looked up. */
  readonly servicePath: readonly string[];
  /** qubesd's Admin API socket for autostart and DispVMs; undefined: such calls are refused. */
  readonly qubesdSocket?: string;
  /** The Policy API (policy.List/Get/Replace/...); undefined: not served. */
  readonly policyApi?: PolicyApiConfig;
}

export interface RunningHost {
  readonly policyDaemon: RunningDaemon;
  readonly policyApi: RunningPolicyApi | null;
  readonly qubes: readonly QubeDaemon[];
  /** Resolves once every qube's agent has connected (waits as long as it takes). */
  readonly connected: Promise<void>;
  close(): Promise<void>;
}

/** Decides a qube's call through the policy daemon of this process. */
export function inProcessPolicy(daemon: RunningDaemon, log: Logger): (q: PolicyQuery) => Promise<PolicyOutcome> {
  return async (q) => {
    const reply = await daemon.server.answer(formatPolicyRequest(q));
    if (reply === null) return { result: 'error', reason: 'the policy daemon rejected the request' };
    return parsePolicyResponse(Buffer.from(reply, 'utf8'), (m) => log.error(m));
  };
}

export async function startHost(cfg: HostConfig, hooks: { log?: Logger; gui?: GuiServiceCaller | null } = {}): Promise<RunningHost> {
  if (cfg.qubes.length === 0) throw new Error('a host serves at least one qube');
  const policyDaemon = await startDaemon(cfg.policy, { log: hooks.log ?? createLogger('qrexec-host', { level: cfg.policy.logLevel }), ...(hooks.gui !== undefined ? { gui: hooks.gui } : {}) });
  const log = policyDaemon.log;
  let qubes: QubeDaemon[];
  let policyApi: RunningPolicyApi | null = null;
  try {
    if (cfg.policyApi) policyApi = await startPolicyApi(policyDaemon, cfg.policy.policyDirs, cfg.policy.legacyDir, cfg.policyApi);
    qubes = createQubeDaemons(cfg.qubes, {
      socketDir: cfg.socketDir,
      vchan: cfg.vchan,
      policySocket: cfg.policy.socketPath,
      policyProgram: '/nonexistent', // never used: decisions are made in this process
      servicePath: cfg.servicePath,
      startupTimeoutMs: 0,
      log: (level, msg) => log[level](msg),
      policy: inProcessPolicy(policyDaemon, log),
      ...(cfg.qubesdSocket !== undefined ? { qubesdSocket: cfg.qubesdSocket } : {}),
      ...(policyApi ? { inProcessServices: policyApi.services } : {}),
    });
  } catch (e) {
    await policyApi?.close();
    await policyDaemon.close();
    throw e;
  }
  const connected = Promise.all(qubes.map((d) => d.start())).then(() => undefined);
  connected.catch((e: Error) => log.error(`qube startup: ${e.message}`));
  return {
    policyDaemon,
    policyApi,
    qubes,
    connected,
    close: async () => {
      await Promise.all(qubes.map((d) => d.stop()));
      await policyApi?.close();
      await policyDaemon.close();
    },
  };
}
