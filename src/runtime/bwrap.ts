/**
 * The `bwrap` backend of {@link Runtime}: every qube a bubblewrap sandbox
 * (src/runtime/sandbox), its volumes under `<dataDir>/qubes/<name>/`, its
 * vchan directory `<runDir>/vchan/<domid>/` (the host side must use
 * VCHAN_SOCKET_DIR=<runDir>/vchan with VCHAN_SOCKET_LAYOUT=per-domain, see
 * {@link BwrapRuntime.hostVchanEnv}). A TemplateVM or StandaloneVM missing on
 * disk is made at its first start from the host's /usr and /etc (the default
 * template); an AppVM's missing template likewise.
 *
 * What qubesd's QubeLaunch does not carry yet (netvm, provides_network,
 * maxmem, vcpus, a DispVM's template chain) comes from the optional
 * `describe` callback; without it qubes get loopback only and the defaults
 * below.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { QubeExit, QubeLaunch, RunningQube, Runtime } from './types.js';
import { RuntimeError } from './types.js';
import {
  Sandbox,
  SandboxError,
  VchanLinks,
  cleanStaleNetns,
  connectUplink,
  createNetns,
  destroyNetwork,
  ensureStandalone,
  ensureTemplate,
  makeNetvm,
  networkAvailable,
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
   * When a start is ready: `handshake` (default: the host side's qrexec daemon
   * has connected to the agent) or `listening` (the agent listens for it).
   */
  readonly readyOn?: 'handshake' | 'listening';
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
    // a short prefix per run directory: netns and host veth names of ours
    let h = 0;
    for (const c of path.resolve(opts.runDir)) h = (h * 31 + c.charCodeAt(0)) >>> 0;
    this.net = { prefix: `q${(h % 46656).toString(36)}-` };
    // leftovers of a host that died (kill -9): network namespaces and veths; mounts died with their namespaces
    if (networkAvailable().ok) {
      const n = cleanStaleNetns(this.net.prefix);
      if (n) this.log(`removed ${n} stale network namespaces/links`);
    }
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
        const root = dvm ? this.opts.describe?.(dvm)?.template : undefined;
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
        n = connectUplink(this.net, n, q.domid, up);
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
    const d = this.opts.describe?.(q.name) ?? { klass: q.klass, template: q.template };
    let resolveExit: (x: QubeExit) => void = () => undefined;
    const exited = new Promise<QubeExit>((r) => (resolveExit = r));
    let sbRef: Sandbox | undefined;
    let stopping: Promise<unknown> | undefined;
    let netRef: QubeNetwork | undefined;
    const cleanup = (): void => {
      if (netRef) destroyNetwork(this.net, netRef, q.domid);
      this.links.remove(q.domid);
      this.active.delete(q.name);
    };
    const stop = (): Promise<unknown> => {
      stopping ??= (sbRef ? sbRef.stop() : Promise.resolve()).catch((e: Error) => this.log(`${q.name}: stop: ${e.message}`));
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
      await waitAgentReady(sb, q.timeoutMs, { listening: this.opts.readyOn === 'listening' });
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

  async close(): Promise<void> {
    await Promise.all([...this.active.values()].map((a) => a.sb.stop().catch(() => undefined)));
    this.links.close();
  }
}
