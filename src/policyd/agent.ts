/**
 * qrexec-policy-agent: serves `policy.Ask` and `policy.Notify` (the socket
 * services the policy daemon calls in a GUI domain) on a unix socket, with a
 * terminal front end until the GUI domain's web app exists.
 *
 * Socket protocol (reference qrexec/server.py SocketService): the caller
 * writes `SERVICE SOURCE_DOMAIN[ ...]\0`, then JSON, then EOF; the agent
 * answers with plain text and closes. policy.Ask params:
 * `{source, service, argument, targets, default_target, icons}`, answer
 * `allow:TARGET` or `deny`. policy.Notify params: `{resolution, service,
 * argument, source, target}`, answer empty.
 *
 * The terminal front end asks one question at a time; it accepts only one
 * of the offered targets (by number or exact name), treats an empty line,
 * `deny`, an unanswered prompt (timeout) and end of input as deny, and
 * discards anything typed before the question was shown.
 */
import * as net from 'node:net';
import { safe, type Logger } from './log.js';
import { listenUnix } from './listen.js';

export interface AskRequest {
  readonly source: string;
  readonly service: string;
  readonly argument: string;
  readonly targets: readonly string[];
  readonly defaultTarget: string | null;
}

export interface NotifyRequest {
  readonly resolution: 'allow' | 'deny' | 'fail';
  readonly service: string;
  readonly argument: string;
  readonly source: string;
  readonly target: string;
}

/** Shows questions and notifications to the user. */
export interface AgentFrontend {
  /** Resolves with the chosen target (one of `targets`) or null for deny. */
  ask(req: AskRequest): Promise<string | null>;
  notify(n: NotifyRequest): void;
}

const MAX_REQUEST = 1024 * 1024;
/** Qube names, tokens (@dispvm:NAME, uuid:...), service names and arguments. */
const TOKEN = /^[A-Za-z0-9@_.:+-]{1,200}$/;

function str(o: Record<string, unknown>, k: string): string {
  const v = o[k];
  if (typeof v !== 'string') throw new Error(`${k}: expected a string`);
  return v;
}

function token(o: Record<string, unknown>, k: string): string {
  const v = str(o, k);
  if (!TOKEN.test(v)) throw new Error(`${k}: invalid value`);
  return v;
}

/** Validate policy.Ask params. @throws on anything malformed */
export function parseAskParams(json: unknown): AskRequest {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new Error('expected a JSON object');
  const o = json as Record<string, unknown>;
  const targets = o['targets'];
  if (!Array.isArray(targets) || targets.length === 0 || targets.length > 10_000) throw new Error('targets: expected a list');
  for (const t of targets) if (typeof t !== 'string' || !TOKEN.test(t)) throw new Error('targets: invalid entry');
  const def = str(o, 'default_target');
  if (def !== '' && !TOKEN.test(def)) throw new Error('default_target: invalid value');
  return {
    source: token(o, 'source'),
    service: token(o, 'service'),
    argument: token(o, 'argument'),
    targets: targets as string[],
    defaultTarget: def === '' || !(targets as string[]).includes(def) ? null : def,
  };
}

/** Validate policy.Notify params. @throws on anything malformed */
export function parseNotifyParams(json: unknown): NotifyRequest {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new Error('expected a JSON object');
  const o = json as Record<string, unknown>;
  const resolution = str(o, 'resolution');
  if (resolution !== 'allow' && resolution !== 'deny' && resolution !== 'fail') throw new Error('resolution: invalid value');
  return {
    resolution,
    service: token(o, 'service'),
    argument: token(o, 'argument'),
    source: token(o, 'source'),
    target: token(o, 'target'),
  };
}

/** The socket server. */
export class PolicyAgent {
  private readonly server: net.Server;

  constructor(
    private readonly frontend: AgentFrontend,
    private readonly log: Logger,
    private readonly readTimeoutMs = 10_000,
  ) {
    this.server = net.createServer({ allowHalfOpen: true }, (s) => this.accept(s));
    // a failed listen is the caller's to report (listenUnix rejects); later errors are logged
    this.server.on('error', (e) => {
      if (this.server.listening) log.error(`agent socket: ${e.message}`);
    });
  }

  listen(socketPath: string): Promise<void> {
    return listenUnix(this.server, socketPath);
  }

  private accept(sock: net.Socket): void {
    const chunks: Buffer[] = [];
    let len = 0;
    const timer = setTimeout(() => {
      this.log.warning('request not complete in time, closing');
      sock.destroy();
    }, this.readTimeoutMs);
    sock.on('data', (c: Buffer) => {
      len += c.length;
      if (len > MAX_REQUEST) {
        clearTimeout(timer);
        this.log.warning('request too long, closing');
        sock.destroy();
        return;
      }
      chunks.push(c);
    });
    sock.on('end', () => {
      clearTimeout(timer);
      void this.handle(Buffer.concat(chunks, len)).then((reply) => {
        if (!sock.destroyed) sock.end(reply, () => sock.destroy());
      });
    });
    sock.on('error', () => clearTimeout(timer));
  }

  /** Answer one request (never rejects). */
  async handle(data: Buffer): Promise<string> {
    const nul = data.indexOf(0);
    if (nul < 0) {
      this.log.warning('request without a header');
      return '';
    }
    const header = data.subarray(0, nul).toString('latin1').split(' ');
    const service = header[0] ?? '';
    let params: unknown;
    try {
      params = JSON.parse(data.subarray(nul + 1).toString('utf8')) as unknown;
    } catch {
      this.log.warning(`${safe(service)}: invalid JSON`);
      return service === 'policy.Ask' ? 'deny' : '';
    }
    if (service === 'policy.Ask') {
      let req: AskRequest;
      try {
        req = parseAskParams(params);
      } catch (e) {
        this.log.warning(`policy.Ask: ${(e as Error).message}; denying`);
        return 'deny';
      }
      try {
        const target = await this.frontend.ask(req);
        return target !== null && req.targets.includes(target) ? `allow:${target}` : 'deny';
      } catch (e) {
        this.log.error(`policy.Ask: ${(e as Error).message}; denying`);
        return 'deny';
      }
    }
    if (service === 'policy.Notify') {
      try {
        this.frontend.notify(parseNotifyParams(params));
      } catch (e) {
        this.log.warning(`policy.Notify: ${(e as Error).message}`);
      }
      return '';
    }
    this.log.warning(`unknown service name: ${safe(service)}`);
    return '';
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/**
 * Terminal front end: questions on `output`, answers from `input` lines.
 */
export class TtyFrontend implements AgentFrontend {
  private queue: Promise<unknown> = Promise.resolve();
  private buffered = '';
  private waiting: ((line: string | null) => void) | null = null;
  private ended = false;

  constructor(
    input: NodeJS.ReadableStream,
    private readonly output: NodeJS.WritableStream,
    private readonly timeoutMs = 60_000,
    private readonly maxAttempts = 3,
  ) {
    input.setEncoding('utf8');
    input.on('data', (c: string) => {
      // Type-ahead is discarded: only what is typed after a question answers it.
      if (this.waiting === null) return;
      this.buffered += c;
      this.drain();
    });
    input.on('end', () => {
      this.ended = true;
      const w = this.waiting;
      this.waiting = null;
      w?.(null);
    });
  }

  private drain(): void {
    const nl = this.buffered.indexOf('\n');
    if (nl < 0 || this.waiting === null) return;
    const line = this.buffered.slice(0, nl).replace(/\r$/, '');
    this.buffered = '';
    const w = this.waiting;
    this.waiting = null;
    w(line);
  }

  private readLine(): Promise<string | null> {
    if (this.ended) return Promise.resolve(null);
    this.buffered = '';
    return new Promise((resolve) => {
      this.waiting = resolve;
    });
  }

  ask(req: AskRequest): Promise<string | null> {
    const run = this.queue.then(() => this.askNow(req));
    this.queue = run.catch(() => {});
    return run;
  }

  private async askNow(req: AskRequest): Promise<string | null> {
    const out = this.output;
    const rpc = req.argument === '+' ? req.service : req.service + req.argument;
    let text = `\nqrexec-policy-agent: ${safe(req.source)} wants to call ${safe(rpc)}. Allow it, and to which qube?\n`;
    req.targets.forEach((t, i) => {
      text += `  ${i + 1}) ${safe(t)}${t === req.defaultTarget ? '  (suggested)' : ''}\n`;
    });
    out.write(text);
    const deadline = Date.now() + this.timeoutMs;
    for (let attempt = 0; attempt < this.maxAttempts; attempt++) {
      out.write('Target number or name, or Enter to deny: ');
      const left = deadline - Date.now();
      let timer: NodeJS.Timeout | undefined;
      const line = await Promise.race([
        this.readLine(),
        new Promise<'timeout'>((resolve) => {
          timer = setTimeout(() => resolve('timeout'), Math.max(0, left));
        }),
      ]);
      clearTimeout(timer);
      if (line === 'timeout') {
        this.waiting = null;
        out.write('\nNo answer in time: denied.\n');
        return null;
      }
      if (line === null) {
        out.write('\nEnd of input: denied.\n');
        return null;
      }
      const a = line.trim();
      if (a === '' || a === 'deny' || a === 'n' || a === 'no') {
        out.write('Denied.\n');
        return null;
      }
      let chosen: string | undefined;
      if (/^\d+$/.test(a)) chosen = req.targets[Number(a) - 1];
      else if (req.targets.includes(a)) chosen = a;
      if (chosen !== undefined) {
        out.write(`Allowed to ${safe(chosen)}.\n`);
        return chosen;
      }
      out.write(`"${safe(a, 80)}" is not one of the offered targets.\n`);
    }
    out.write('Denied.\n');
    return null;
  }

  notify(n: NotifyRequest): void {
    const rpc = n.argument === '+' ? n.service : n.service + n.argument;
    const what = n.resolution === 'allow' ? 'Allowed' : n.resolution === 'deny' ? 'Denied' : 'Failed';
    this.output.write(`qrexec-policy-agent: ${what}: ${safe(rpc)} from ${safe(n.source)} to ${safe(n.target)}\n`);
  }
}
