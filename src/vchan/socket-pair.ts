/**
 * Two connected unix stream sockets when there is no socketpair(2) (Node has
 * none; the native addon does): a one-off listener in the abstract namespace
 * and a connection to it. The name is random, but any local process can see
 * it (/proc/net/unix) and connect, so the connecting end proves itself with a
 * random token: a connection without it is dropped.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import * as net from 'node:net';
import { connectStream } from './socket.js';

const TOKEN_BYTES = 16;

/**
 * [ours, theirs]: `theirs` (the connecting end, to hand to a child; nothing
 * was sent to it) and `ours`, the token read off it, not flowing until a
 * 'data' listener comes, half-open allowed: ending it shuts the socket down
 * for writing and keeps it open.
 */
export async function connectedPair(): Promise<[net.Socket, net.Socket]> {
  const token = randomBytes(TOKEN_BYTES);
  const name = `\0qrexec-ts.${process.pid}.${randomBytes(8).toString('hex')}`;
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true });
  try {
    const ours = new Promise<net.Socket>((resolve) => {
      server.on('connection', (c) => {
        c.on('error', () => undefined);
        const drop = (): void => {
          c.destroy();
        };
        const onReadable = (): void => {
          const got = c.read(TOKEN_BYTES) as Buffer | null;
          if (got === null) return;
          c.off('readable', onReadable);
          c.off('end', drop);
          if (!timingSafeEqual(got, token)) {
            c.destroy();
            return;
          }
          resolve(c);
        };
        c.on('readable', onReadable);
        c.on('end', drop);
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(name, () => resolve());
    });
    const theirs = await connectStream({ path: name, allowHalfOpen: true });
    theirs.write(token);
    return [await ours, theirs];
  } finally {
    server.close();
  }
}
