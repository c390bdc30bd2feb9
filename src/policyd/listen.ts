/** Listening on a unix socket, as the daemon's servers all do. */
import * as fs from 'node:fs';
import type * as net from 'node:net';
import { describeSystemError, QrexecError } from '../common/errors.js';

/** A unix socket could not be listened on; the message says why, with the path. */
export class ListenError extends QrexecError {
  override name = 'ListenError';
}

/**
 * Listen on `socketPath`, removing a stale socket file first; with `mode`,
 * chmod the socket (a failure there is not fatal). Rejects if listening
 * fails (the directory is missing, the path is in use...).
 */
export function listenUnix(
  server: net.Server,
  socketPath: string,
  opts: { readonly backlog?: number; readonly mode?: number } = {},
): Promise<void> {
  try {
    fs.unlinkSync(socketPath);
  } catch {
    // absent
  }
  return new Promise((resolve, reject) => {
    // said as what is wrong with the path (Node reports a missing directory as EACCES)
    const onError = (e: Error): void => reject(new ListenError(describeSystemError(e, socketPath)));
    server.once('error', onError);
    server.listen({ path: socketPath, backlog: opts.backlog ?? 511 }, () => {
      server.off('error', onError);
      if (opts.mode !== undefined) {
        try {
          fs.chmodSync(socketPath, opts.mode);
        } catch {
          // not fatal
        }
      }
      resolve();
    });
  });
}
