/**
 * The `bwrap` backend of {@link Runtime}: every qube a bubblewrap sandbox
 * (src/runtime/sandbox), its volumes under `<dataDir>/qubes/<name>/`, its
 * vchan directory `<runDir>/vchan/<domid>/` (the host side must use
 * VCHAN_SOCKET_DIR=<runDir>/vchan with VCHAN_SOCKET_LAYOUT=per-domain, see
 * {@link BwrapRuntime.hostVchanEnv}). A TemplateVM or StandaloneVM missing on
 * disk is made at its first start from the host's /usr and /etc (the default
 * template); an AppVM's missing template likewise.
 *
 * The netvm, provides_network, maxmem, vcpus and a DispVM's template chain
 * come with the QubeLaunch qubesd passes; the optional `describe` callback
 * (tests without a registry) overrides them.
 *
 * A started qube's host side (its qrexec daemon) is the `hostSide` given:
 * in-process daemons in the host process, a `qrexec-daemon` child under
 * qubesd alone; without one (sandbox tests) a start is ready when the agent
 * is (`readyOn`).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { HostSide, HostSideHandle, QubeExit, QubeLaunch, RunningQube, Runtime } from './types.js';
import { RuntimeError } from './types.js';
import {
  Sandbox,
  SandboxError,
  VchanLinks,
  cleanStaleCgroups,
  cleanStaleNetns,
  connectUplink,
  createNetns,
  destroyNetwork,
  ensureStandalone,
  ensureTemplate,
  makeNetvm,
  networkAvailable,
  privateDir,
  qubeDir,
  readVolumeInfo,
  sandboxSupport,
  waitAgentReady,
  type Limits,
  type NetworkOptions,
  type QubeNetwork,
  type QubeVolumes,
} from './sandbox/index.js';

/** What the backend may learn about a qube beyond QubeLaunch. */
export interface QubeDescription {
  readonly klass: string;
  readonly template: string | null;
  /** The netvm's name, or null for none. */
  readonly netvm?: string | null;
  readonly providesNetwork?: boolean;
  readonly maxmemMb?: number;
  readonly vcpus?: number;
  /** Its address and gateway (visible_ip, visible_gateway); without them, a /30 of the backend's pool. */
  readonly ip?: string | null;
  readonly gateway?: string | null;
}

export interface BwrapRuntimeOptions {
  readonly dataDir: string;
  readonly runDir: string;
  /** Looks a qube up (by name) in the registry. */
  readonly describe?: (name: string) => QubeDescription | undefined;
  /** Default limits (maxmem 4000 MB, 2 vcpus, 4096 pids, as Qubes' defaults but pids). */
  readonly defaultLimits?: Limits;
  readonly log?: (msg: string) => void;
  /**
   * Without `hostSide`, when a start is ready: `handshake` (default: a host
   * side served elsewhere has connected to the agent) or `listening` (the
   * agent listens for it).
   */
  readonly readyOn?: 'handshake' | 'listening';
  /** Serves each started qube's host side; ready once it has connected to the agent. */
  readonly hostSide?: HostSide;
}

/** What a QubeLaunch says about the qube. */
function launchDescription(q: QubeLaunch): QubeDescription {
  return {
    klass: q.klass,
    template: q.template,
    ...(q.netvm !== undefined ? { netvm: q.netvm } : {}),
    ...(q.providesNetwork !== undefined ? { providesNetwork: q.providesNetwork } : {}),
    ...(q.maxmemMb ? { maxmemMb: q.maxmemMb } : {}),
    ...(q.vcpus ? { vcpus: q.vcpus } : {}),
    ...(q.ip ? { ip: q.ip } : {}),
    ...(q.gateway ? { gateway: q.gateway } : {}),
  };
}

/**
 * The short prefix of the names of a run directory's host resources: its
 * network namespaces, host veths and cgroups (unique per run directory, so
 * that a start cleans only its own stale ones).
 */
export function resourcePrefix(runDir: string): string {
  let h = 0;
  for (const c of path.resolve(runDir)) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return `q${(h % 46656).toString(36)}-`;
}

const DEFAULT_LIMITS: Limits = { memoryBytes: 4000 * 1024 * 1024, cpus: 2, pids: 4096 };

/** Why bwrap cannot run here, or undefined when it can. */
export function bwrapUnavailable(): string | undefined {
  const s = sandboxSupport();
  return s.ok ? undefined : s.reason;
}

interface Active {
  readonly sb: Sandbox;
  readonly network?: QubeNetwork;
  readonly domid: number;
}

export class BwrapRuntime implements Runtime {
  readonly name = 'bwrap';
  private readonly links: VchanLinks;
  private readonly active = new Map<string, Active>();
  private readonly net: NetworkOptions;
  private readonly log: (msg: string) => void;

  constructor(private readonly opts: BwrapRuntimeOptions) {
    const why = bwrapUnavailable();
    if (why) throw new RuntimeError(`the bwrap backend cannot run here: ${why}`);
    this.log = opts.log ?? (() => undefined);
    fs.mkdirSync(this.vchanRoot, { recursive: true, mode: 0o700 });
    this.links = new VchanLinks(this.vchanRoot);
    this.net = { prefix: resourcePrefix(opts.runDir) };
    // leftovers of a host that died (kill -9): network namespaces and veths; mounts died with their namespaces
    if (networkAvailable().ok) {
      const n = cleanStaleNetns(this.net.prefix);
      if (n) this.log(`removed ${n} stale network namespaces/links`);
    }
    const g = cleanStaleCgroups(this.net.prefix);
    if (g) this.log(`removed ${g} stale cgroups`);
    fs.rmSync(path.join(opts.runDir, 'sandboxes'), { recursive: true, force: true });
  }

  get vchanRoot(): string {
    return path.join(this.opts.runDir, 'vchan');
  }

  /** The environment the host side (qrexec daemons, qrexec-client) needs to reach these qubes. */
  hostVchanEnv(): Record<string, string> {
    return { VCHAN_SOCKET_DIR: this.vchanRoot, VCHAN_DOMAIN: '0', VCHAN_SOCKET_LAYOUT: 'per-domain' };
  }

  private volumesOf(q: QubeLaunch, d: QubeDescription): QubeVolumes {
    const data = this.opts.dataDir;
    switch (q.klass) {
      case 'TemplateVM':
        ensureTemplate(data, q.name, { kind: 'host' });
        return { klass: 'TemplateVM', name: q.name };
      case 'StandaloneVM':
        if (q.template) {
          if (!readVolumeInfo(data, q.template)) ensureTemplate(data, q.template, { kind: 'host' });
          ensureStandalone(data, q.name, q.template);
        } else ensureTemplate(data, q.name, { kind: 'host' });
        return { klass: 'StandaloneVM', name: q.name };
      case 'DispVM': {
        // a DispVM's template is its dispvm template (an AppVM); the root is that AppVM's template
        const dvm = q.template;
        const root = dvm ? (this.opts.describe?.(dvm)?.template ?? q.rootTemplate) : undefined;
        if (!dvm || !root) throw new RuntimeError(`DispVM ${q.name}: its dispvm template${dvm ? ` ${dvm}` : ''} and that one's template are needed`);
        if (!readVolumeInfo(data, root)) ensureTemplate(data, root, { kind: 'host' });
        return { klass: 'DispVM', name: q.name, template: root, dispvmTemplate: dvm };
      }
      case 'AppVM': {
        const t = q.template ?? d.template;
        if (!t) throw new RuntimeError(`AppVM ${q.name} has no template`);
        if (!readVolumeInfo(data, t)) ensureTemplate(data, t, { kind: 'host' });
        return { klass: 'AppVM', name: q.name, template: t };
      }
      default:
        throw new RuntimeError(`the bwrap backend cannot run a ${q.klass}`);
    }
  }

  private network(q: QubeLaunch, d: QubeDescription): QubeNetwork | undefined {
    const wantsUplink = d.netvm ? 'netvm' : d.providesNetwork ? 'host' : undefined;
    if (!wantsUplink && !d.providesNetwork) return undefined;
    const can = networkAvailable();
    if (!can.ok) throw new RuntimeError(`${q.name} needs a network namespace: ${can.reason}`);
    let n = createNetns(this.net, q.domid);
    try {
      if (d.netvm) {
        const up = this.active.get(d.netvm)?.network;
        if (!up) throw new RuntimeError(`${q.name}: its netvm ${d.netvm} is not running with a network`);
        // as on Qubes: the qube's own /32 (10.137.0.<qid>, 10.138.x for DispVMs), its netvm's IP as gateway
        const ip = d.ip ?? q.ip;
        const gateway = d.gateway ?? q.gateway;
        n = connectUplink(this.net, n, q.domid, up, ip && gateway ? { ip, gateway } : undefined);
      } else if (d.providesNetwork) n = connectUplink(this.net, n, q.domid, 'host');
      if (d.providesNetwork) makeNetvm(n);
      return n;
    } catch (e) {
      destroyNetwork(this.net, n, q.domid);
      throw e;
    }
  }

  start(q: QubeLaunch): RunningQube {
    if (this.active.has(q.name)) throw new RuntimeError(`${q.name} is already running`);
    const d = this.opts.describe?.(q.name) ?? launchDescription(q);
    let resolveExit: (x: QubeExit) => void = () => undefined;
    const exited = new Promise<QubeExit>((r) => (resolveExit = r));
    let sbRef: Sandbox | undefined;
    let stopping: Promise<unknown> | undefined;
    let netRef: QubeNetwork | undefined;
    let host: HostSideHandle | undefined;
    const cleanup = (): void => {
      void host?.stop();
      if (netRef) destroyNetwork(this.net, netRef, q.domid);
      this.links.remove(q.domid);
      this.active.delete(q.name);
    };
    // the host side first: its daemon marks itself stopping at once (it then sees no agent
    // "disconnect" of a qube being stopped) and closes its sockets while the sandbox is killed
    const stop = (): Promise<unknown> => {
      stopping ??= (async () => {
        const h = host?.stop();
        await Promise.all([h, sbRef?.stop()]);
      })().catch((e: Error) => this.log(`${q.name}: stop: ${e.message}`));
      return stopping;
    };
    const ready = (async (): Promise<void> => {
      const volumes = this.volumesOf(q, d);
      netRef = this.network(q, d);
      const vchanDir = this.links.add(q.domid);
      const limits: Limits = {
        ...(this.opts.defaultLimits ?? DEFAULT_LIMITS),
        ...(d.maxmemMb ? { memoryBytes: d.maxmemMb * 1024 * 1024 } : {}),
        ...(d.vcpus ? { cpus: d.vcpus } : {}),
      };
      const sb = await Sandbox.start({
        name: q.name,
        domid: q.domid,
        volumes,
        dataDir: this.opts.dataDir,
        runDir: path.join(this.opts.runDir, 'sandboxes', q.name),
        cgroupName: `${this.net.prefix}${q.name}`,
        vchanDir,
        limits,
        ...(netRef ? { network: netRef } : {}),
        log: (l) => this.log(`${q.name}: ${l}`),
      });
      sbRef = sb;
      this.active.set(q.name, { sb, domid: q.domid, ...(netRef ? { network: netRef } : {}) });
      void sb.exited.then(async (x) => {
        await stop();
        cleanup();
        resolveExit({ code: x.code, signal: x.signal });
      });
      if (this.opts.hostSide) {
        host = this.opts.hostSide(q, { dir: this.vchanRoot, layout: 'per-domain' });
        await untilConnected(host, sb, q);
        // and its agent socket open (qrexec-client-vm in the qube), which follows the handshake
        await waitAgentReady(sb, q.timeoutMs);
      } else await waitAgentReady(sb, q.timeoutMs, { listening: this.opts.readyOn === 'listening' });
    })().catch((e: unknown) => {
      void stop().then(() => {
        cleanup();
        resolveExit({ code: null, signal: null });
      });
      throw e instanceof SandboxError ? new RuntimeError(e.message) : e;
    });
    ready.catch(() => undefined);
    return {
      ready,
      exited,
      shutdown: () => void stop(),
      kill: () => void stop(),
      pause: () => void sbRef?.pause().catch((e: Error) => this.log(`${q.name}: pause: ${e.message}`)),
      unpause: () => void sbRef?.unpause().catch((e: Error) => this.log(`${q.name}: unpause: ${e.message}`)),
    };
  }

  /**
   * private: its private directory (a DispVM's is a throw-away overlay on a
   * tmpfs); root: a TemplateVM's or StandaloneVM's base, layers and pending
   * layer (an AppVM's or DispVM's root writes go to a tmpfs).
   */
  volumeDirs(name: string, klass: string): Readonly<Partial<Record<string, readonly string[]>>> {
    const data = this.opts.dataDir;
    const q = qubeDir(data, name);
    if (klass === 'DispVM') return {};
    const own = klass === 'TemplateVM' || klass === 'StandaloneVM';
    return { private: [privateDir(data, name)], ...(own ? { root: ['base', 'layers', 'pending'].map((d) => path.join(q, d)) } : {}) };
  }

  async close(): Promise<void> {
    await Promise.all([...this.active.values()].map((a) => a.sb.stop().catch(() => undefined)));
    this.links.close();
  }
}

/** The host side connected to the agent; rejects when the sandbox ends first or at the qube's timeout. */
async function untilConnected(host: HostSideHandle, sb: Sandbox, q: QubeLaunch): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      host.connected,
      sb.exited.then(() => {
        throw new RuntimeError(`${q.name}: the sandbox ended before its agent connected${sb.output ? `: ${sb.output.trim()}` : ''}`);
      }),
      new Promise<never>((_r, reject) => {
        timer = setTimeout(() => reject(new RuntimeError(`Cannot connect to qrexec agent for ${q.timeoutMs / 1000} seconds, see the qube's log`)), q.timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
