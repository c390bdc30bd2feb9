import * as net from 'node:net';
import { join } from 'node:path';
import { describeSystemError, QrexecError } from '../common/errors.js';
import {
  FrameDecoder,
  MsgType,
  QREXEC_CLIENT_PROTOCOL_VERSION,
  daemonToClientRules,
  encodeExecParams,
  encodeHello,
  encodeIdent,
  encodeMessage,
  helloRules,
  parseExecParams,
  parseHello,
  EXEC_PARAMS_SIZE,
  type Frame,
} from '../protocol/index.js';
import { connectStream } from '../vchan/index.js';

/** Reference default directory of the daemons' sockets. */
export const DEFAULT_SOCKET_DIR = '/var/run/qubes';

export class DaemonClientError extends QrexecError {
  override name = 'DaemonClientError';
  constructor(
    /** NOT_RUNNING: no daemon listens for that qube (reference: connect_unix_socket → -2). */
    readonly code: 'NOT_RUNNING' | 'CONNECT' | 'HANDSHAKE' | 'PROTOCOL' | 'CLOSED',
    message: string,
  ) {
    super(message);
  }
}

/** The data connection the daemon allocated. */
export interface DataEndpoint {
  readonly domain: number;
  readonly port: number;
}

/**
 * A local client of a qrexec daemon (what qrexec-client and the daemons' own
 * call code use): connects to `<socketDir>/qrexec.<target>`, does the
 * client handshake (daemon's MSG_HELLO first, we answer with version 3) and
 * sends one request.
 */
export class DaemonClient {
  private readonly decoder = new FrameDecoder(helloRules);
  private readonly frames: Frame[] = [];
  private waiter: (() => void) | undefined;
  private closed = false;
  private error: Error | undefined;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      try {
        for (const f of this.decoder.push(d)) {
          this.frames.push(f);
          if (f.type === MsgType.HELLO) this.decoder.setRules(daemonToClientRules);
        }
      } catch (e) {
        this.error = e as Error;
        socket.destroy();
      }
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', (e) => {
      this.error ??= e;
    });
  }

  /** Connects to the daemon of `target` (a domain id, name or `uuid:…`) and handshakes. */
  static async connect(socketDir: string, target: string): Promise<DaemonClient> {
    const path = join(socketDir, `qrexec.${target}`);
    const socket = await connectStream({ path }).catch((e: NodeJS.ErrnoException) => {
      throw new DaemonClientError(e.code === 'ENOENT' || e.code === 'ECONNREFUSED' ? 'NOT_RUNNING' : 'CONNECT', `cannot connect to the qrexec daemon of ${target}: ${describeSystemError(e, path)}`);
    });
    const c = new DaemonClient(socket);
    const hello = await c.nextFrame();
    const v = parseHello(hello.payload);
    if (v < QREXEC_CLIENT_PROTOCOL_VERSION) {
      socket.destroy();
      throw new DaemonClientError('HANDSHAKE', `Incompatible daemon protocol version (daemon ${v}, client ${QREXEC_CLIENT_PROTOCOL_VERSION})`);
    }
    socket.write(encodeHello(QREXEC_CLIENT_PROTOCOL_VERSION));
    return c;
  }

  /**
   * Sends MSG_EXEC_CMDLINE / MSG_JUST_EXEC / MSG_SERVICE_CONNECT with port 0 and
   * waits for the daemon's reply: the domain and port of the data vchan.
   */
  async negotiate(type: number, connectDomain: number, body: Buffer): Promise<DataEndpoint> {
    const payload = Buffer.allocUnsafe(EXEC_PARAMS_SIZE + body.length);
    payload.writeUInt32LE(connectDomain >>> 0, 0);
    payload.writeUInt32LE(0, 4);
    body.copy(payload, EXEC_PARAMS_SIZE);
    this.socket.write(encodeMessage(type, payload));
    const f = await this.nextFrame();
    if (f.type !== type) throw new DaemonClientError('PROTOCOL', `daemon replied with message type 0x${f.type.toString(16)}`);
    const p = parseExecParams(f.payload);
    return { domain: p.connectDomain, port: p.connectPort };
  }

  /** Runs `cmdline` (`USER:COMMAND`) in the qube; returns the data endpoint (we are the vchan server). */
  exec(cmdline: string, connectDomain: number, justExec = false): Promise<DataEndpoint> {
    return this.negotiate(justExec ? MsgType.JUST_EXEC : MsgType.EXEC_CMDLINE, connectDomain, Buffer.from(`${cmdline}\0`, 'utf8'));
  }

  /** MSG_SERVICE_CONNECT with a known port (no reply): tells the caller's agent where to connect. */
  serviceConnect(ident: string | Buffer, domain: number, port: number): void {
    const h = encodeExecParams(MsgType.SERVICE_CONNECT, domain, port);
    h.writeUInt32LE(EXEC_PARAMS_SIZE + 32, 4);
    this.socket.write(Buffer.concat([h, encodeIdent(ident)]));
  }

  /** Resolves when the daemon closes the connection (end of the call, for -W / DispVMs). */
  waitClosed(): Promise<void> {
    return new Promise((resolve) => {
      if (this.closed) resolve();
      else this.socket.once('close', () => resolve());
    });
  }

  close(): void {
    this.socket.end();
    this.socket.destroySoon();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  private async nextFrame(): Promise<Frame> {
    for (;;) {
      const f = this.frames.shift();
      if (f) return f;
      if (this.error) throw new DaemonClientError('PROTOCOL', `daemon: ${this.error.message}`);
      if (this.closed) throw new DaemonClientError('CLOSED', 'daemon closed the connection');
      await new Promise<void>((r) => (this.waiter = r));
    }
  }
}
