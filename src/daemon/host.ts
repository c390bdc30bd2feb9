import { QubeDaemon, type QubeDaemonOptions, type QubeDirectory } from './qube.js';

/**
 * The qubes one host process serves (ARCHITECTURE: one event loop, all
 * qubes). A qube's daemon finds the daemon of a call's target here and sets
 * the call up with a function call instead of a round trip through the
 * target's `qrexec.<name>` socket; targets served elsewhere are still reached
 * through their socket, so per-qube processes and a shared host mix freely.
 */
export class QubeHost implements QubeDirectory {
  private readonly byKey = new Map<string, QubeDaemon>();

  /** Registers a qube under its domain id, name and `uuid:<uuid>` (the names its socket has). */
  add(d: QubeDaemon): void {
    const o = d.opts;
    for (const k of [String(o.domid), o.name, ...(o.uuid ? [`uuid:${o.uuid}`] : [])]) {
      if (this.byKey.has(k)) throw new Error(`qube ${k} is served twice by this host`);
      this.byKey.set(k, d);
    }
  }

  /** Unregisters a qube (it stopped). */
  remove(d: QubeDaemon): void {
    for (const [k, v] of this.byKey) if (v === d) this.byKey.delete(k);
  }

  /** The daemon of `target` (domain id, name or `uuid:…`, as in `qrexec.<target>`), if served here. */
  find(target: string): QubeDaemon | undefined {
    return this.byKey.get(target);
  }

  get size(): number {
    return new Set(this.byKey.values()).size;
  }
}

/** One qube of a host process: `--qube=DOMID:NAME:UUID[:USER]`. */
export interface QubeSpec {
  readonly domid: number;
  readonly name: string;
  readonly uuid: string;
  /** Default user (reference default "user"). */
  readonly user: string;
}

/** Parses `DOMID:NAME:UUID[:USER]` (DOMID > 0); undefined when malformed. */
export function parseQubeSpec(spec: string): QubeSpec | undefined {
  const [id, name, uuid, user, ...rest] = spec.split(':');
  const domid = Number.parseInt(id ?? '', 10);
  if (rest.length > 0 || !(domid > 0) || String(domid) !== id || !name || !uuid) return undefined;
  return { domid, name, uuid, user: user || 'user' };
}

/** Settings shared by every qube of a host process. */
export type SharedQubeOptions = Omit<QubeDaemonOptions, 'domid' | 'name' | 'uuid' | 'defaultUser' | 'host'>;

/**
 * The daemons of `qubes`, registered in one QubeHost so that calls between
 * them are set up in-process. @throws when a qube is listed twice.
 */
export function createQubeDaemons(qubes: readonly QubeSpec[], shared: SharedQubeOptions): QubeDaemon[] {
  const host = new QubeHost();
  return qubes.map((q) => {
    const d = new QubeDaemon({
      ...shared,
      domid: q.domid,
      name: q.name,
      uuid: q.uuid,
      defaultUser: q.user,
      ...(qubes.length > 1 ? { host } : {}),
    });
    host.add(d);
    return d;
  });
}
