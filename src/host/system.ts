/**
 * The host process (docs/ARCHITECTURE.md): qubesd, the policy daemon and
 * the qrexec daemon of every running qube in one process and one event loop.
 *
 * - qubesd's registry, lifecycle and system info are called directly: the
 *   policy daemon reads system info from qubesd's cache (no socket, no event
 *   stream), a qrexec daemon's autostart and `@dispvm` calls (admin.vm.Start,
 *   CreateDisposable, Kill) are dispatched to qubesd's Admin API in-process
 *   with source dom0, as they would arrive on its socket.
 * - A qube started by qubesd gets an in-process qrexec daemon as its host
 *   side (the runtime's {@link HostSide}); it is Running once that daemon
 *   has done its handshake with the agent. The daemons of running qubes know
 *   each other (QubeHost), so a call between qubes is set up with a function
 *   call.
 * - Every socket is still served for the programs outside: qubesd's three
 *   (the qvm-* tools, the real Python tools), the policy daemon's, the
 *   qrexec.NAME sockets (qrexec-client), the Policy API's.
 *
 * Layout: DATA/qubes.db (registry), DATA/qubes/NAME/ (volumes),
 * DATA/policy.d/ (policy), DATA/policy-audit.db; RUN/ holds the sockets,
 * RUN/qrexec/, RUN/vchan/ and RUN/host.json ({@link HOST_INFO_FILE}).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AirDom0, type QubeFacts } from '../air/dom0.js';
import { PEER_FEATURE } from '../air/config.js';
import { QubeDaemon, QubeHost, type QubesdCaller } from '../daemon/index.js';
import type { InProcessServices } from '../daemon/dom0.js';
import { QubesdCallError, QubesdError } from '../qubesd-client/call.js';
import { parseSystemInfo, type SystemInfo } from '../policy/index.js';
import { daemonConfig, parseDaemonArgs, startDaemon, type GuiServiceCaller, type Logger, type RunningDaemon, type SystemInfoSource } from '../policyd/index.js';
import { startPolicyApi, type RunningPolicyApi } from '../policyapi/host.js';
import { ADMIN_METHODS, ADMIN_SOCKET, SERVICE_DIR, dispatch, startQubesd, type Qubesd } from '../qubesd/index.js';
import type { Qube } from '../qubesd/registry.js';
import { runtimeFromOptions } from '../runtime/select.js';
import { DOM0_SERVICE_DIR } from '../runtime/shipped.js';
import type { HostSide, Runtime } from '../runtime/types.js';
import { inProcessPolicy } from './host.js';
import { AUDIT_QUERY_SERVICE, auditQueryService } from './audit-service.js';
import { QrexecError } from '../common/errors.js';
import { HOST_INFO_FILE, readHostInfo, type HostInfo } from '../common/local-host.js';

/** The host cannot start (another one runs with this run directory...). */
export class HostError extends QrexecError {
  override name = 'HostError';
}

export interface SystemConfig {
  readonly dataDir: string;
  readonly runDir: string;
  /** `bwrap` (falls back to `process` loudly when it cannot run), `process` or `none`. */
  readonly runtime: string;
  readonly log: Logger;
  /** Where policy.Ask / policy.Notify for a GUI domain go (default: the policy daemon's socket routes). */
  readonly gui?: GuiServiceCaller;
  /** Show the daemons' and sandboxes' logs. */
  readonly debug?: boolean;
  /** The loud runtime fallback warning (default: log.warning). */
  readonly warn?: (msg: string) => void;
  /** Extra dom0 service directories (after RUN/qubes-rpc). */
  readonly servicePath?: readonly string[];
}

export interface RunningSystem {
  readonly qubesd: Qubesd;
  readonly policyDaemon: RunningDaemon;
  readonly policyApi: RunningPolicyApi;
  readonly runtime: Runtime | null;
  readonly info: HostInfo;
  /** dom0's Admin API calls, in-process (the qrexec daemons' contract). */
  readonly call: QubesdCaller;
  /** The in-process daemons of the qubes running now, by name. */
  daemon(name: string): QubeDaemon | undefined;
  /** Start every qube with autostart=True (and their netvms), then preload disposables; failures are logged. */
  autostart(): Promise<void>;
  /** Shut every running qube down (clients before their netvms), then stop everything. */
  close(): Promise<void>;
}

/** The policy daemon reads qubesd's system info cache: parsed again only when the document changed. */
function qubesdSystemInfo(q: Qubesd): SystemInfoSource {
  let json = '';
  let info: SystemInfo | null = null;
  return {
    get: () => {
      const j = q.systemInfo.json();
      if (info === null || j !== json) {
        info = parseSystemInfo(JSON.parse(j) as unknown);
        json = j;
      }
      return info;
    },
    close: () => undefined,
  };
}

const NEVER = new Promise<void>(() => undefined);

/** Admin API calls as dom0 dispatched in-process, with qubesdCall's contract. */
export function inProcessQubesd(q: Qubesd): QubesdCaller {
  return async (method, dest, opts) => {
    let d = dest;
    if (opts.keywordDest === true && dest.startsWith('@')) {
      if (dest !== '@adminvm') throw new QubesdError(method, dest, 'ProtocolError', 'unsupported keyword destination');
      d = 'dom0';
    }
    const out = await dispatch(
      q.ctx,
      ADMIN_METHODS,
      { method, arg: opts.arg ?? '', src: Buffer.from('dom0'), dest: Buffer.from(d, 'latin1'), payload: Buffer.from(opts.payload ?? new Uint8Array()) },
      () => undefined,
      NEVER,
    );
    if ('ok' in out) return Buffer.from(out.ok ?? '', 'utf8');
    if ('error' in out) throw new QubesdError(method, dest, out.error.excType, out.error.message);
    throw new QubesdCallError(method, 'BAD_REPLY', 'qubesd refused the request');
  };
}

/** The host's dom0-side paths under RUN. */
function runPaths(runDir: string): { qrexec: string; vchan: string; policySock: string; apiSock: string; rpc: string } {
  return {
    qrexec: path.join(runDir, 'qrexec'),
    vchan: path.join(runDir, 'vchan'),
    policySock: path.join(runDir, 'policy.sock'),
    apiSock: path.join(runDir, 'policy-admin.sock'),
    rpc: path.join(runDir, SERVICE_DIR),
  };
}

export async function startSystem(cfg: SystemConfig): Promise<RunningSystem> {
  const log = cfg.log;
  fs.mkdirSync(cfg.dataDir, { recursive: true, mode: 0o700 });
  fs.mkdirSync(cfg.runDir, { recursive: true, mode: 0o700 });
  const other = readHostInfo(cfg.runDir);
  if (other && other.pid !== process.pid) throw new HostError(`another host (pid ${other.pid}) runs with ${cfg.runDir}`);
  const rp = runPaths(cfg.runDir);
  const policyDir = path.join(cfg.dataDir, 'policy.d');
  fs.mkdirSync(policyDir, { recursive: true });
  // what a host killed with -9 left: qrexec sockets, vchan sockets, host.json
  // (qubesd's and the policy daemon's sockets are replaced, netns/veths and
  // cgroups are removed by the bwrap runtime, mounts died with the sandboxes)
  fs.rmSync(rp.qrexec, { recursive: true, force: true });
  fs.rmSync(rp.vchan, { recursive: true, force: true });
  fs.rmSync(path.join(cfg.runDir, HOST_INFO_FILE), { force: true });
  fs.mkdirSync(rp.qrexec, { recursive: true });

  const daemons = new Map<string, QubeDaemon>();
  const qubeHost = new QubeHost();
  // set once the policy daemon and qubesd are up; no qube starts before
  let late: { policy: RunningDaemon; api: RunningPolicyApi; call: QubesdCaller; air: AirDom0; services: InProcessServices } | null = null;
  const servicePath = [rp.rpc, ...(cfg.servicePath ?? []), DOM0_SERVICE_DIR];
  const hostSide: HostSide = (q, vchan) => {
    if (!late) throw new Error('the host is not up yet');
    const l = late;
    const d = new QubeDaemon({
      domid: q.domid,
      name: q.name,
      uuid: q.uuid,
      defaultUser: q.defaultUser,
      socketDir: rp.qrexec,
      vchan: { dir: vchan.dir, ownDomain: 0, ...(vchan.layout === 'per-domain' ? { layout: 'per-domain' as const } : {}) },
      policySocket: rp.policySock,
      policyProgram: '/nonexistent', // decisions are made in this process
      servicePath,
      startupTimeoutMs: q.timeoutMs,
      log: (level, msg) => log[level](msg),
      policy: l.air.wrapPolicy(inProcessPolicy(l.policy, log)),
      host: qubeHost,
      qubesd: l.call,
      inProcessServices: l.services,
    });
    qubeHost.add(d);
    daemons.set(q.name, d);
    const connected = d.start();
    connected.catch(() => undefined);
    let stopped: Promise<void> | null = null;
    return {
      connected,
      stop: () =>
        (stopped ??= (async () => {
          qubeHost.remove(d);
          if (daemons.get(q.name) === d) daemons.delete(q.name);
          await d.stop();
        })()),
    };
  };
  const warn = cfg.warn ?? ((m: string) => log.warning(m.trimEnd()));
  const runtime = runtimeFromOptions(cfg.runtime, {
    dataDir: cfg.dataDir,
    runDir: cfg.runDir,
    hostSide,
    warn,
    ...(cfg.debug ? { debug: true, log: (m: string) => log.info(`runtime: ${m}`) } : {}),
  });
  let qubesd: Qubesd;
  try {
    qubesd = await startQubesd({
      dataDir: cfg.dataDir,
      runDir: cfg.runDir,
      runtime,
      // after the host is up and has autostarted its qubes (see autostart below)
      startPreload: false,
      log: (level, msg) => {
        if (level !== 'info' || cfg.debug) log[level](`qubesd: ${msg}`);
      },
      // what qubes see through the Admin API is filtered by the policy the daemon decides with
      policy: () => {
        const st = late?.policy.store.current;
        return st?.ok ? st.policy : null;
      },
    });
  } catch (e) {
    await runtime?.close();
    throw e;
  }
  const call = inProcessQubesd(qubesd);
  let policy: RunningDaemon | undefined;
  let api: RunningPolicyApi | undefined;
  try {
    const pcfg = daemonConfig(
      parseDaemonArgs([
        '--policy-path', policyDir,
        '--socket-path', rp.policySock,
        '--eval-socket-path', path.join(rp.rpc, 'policy.EvalSimple'),
        '--gui-socket-path', path.join(rp.rpc, 'policy.EvalGUI'),
        '--audit-db', path.join(cfg.dataDir, 'policy-audit.db'),
        '--rpc-dir', rp.rpc,
        '--qrexec-client', 'none',
        '--log-level', cfg.debug ? 'info' : 'warning',
      ]),
    );
    policy = await startDaemon(pcfg, { log, systemInfo: qubesdSystemInfo(qubesd), ...(cfg.gui ? { gui: cfg.gui } : {}) });
    api = await startPolicyApi(policy, pcfg.policyDirs, pcfg.legacyDir, { socketPath: rp.apiSock, dir: policyDir });
  } catch (e) {
    await api?.close();
    await policy?.close();
    await qubesd.close();
    throw e;
  }
  const policyDaemon = policy;
  const policyApi = api;
  // Qubes Air (src/air/dom0.ts): qubesair.Sign/Verify and the relayed-call check in front of the policy
  const air = new AirDom0({ dataDir: cfg.dataDir, lookup: (n) => airFacts(qubesd, n), audit: (r) => policyDaemon.audit?.append(r, () => undefined), log: (m) => log.warning(m) });
  // the Policy API's services, Qubes Air's and audit.Query (the GUI domain's audit view)
  const services: InProcessServices = new Map([...policyApi.services, ...air.services, [AUDIT_QUERY_SERVICE, auditQueryService(path.join(cfg.dataDir, 'policy-audit.db'))]]);
  late = { policy: policyDaemon, api: policyApi, call, air, services };
  const info: HostInfo = {
    pid: process.pid,
    dataDir: path.resolve(cfg.dataDir),
    runDir: path.resolve(cfg.runDir),
    runtime: runtime?.name ?? 'none',
    qubesdSocket: path.resolve(cfg.runDir, ADMIN_SOCKET),
    qrexecSocketDir: path.resolve(rp.qrexec),
    vchanDir: path.resolve(rp.vchan),
    vchanLayout: runtime?.name === 'bwrap' ? 'per-domain' : 'flat',
    policySocket: path.resolve(rp.policySock),
    policyApiSocket: path.resolve(rp.apiSock),
    policyDir: path.resolve(policyDir),
  };
  fs.writeFileSync(path.join(cfg.runDir, HOST_INFO_FILE), JSON.stringify(info, null, 1) + '\n');

  let closing: Promise<void> | null = null;
  return {
    qubesd,
    policyDaemon,
    policyApi,
    runtime,
    info,
    call,
    daemon: (name) => daemons.get(name),
    autostart: async () => {
      const want = qubesd.registry.list().filter((q) => q.klass !== 'AdminVM' && q.get('autostart') === true && q.power === 'Halted');
      await Promise.all(
        want.map((q) =>
          qubesd.lifecycle.start(q).catch((e: Error) => {
            log.error(`autostart of ${q.name} failed: ${e.message}`);
          }),
        ),
      );
      // then the preloaded disposables (qubes-preload-dispvm.service runs after the autostart of qubes)
      qubesd.lifecycle.preloader.start();
    },
    close: () =>
      (closing ??= (async () => {
        await shutdownAll(qubesd, log);
        fs.rmSync(path.join(cfg.runDir, HOST_INFO_FILE), { force: true });
        await policyApi.close();
        await policyDaemon.close();
        await qubesd.close();
      })()),
  };
}

/** What Qubes Air's dom0 side needs of a qube, from the registry. */
function airFacts(q: Qubesd, name: string): QubeFacts | undefined {
  const x = q.registry.byName(name);
  if (!x) return undefined;
  const str = (p: string): string | null => {
    const v = x.get(p);
    return typeof v === 'string' && v !== '' ? v : null;
  };
  return { klass: x.klass, relayvm: str('relayvm'), remoteName: str('remote_name'), peer: x.features.get(PEER_FEATURE) };
}

/**
 * Shut the running qubes down as qvm-shutdown --all --wait does: the qubes
 * no running qube uses as its netvm first, then their netvms. Anything still
 * running after `timeoutMs` is killed by qubesd's close.
 */
async function shutdownAll(q: Qubesd, log: Logger, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  // no refill of preloaded disposables while they stop
  q.lifecycle.preloader.close();
  const running = (): Qube[] => q.registry.list().filter((x) => x.klass !== 'AdminVM' && x.power !== 'Halted');
  for (let left = running(); left.length > 0 && Date.now() < end; left = running()) {
    const used = new Set(left.map((x) => x.get('netvm')).filter((n) => typeof n === 'string'));
    const leaves = left.filter((x) => !used.has(x.name));
    const batch = leaves.length > 0 ? leaves : left;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(
        batch.map((x) =>
          q.lifecycle.shutdown(x, true, true).catch((e: Error) => {
            if (x.power !== 'Halted') log.warning(`shutdown of ${x.name}: ${e.message}`);
          }),
        ),
      ),
      new Promise((r) => (timer = setTimeout(r, Math.max(0, end - Date.now())))),
    ]);
    clearTimeout(timer);
  }
}
