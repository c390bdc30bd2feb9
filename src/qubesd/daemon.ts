/**
 * qubesd assembled: the registry on its store, the power lifecycle over a
 * runtime backend, and the three sockets in RUN_DIR: qubesd.sock (Admin
 * API), qubesd.internal.sock (internal.GetSystemInfo) and qubesd.misc.sock
 * (qubes.FeaturesRequest, qubes.NotifyTools, qubes.NotifyUpdates).
 *
 * In-process users (the host: policy daemon, qrexec daemons) call the
 * registry, {@link Qubesd.systemInfo} and {@link Qubesd.lifecycle} directly,
 * without a socket round trip.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Policy } from '../policy/index.js';
import type { Runtime } from '../runtime/types.js';
import { ADMIN_METHODS, type ApiContext } from './admin-api.js';
import { SystemInfoCache, internalMethods } from './internal-api.js';
import { Lifecycle } from './lifecycle.js';
import { miscMethods } from './misc-api.js';
import { policyFilterHook } from './policy-filter.js';
import { Registry } from './registry.js';
import { serveApi, type ApiServer, type ServerKind, type ServerLog } from './server.js';
import { SqliteStore } from './store.js';
import { VolumeUsage } from './volume-usage.js';

export const ADMIN_SOCKET = 'qubesd.sock';
export const INTERNAL_SOCKET = 'qubesd.internal.sock';
export const MISC_SOCKET = 'qubesd.misc.sock';
export const REGISTRY_FILE = 'qubes.db';
/** RUN/qubes-rpc: dom0's socket services leading to qubesd (as the reference's /etc/qubes-rpc/admin.* symlinks). */
export const SERVICE_DIR = 'qubes-rpc';

/**
 * One symlink per Admin API method to qubesd.sock, and per misc method to
 * qubesd.misc.sock, so a qrexec daemon with this directory in its
 * QREXEC_SERVICE_PATH runs them as socket services: it writes
 * `METHOD+ARG SOURCE name|keyword TARGET\0` (the calling qube as the
 * daemon knows it) and the payload, which is qubesd's request format.
 */
export function writeServiceLinks(runDir: string): string {
  const dir = path.join(runDir, SERVICE_DIR);
  fs.mkdirSync(dir, { recursive: true });
  const link = (name: string, target: string): void => {
    const p = path.join(dir, name);
    fs.rmSync(p, { force: true });
    fs.symlinkSync(path.join(runDir, target), p);
  };
  for (const name of ADMIN_METHODS.keys()) link(name, ADMIN_SOCKET);
  for (const name of miscMethods().keys()) link(name, MISC_SOCKET);
  return dir;
}

export interface QubesdOptions {
  /** Directory of the registry (qubes.db). */
  readonly dataDir: string;
  /** Directory of the sockets; null: serve none (in-process use only). */
  readonly runDir: string | null;
  readonly runtime: Runtime | null;
  readonly log?: ServerLog;
  /**
   * The qrexec policy, for filtering what qubes see (admin.vm.List,
   * admin.Events: qubes/ext/admin.py); null when it failed to load (hide
   * everything). Absent: no filtering (a qubesd reached only by dom0).
   */
  readonly policy?: () => Policy | null;
  /** The store's durability (default GROUP: group fsync, see src/qubesd/store.ts). */
  readonly synchronous?: 'FULL' | 'NORMAL' | 'GROUP';
  /**
   * Preloaded disposables are cleaned and refilled at once (default); false:
   * when the caller calls `lifecycle.preloader.start()` (the host, after its
   * own start and autostart, as the reference's qubes-preload-dispvm service).
   */
  readonly startPreload?: boolean;
  /** Which socket server (default: native when the addon has it, unless QUBESD_NET_SERVER=1; see src/qubesd/server.ts). */
  readonly server?: ServerKind;
}

export interface Qubesd {
  readonly registry: Registry;
  readonly lifecycle: Lifecycle;
  readonly systemInfo: SystemInfoCache;
  /** Volumes' disk usage, when the runtime says where they are. */
  readonly volumes: VolumeUsage | null;
  readonly ctx: ApiContext;
  readonly servers: readonly ApiServer[];
  /** Stop serving, stop every qube it started, close the store. */
  close(): Promise<void>;
}

export async function startQubesd(opts: QubesdOptions): Promise<Qubesd> {
  const log: ServerLog = opts.log ?? (() => undefined);
  const store = new SqliteStore(path.join(opts.dataDir, REGISTRY_FILE), { synchronous: opts.synchronous ?? 'GROUP' });
  const registry = new Registry(store);
  const lifecycle = new Lifecycle(registry, opts.runtime, (m) => log('error', m));
  const systemInfo = new SystemInfoCache(registry);
  const policy = opts.policy;
  const hook = policy ? policyFilterHook({ policy, systemInfo: () => systemInfo.info() }) : undefined;
  const runtime = opts.runtime;
  const volumes = runtime?.volumeDirs ? new VolumeUsage(registry, (n, k) => runtime.volumeDirs?.(n, k) ?? {}) : null;
  const ctx: ApiContext = { registry, power: lifecycle, ...(hook ? { hook } : {}), ...(volumes ? { volumes } : {}) };
  const servers: ApiServer[] = [];
  try {
    if (opts.runDir !== null) {
      servers.push(await serveApi(path.join(opts.runDir, ADMIN_SOCKET), ctx, ADMIN_METHODS, log, opts.server));
      servers.push(await serveApi(path.join(opts.runDir, INTERNAL_SOCKET), ctx, internalMethods(systemInfo), log, opts.server));
      servers.push(await serveApi(path.join(opts.runDir, MISC_SOCKET), ctx, miscMethods(), log, opts.server));
      writeServiceLinks(opts.runDir);
    }
  } catch (e) {
    await Promise.all(servers.map((s) => s.close()));
    volumes?.close();
    store.close();
    throw e;
  }
  // the reference's qubes-preload-dispvm service: clean an earlier run's preloaded disposables, refill
  if (opts.startPreload !== false) lifecycle.preloader.start();
  let closing: Promise<void> | null = null;
  return {
    registry,
    lifecycle,
    systemInfo,
    volumes,
    ctx,
    servers,
    close: () =>
      (closing ??= (async () => {
        await Promise.all(servers.map((s) => s.close()));
        volumes?.close();
        await lifecycle.close();
        systemInfo.close();
        store.close();
      })()),
  };
}
