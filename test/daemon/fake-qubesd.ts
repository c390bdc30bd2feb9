// A fake qubesd Admin API socket written from the spec (qubes-core-admin
// qubes/api/__init__.py): it reads one request to EOF, records it, and
// answers with what the test's handler returns. It does not import the code
// under test.
import * as net from 'node:net';
import { unlink } from 'node:fs/promises';

export interface QubesdRequest {
  /** Everything the client sent: `METHOD+ARG dom0 TYPE DEST\0` + payload. */
  readonly raw: string;
  readonly method: string;
  readonly arg: string;
  readonly dest: string;
  readonly payload: string;
}

export type QubesdHandler = (req: QubesdRequest) => string | Buffer | Promise<string | Buffer>;

/** A success reply: `0\0` + data. */
export const ok = (data = ''): string => `0\0${data}`;
/** An exception reply: `2\0TYPE\0TRACEBACK\0MESSAGE\0`. */
export const exc = (type: string, message = ''): string => `2\0${type}\0\0${message}\0`;

export class FakeQubesd {
  /** The raw requests, in arrival order. */
  readonly requests: string[] = [];
  private constructor(
    readonly path: string,
    private readonly server: net.Server,
    public handler: QubesdHandler,
  ) {}

  static async listen(path: string, handler: QubesdHandler = () => ok()): Promise<FakeQubesd> {
    await unlink(path).catch(() => undefined);
    const box: { self?: FakeQubesd } = {};
    const server = net.createServer({ allowHalfOpen: true }, (s) => {
      const chunks: Buffer[] = [];
      s.on('error', () => undefined);
      s.on('data', (d: Buffer) => chunks.push(d));
      s.on('end', () => {
        const raw = Buffer.concat(chunks).toString('latin1');
        const nul = raw.indexOf('\0');
        const line = nul < 0 ? raw : raw.slice(0, nul);
        const [call = '', , , dest = ''] = line.split(' ');
        const plus = call.indexOf('+');
        const req: QubesdRequest = {
          raw,
          method: plus < 0 ? call : call.slice(0, plus),
          arg: plus < 0 ? '' : call.slice(plus + 1),
          dest,
          payload: nul < 0 ? '' : raw.slice(nul + 1),
        };
        const q = box.self as FakeQubesd;
        q.requests.push(raw);
        void Promise.resolve(q.handler(req)).then(
          (reply) => s.end(typeof reply === 'string' ? Buffer.from(reply, 'latin1') : reply),
          () => s.destroy(),
        );
      });
    });
    await new Promise<void>((r) => server.listen(path, () => r()));
    box.self = new FakeQubesd(path, server, handler);
    return box.self;
  }

  close(): void {
    this.server.close();
  }
}
