/**
 * Serving the Policy API from the host process: as in-process dom0 services
 * (a qube's `qrexec-client-vm dom0 policy.Get+NAME`, routed by the policy,
 * reaches them without a process being started), and on a unix socket for
 * dom0's own commands (qubes-policy, qubes-policy-editor).
 *
 * The socket's protocol (ours): the client sends `SERVICE+ARG\0`, then the
 * payload, then shuts down its writing side; the reply is
 * `CODE\nLEN\n` + LEN bytes of stderr + stdout, then EOF. The caller is
 * dom0: the socket's mode (0660) is its guard, as for qubesd's.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import type { InProcessServices } from '../daemon/index.js';
import type { PolicyAdmin, Reply } from './admin.js';

export const DEFAULT_POLICY_API_SOCKET = '/var/run/qubes/policy-admin.sock';
const MAX_REQUEST = 64 * 1024 * 1024;

/** The API as dom0 services of this process. */
export function inProcessServices(admin: PolicyAdmin): InProcessServices {
  const handler = (c: { service: string; arg: string; source: string; payload: Buffer }): Promise<Reply> => admin.serve(c.service, c.arg, c.payload, c.source);
  return new Map(admin.serviceNames().map((n) => [n, handler]));
}

/** Encodes a reply for the socket. */
export function encodeReply(r: Reply): Buffer {
  const err = Buffer.from(r.stderr, 'utf8');
  return Buffer.concat([Buffer.from(`${r.code}\n${err.length}\n`, 'latin1'), err, r.stdout]);
}

/** Decodes a socket reply. @throws Error when malformed */
export function decodeReply(b: Buffer): Reply {
  const a = b.indexOf(0x0a);
  const c = a < 0 ? -1 : b.indexOf(0x0a, a + 1);
  if (c < 0) throw new Error('malformed reply from the policy API socket');
  const code = Number(b.subarray(0, a).toString('latin1'));
  const len = Number(b.subarray(a + 1, c).toString('latin1'));
  if (!Number.isInteger(code) || !Number.isInteger(len) || c + 1 + len > b.length) throw new Error('malformed reply from the policy API socket');
  return { code, stderr: b.subarray(c + 1, c + 1 + len).toString('utf8'), stdout: b.subarray(c + 1 + len) };
}

export class PolicyApiSocket {
  private readonly server: net.Server;

  constructor(
    private readonly admin: PolicyAdmin,
    private readonly log: (m: string) => void = () => undefined,
  ) {
    this.server = net.createServer({ allowHalfOpen: true }, (s) => this.accept(s));
  }

  async listen(socketPath: string): Promise<void> {
    fs.rmSync(socketPath, { force: true });
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(socketPath, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    fs.chmodSync(socketPath, 0o660);
  }

  private accept(sock: net.Socket): void {
    const chunks: Buffer[] = [];
    let size = 0;
    sock.on('error', () => undefined);
    sock.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_REQUEST) {
        this.log('policy API socket: request too large');
        sock.destroy();
        return;
      }
      chunks.push(c);
    });
    sock.on('end', () => void this.answer(sock, chunks));
  }

  private async answer(sock: net.Socket, chunks: Buffer[]): Promise<void> {
    {
      const buf = Buffer.concat(chunks);
      const nul = buf.indexOf(0);
      if (nul < 0) {
        this.log('policy API socket: request without a header');
        sock.destroy();
        return;
      }
      const desc = buf.subarray(0, nul).toString('latin1');
      const plus = desc.indexOf('+');
      const service = plus < 0 ? desc : desc.slice(0, plus);
      const arg = plus < 0 ? '' : desc.slice(plus + 1);
      const known = this.admin.serviceNames().includes(service);
      const reply: Reply = known
        ? await this.admin.serve(service, arg, buf.subarray(nul + 1), 'dom0')
        : { code: 127, stdout: Buffer.alloc(0), stderr: `Service not found: ${service}` };
      sock.end(encodeReply(reply));
    }
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
