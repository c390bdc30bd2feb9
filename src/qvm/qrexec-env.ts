/**
 * Where dom0's qrexec lives, for tools that make calls into qubes (qvm-run):
 * the directory of the qrexec daemons' `qrexec.NAME` sockets and the vchan
 * environment that `qrexec-client` needs for the call's data channel.
 *
 * Explicit settings win: QREXEC_SOCKET_DIR, VCHAN_SOCKET_DIR and
 * VCHAN_SOCKET_LAYOUT. Then the host `npm start` runs, when its RUN/host.json
 * names the qubesd socket we use (src/common/local-host.ts). Otherwise, when the Admin API is a socket RUN/qubesd.sock
 * of our qubesd (or host), its run directory tells the rest: RUN/qrexec holds
 * the daemons' sockets and RUN/vchan the vchan sockets, in the `per-domain`
 * layout when the target has a directory RUN/vchan/XID (the bwrap runtime),
 * else flat. Failing all that, the reference's paths (/var/run/qubes,
 * /var/run/vchan).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { localHost } from '../common/local-host.js';
import { SocketTransport, type AdminTransport } from '../qubesd-client/client.js';

export interface Dom0Qrexec {
  /** --socket-dir of qrexec-client. */
  readonly socketDir: string;
  /** The environment qrexec-client runs with (VCHAN_*). */
  readonly env: Readonly<Record<string, string>>;
}

const isDir = (p: string): boolean => {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
};

/** dom0's qrexec, for a call into the qube whose domain id is `xid` (when known). */
export function dom0Qrexec(transport: AdminTransport, xid: number | null, env: NodeJS.ProcessEnv = process.env): Dom0Qrexec {
  const host = localHost(env);
  if (host && !env['QREXEC_SOCKET_DIR'] && !env['VCHAN_SOCKET_DIR'] && (!(transport instanceof SocketTransport) || path.resolve(transport.socketPath) === path.resolve(host.qubesdSocket))) {
    return { socketDir: host.qrexecSocketDir, env: { VCHAN_SOCKET_DIR: host.vchanDir, VCHAN_DOMAIN: '0', VCHAN_SOCKET_LAYOUT: host.vchanLayout } };
  }
  const runDir = transport instanceof SocketTransport ? path.dirname(transport.socketPath) : null;
  const derived = (sub: string): string | null => (runDir !== null && isDir(path.join(runDir, sub)) ? path.join(runDir, sub) : null);
  const socketDir = env['QREXEC_SOCKET_DIR'] || derived('qrexec') || '/var/run/qubes';
  const vchanDir = env['VCHAN_SOCKET_DIR'] || derived('vchan') || '/var/run/vchan';
  let layout = env['VCHAN_SOCKET_LAYOUT'];
  if (!layout) layout = xid !== null && xid > 0 && isDir(path.join(vchanDir, String(xid))) ? 'per-domain' : 'flat';
  return { socketDir, env: { VCHAN_SOCKET_DIR: vchanDir, VCHAN_DOMAIN: '0', VCHAN_SOCKET_LAYOUT: layout } };
}
