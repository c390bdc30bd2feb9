/**
 * `policy.EvalSimple` and `policy.EvalGUI`: socket services through which a
 * qube asks what a call would be decided (reference qrexec_policy_daemon.py
 * handle_qrexec_connection / qrexec_policy_eval).
 *
 * The connection starts with the socket-service header the qrexec daemon
 * writes, `policy.EvalSimple+SERVICE+ARG REMOTE[ ...]\0` (REMOTE: the
 * calling qube, trusted), then up to 96 bytes from the qube:
 * `SOURCE\0TARGET`. SOURCE (1..31 bytes) and TARGET (1..63 bytes) must be
 * sanitised qube names (`[A-Za-z0-9@_.-]`). The call is decided as with
 * `just_evaluate=yes assume_yes_for_ask=yes`; the reply is `result=allow\n`
 * or `result=deny\n`. policy.EvalGUI answers only a caller that provides the
 * GUI of both qubes (both carry the tag `guivm-REMOTE`). Anything invalid
 * closes the connection without a reply, with a log line.
 */
import * as net from 'node:net';
import { safe } from './log.js';
import { decideAndRecord, systemInfoOrError, type ServerContext } from './server.js';
import { listenUnix } from './listen.js';

export type EvalServiceName = 'policy.EvalSimple' | 'policy.EvalGUI';

/** Longest header accepted (service + argument + metadata). */
const MAX_HEADER = 65_536;
const MAX_PAYLOAD = 96;
const NAME = /^[A-Za-z0-9@_.-]+$/;

export class EvalService {
  private readonly server: net.Server;

  constructor(
    private readonly name: EvalServiceName,
    private readonly ctx: ServerContext,
    private readonly timeoutMs = 5000,
  ) {
    this.server = net.createServer({ allowHalfOpen: true }, (s) => this.accept(s));
    // a failed listen is the caller's to report (listenUnix rejects); later errors are logged
    this.server.on('error', (e) => {
      if (this.server.listening) ctx.log.error(`${name} socket: ${e.message}`);
    });
  }

  listen(socketPath: string): Promise<void> {
    return listenUnix(this.server, socketPath, { backlog: 1024, mode: 0o660 });
  }

  private accept(sock: net.Socket): void {
    const log = this.ctx.log;
    const chunks: Buffer[] = [];
    let len = 0;
    let done = false;
    const timer = setTimeout(() => {
      log.warning(`${this.name}: no complete request within ${this.timeoutMs} ms, closing`);
      sock.destroy();
    }, this.timeoutMs);
    const give = (why: string): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      log.warning(`${this.name}: ${why}`);
      sock.destroy();
    };
    const parse = (eof: boolean): void => {
      const buf = Buffer.concat(chunks, len);
      const nul = buf.indexOf(0);
      if (nul < 0) {
        if (eof) give('connection ended inside the header');
        else if (len > MAX_HEADER) give('header too long');
        return;
      }
      const payload = buf.subarray(nul + 1);
      if (payload.length < MAX_PAYLOAD && !eof) return;
      done = true;
      clearTimeout(timer);
      sock.pause();
      this.handle(buf.subarray(0, nul).toString('latin1'), payload.subarray(0, MAX_PAYLOAD), sock);
    };
    sock.on('data', (c: Buffer) => {
      if (done) return;
      chunks.push(c);
      len += c.length;
      if (len > MAX_HEADER + MAX_PAYLOAD + 1) {
        parse(true);
        return;
      }
      parse(false);
    });
    sock.on('end', () => {
      if (!done) parse(true);
    });
    sock.on('error', () => {});
    sock.on('close', () => clearTimeout(timer));
  }

  private handle(header: string, payload: Buffer, sock: net.Socket): void {
    const log = this.ctx.log;
    const sp = header.indexOf(' ');
    const command = sp < 0 ? header : header.slice(0, sp);
    const remote = sp < 0 ? '' : (header.slice(sp + 1).split(' ')[0] ?? '');
    const plus = command.indexOf('+');
    const invoked = plus < 0 ? command : command.slice(0, plus);
    const queried = plus < 0 ? null : command.slice(plus + 1);
    if (invoked !== this.name) {
      log.error(`${this.name} invoked with incorrect name ${safe(invoked)} by ${safe(remote)}`);
      sock.destroy();
      return;
    }
    if (queried === null || queried === '' || queried.startsWith('+')) {
      log.warning(`${this.name} requires an argument (the service to query), but ${safe(remote)} did not provide one`);
      sock.destroy();
      return;
    }
    const nul = payload.indexOf(0);
    const source = nul < 0 ? null : payload.subarray(0, nul).toString('latin1');
    const target = nul < 0 ? null : payload.subarray(nul + 1).toString('latin1');
    if (source === null || target === null) {
      log.warning(`${this.name}: invalid data from qube ${safe(remote)}`);
      sock.destroy();
      return;
    }
    if (target.length < 1 || target.length > 63) {
      log.warning(`${this.name}: ${safe(remote)} sent a target of length ${target.length}, but the limit is 63`);
      sock.destroy();
      return;
    }
    if (source.length < 1 || source.length > 31) {
      log.warning(`${this.name}: ${safe(remote)} sent a source of length ${source.length}, but the limit is 31`);
      sock.destroy();
      return;
    }
    if (!NAME.test(source) || !NAME.test(target)) {
      log.warning(`${this.name}: invalid data from qube ${safe(remote)}`);
      sock.destroy();
      return;
    }
    const req = {
      source,
      intendedTarget: target,
      serviceAndArg: queried,
      requestedSource: undefined,
      assumeYesForAsk: true,
      justEvaluate: true,
    };
    const origin = { client: remote, mode: this.name === 'policy.EvalGUI' ? 'eval_gui' : 'eval_simple' };
    const send = (reply: string): void => {
      if (!sock.destroyed) sock.end(reply + '\n', () => sock.destroy());
    };
    if (this.name === 'policy.EvalGUI') {
      const info = systemInfoOrError(this.ctx.systemInfo);
      const check = (i: Awaited<typeof info>): void => {
        const tag = 'guivm-' + remote;
        const ok =
          !(i instanceof Error) &&
          [source, target].every((n) => i.domains.get(n)?.tags.includes(tag) === true);
        if (!ok) {
          log.warning(
            `${this.name} can only be invoked by a domain that provides GUI to both the source and target domains, not ${safe(remote)}`,
          );
          sock.destroy();
          return;
        }
        decideAndRecord(req, this.ctx, send, origin);
      };
      if (info instanceof Promise) void info.then(check);
      else check(info);
      return;
    }
    decideAndRecord(req, this.ctx, send, origin);
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
