/**
 * vchan sockets between two sandboxed qubes. Each qube's vchan directory
 * (`<root>/<domid>/`, bound at /run/vchan inside) holds only sockets of its
 * own channels, the host's being the `per-domain` layout of src/vchan. A
 * qube-to-qube data vchan `vchan.A.B.PORT.sock` is made by its server, A, in
 * A's directory; its client B looks for it in B's. This watcher hard-links
 * such a socket into B's directory when it appears (a link to a unix socket
 * reaches the same listener) and removes the link when A removes its name.
 *
 * Only sockets whose name has A (the directory's own domain) as server and
 * another qube (not dom0) as client are linked, and only into that client's
 * directory: a qube can offer a socket to a qube it names, as on Qubes, and
 * reach nothing else.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

const NAME = /^vchan\.(\d+)\.(\d+)\.(\d+)\.sock$/;

export class VchanLinks {
  private readonly watchers = new Map<number, fs.FSWatcher>();
  /** `<server>/<name>` -> inode linked into the client's directory */
  private readonly linked = new Map<string, number>();

  constructor(readonly root: string) {}

  dirOf(domid: number): string {
    return path.join(this.root, String(domid));
  }

  /** Watches qube `domid`'s directory (made if missing). */
  add(domid: number): string {
    const dir = this.dirOf(domid);
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    if (this.watchers.has(domid)) return dir;
    const w = fs.watch(dir, { persistent: false }, (_ev, f) => {
      if (typeof f === 'string') this.changed(domid, f);
    });
    w.on('error', () => undefined);
    this.watchers.set(domid, w);
    for (const f of fs.readdirSync(dir)) this.changed(domid, f);
    return dir;
  }

  /** Stops watching `domid` and removes its directory's sockets and links made for it elsewhere. */
  remove(domid: number): void {
    this.watchers.get(domid)?.close();
    this.watchers.delete(domid);
    for (const key of [...this.linked.keys()]) {
      const [server, name] = key.split('/') as [string, string];
      const m = NAME.exec(name);
      if (Number(server) === domid || (m && Number(m[2]) === domid)) this.unlinkCopy(Number(server), name);
    }
    fs.rmSync(this.dirOf(domid), { recursive: true, force: true });
  }

  close(): void {
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
  }

  private changed(domid: number, name: string): void {
    const m = NAME.exec(name);
    if (!m || Number(m[1]) !== domid) return;
    const client = Number(m[2]);
    if (client === 0 || client === domid || !this.watchers.has(client)) return;
    const src = path.join(this.dirOf(domid), name);
    let st: fs.Stats | undefined;
    try {
      st = fs.lstatSync(src);
    } catch {
      /* removed */
    }
    if (st?.isSocket()) {
      const dst = path.join(this.dirOf(client), name);
      const tmp = path.join(this.dirOf(client), `.link.${name}`);
      try {
        fs.rmSync(tmp, { force: true });
        fs.linkSync(src, tmp);
        fs.renameSync(tmp, dst);
        this.linked.set(`${domid}/${name}`, st.ino);
      } catch {
        /* the server removed it meanwhile */
      }
    } else {
      this.unlinkCopy(domid, name);
    }
  }

  private unlinkCopy(server: number, name: string): void {
    const key = `${server}/${name}`;
    const ino = this.linked.get(key);
    if (ino === undefined) return;
    this.linked.delete(key);
    const m = NAME.exec(name);
    if (!m) return;
    const dst = path.join(this.dirOf(Number(m[2])), name);
    try {
      if (fs.lstatSync(dst).ino === ino) fs.unlinkSync(dst);
    } catch {
      /* gone */
    }
  }
}
