import type { QubeDaemon } from './qube.js';

/**
 * The qubes one host process serves (ARCHITECTURE: one event loop, all
 * qubes). A qube's daemon finds the daemon of a call's target here and sets
 * the call up with a function call instead of a round trip through the
 * target's `qrexec.<name>` socket; targets served elsewhere are still reached
 * through their socket, so per-qube processes and a shared host mix freely.
 */
export class QubeHost {
  private readonly byKey = new Map<string, QubeDaemon>();

  /** Registers a qube under its domain id, name and `uuid:<uuid>` (the names its socket has). */
  add(d: QubeDaemon): void {
    const o = d.opts;
    for (const k of [String(o.domid), o.name, ...(o.uuid ? [`uuid:${o.uuid}`] : [])]) {
      if (this.byKey.has(k)) throw new Error(`qube ${k} is served twice by this host`);
      this.byKey.set(k, d);
    }
  }

  /** The daemon of `target` (domain id, name or `uuid:…`, as in `qrexec.<target>`), if served here. */
  find(target: string): QubeDaemon | undefined {
    return this.byKey.get(target);
  }

  get size(): number {
    return new Set(this.byKey.values()).size;
  }
}
