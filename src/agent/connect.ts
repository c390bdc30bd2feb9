/**
 * Connecting to a data vchan as its client without polling delays: the
 * caller's side binds its socket only when dom0 tells it to, usually just
 * after we were told to connect. Instead of sleeping between attempts we
 * watch the socket directory (inotify) and retry when the file appears,
 * with a slow timer as a safety net.
 */
import * as fs from 'node:fs';
import type * as net from 'node:net';
import { connectOnce, vchanPath, type VchanEnv } from '../vchan/index.js';

/** Like vchanConnect (client of vchan.<remote>.<own>.<port>.sock), retrying on ENOENT/ECONNREFUSED until `timeoutMs`. */
export async function connectDataVchan(env: VchanEnv, remoteDomain: number, port: number, timeoutMs: number): Promise<net.Socket> {
  const path = vchanPath(env.dir, remoteDomain, env.ownDomain, port);
  const name = path.slice(path.lastIndexOf('/') + 1);
  const deadline = Date.now() + timeoutMs;
  let watcher: fs.FSWatcher | undefined;
  let wake: (() => void) | undefined;
  // an event that arrives while a connect attempt is in flight must not be lost
  let poked = false;
  const poke = (): void => {
    poked = true;
    const w = wake;
    wake = undefined;
    w?.();
  };
  try {
    // bound but not listening: no file event will come, so short timers (doubling to 50 ms)
    let refusedDelay = 1;
    let refused = false;
    for (let attempt = 0; ; attempt++) {
      poked = false;
      try {
        return await connectOnce(path, true);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        refused = code === 'ECONNREFUSED';
        if (code !== 'ENOENT' && code !== 'ECONNREFUSED') throw e;
        if (Date.now() >= deadline) throw new Error(`vchan ${path}: no server after ${timeoutMs} ms`);
        if (code === 'ECONNREFUSED' && attempt < 50) {
          // bound but not listening yet: that is a matter of microseconds
          await new Promise((r) => setImmediate(r));
          continue;
        }
      }
      if (!watcher) {
        try {
          watcher = fs.watch(env.dir, { persistent: false }, (_ev, f) => {
            if (f === null || f === name) poke();
          });
          watcher.on('error', () => poke());
          continue; // the file may have appeared before the watch started
        } catch {
          /* no inotify: timers only */
        }
      }
      if (poked) continue;
      const delay = refused ? refusedDelay : watcher ? 50 : 5;
      if (refused) refusedDelay = Math.min(refusedDelay * 2, 50);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, delay);
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  } finally {
    watcher?.close();
  }
}
