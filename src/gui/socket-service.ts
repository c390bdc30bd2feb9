/**
 * Socket services of the GUI domain: what the qrexec agent in this qube
 * connects to for a call. The agent writes the service descriptor first,
 * `SERVICE+ARG SOURCE[ name|keyword TARGET]\0`, then the caller's data; what
 * we write goes back to the caller. The source in the header is the calling
 * qube as qrexec knows it (never a name the caller chose).
 *
 * This module and everything in src/gui run inside the GUI domain: they
 * import nothing host-side.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';

/** The header of one call. */
export interface CallHeader {
  /** `SERVICE` without the argument. */
  readonly service: string;
  /** The argument after `+` ('' when none). */
  readonly argument: string;
  /** The calling qube. */
  readonly source: string;
}

/** Longest header accepted (a service name, an argument and a qube name fit easily). */
export const MAX_HEADER = 1024;

export class HeaderError extends Error {
  override name = 'HeaderError';
}

/** Parse the descriptor text (without its NUL). @throws HeaderError */
export function parseHeader(text: string): CallHeader {
  const words = text.split(' ');
  const desc = words[0] ?? '';
  const source = words[1] ?? '';
  if (!/^[A-Za-z0-9_.+-]{1,512}$/.test(desc)) throw new HeaderError('invalid service descriptor');
  if (!/^[A-Za-z0-9_.:@-]{1,63}$/.test(source)) throw new HeaderError('invalid source');
  const plus = desc.indexOf('+');
  return {
    service: plus < 0 ? desc : desc.slice(0, plus),
    argument: plus < 0 ? '' : desc.slice(plus + 1),
    source,
  };
}

/**
 * Read a call's header from `sock`. Resolves with it and the bytes that came
 * after it (to be handled as the call's data). Rejects on a missing or
 * oversized header, or when it does not arrive within `timeoutMs`.
 */
export function readHeader(sock: net.Socket, timeoutMs = 10_000): Promise<{ header: CallHeader; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let len = 0;
    const done = (err: Error | null, v?: { header: CallHeader; rest: Buffer }): void => {
      clearTimeout(timer);
      sock.off('data', onData);
      sock.off('end', onEnd);
      sock.off('error', onError);
      if (err) reject(err);
      else resolve(v as { header: CallHeader; rest: Buffer });
    };
    const onData = (c: Buffer): void => {
      chunks.push(c);
      len += c.length;
      const all = Buffer.concat(chunks, len);
      const nul = all.indexOf(0);
      if (nul < 0) {
        if (len > MAX_HEADER) done(new HeaderError('header too long'));
        return;
      }
      if (nul > MAX_HEADER) return done(new HeaderError('header too long'));
      sock.pause();
      try {
        done(null, { header: parseHeader(all.subarray(0, nul).toString('latin1')), rest: all.subarray(nul + 1) });
      } catch (e) {
        done(e as Error);
      }
    };
    const onEnd = (): void => done(new HeaderError('end of data before the header'));
    const onError = (e: Error): void => done(e);
    const timer = setTimeout(() => done(new HeaderError('no header in time')), timeoutMs);
    sock.on('data', onData);
    sock.on('end', onEnd);
    sock.on('error', onError);
  });
}

/** Read everything up to EOF, at most `max` bytes. @throws when longer */
export function readAll(sock: net.Socket, first: Buffer, max: number, timeoutMs = 10_000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [first];
    let len = first.length;
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new HeaderError('request not complete in time'));
    }, timeoutMs);
    sock.on('data', (c: Buffer) => {
      len += c.length;
      if (len > max) {
        clearTimeout(timer);
        sock.destroy();
        reject(new HeaderError('request too long'));
        return;
      }
      chunks.push(c);
    });
    sock.on('end', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks, len));
    });
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    sock.resume();
  });
}

/** Listen on a unix socket at `socketPath` (a stale file is removed first). */
export function listenAt(server: net.Server, socketPath: string): Promise<void> {
  try {
    fs.unlinkSync(socketPath);
  } catch {
    // absent
  }
  return new Promise((resolve, reject) => {
    const onError = (e: Error): void => reject(e);
    server.once('error', onError);
    server.listen({ path: socketPath }, () => {
      server.off('error', onError);
      resolve();
    });
  });
}
