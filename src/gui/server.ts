/**
 * The GUI domain's server (runs inside sys-gui): qrexec socket services in
 * the qube's service directory, all on one event loop.
 *
 * - `gui.Http`: one HTTP/1.1 connection per call (dom0's proxy makes one
 *   call per browser connection); served by {@link WebApp}.
 * - `gui.Token`: answers the login token, so that dom0 can print the URL.
 * - `policy.Ask`, `policy.Notify`: the policy daemon's questions and
 *   notifications (reference protocol: header, JSON, EOF; the answer is
 *   `allow:TARGET` or `deny`, then EOF).
 *
 * Every service accepts calls only from the sources listed (dom0 by default):
 * the header's source is what qrexec says the caller is.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { HttpError, WebApp, type Route } from './http.js';
import { parseAsk, parseNotice, Prompts, type Ask, type Notice } from './prompts.js';
import { listenAt, readAll, readHeader, type CallHeader } from './socket-service.js';
import { AdminError, type AdminTransport } from './admin.js';
import { ACTIONS, QubeManager, type QubeAction } from './qubes.js';
import { PolicyCallError, PolicyClient, type AuditQuery } from './policy.js';
import { TerminalError, Terminals } from './terminal.js';

export const SERVICES = ['gui.Http', 'gui.Token', 'policy.Ask', 'policy.Notify'] as const;
export type GuiServiceName = (typeof SERVICES)[number];

export interface GuiServerOptions {
  /** This GUI domain's name (sys-gui). */
  readonly name: string;
  /** The qube's service directory: the sockets are made here. */
  readonly rpcDir: string;
  /** Login token; random when absent. */
  readonly token?: string;
  /** Callers allowed per service (default: dom0 only). */
  readonly allowedSources?: readonly string[];
  readonly askTimeoutMs?: number;
  readonly assetsDir?: string;
  readonly log?: (msg: string) => void;
  /** More API routes. */
  readonly routes?: readonly Route[];
  /** The Admin API (the qube manager); none: the manager says it has no access. */
  readonly admin?: AdminTransport;
  /** Terminals into qubes (default: gui.Terminal calls through this qube's agent, when `admin` is given). */
  readonly terminals?: Terminals;
}

/** An Admin API error as the page shows it. */
function adminHttpError(e: unknown): HttpError {
  if (e instanceof HttpError) return e;
  if (e instanceof PolicyCallError) {
    const status = e.kind === 'Refused' ? 403 : e.kind === 'PolicyAdminTokenException' ? 409 : e.kind === 'PolicyAdminFileNotFoundException' ? 404 : 400;
    return new HttpError(status, e.kind === 'Refused' ? e.message : `${e.kind}: ${e.message}`, { kind: e.kind, diagnostics: e.diagnostics });
  }
  if (e instanceof AdminError) {
    const status = e.excType === 'Refused' ? 403 : e.excType === 'QubesVMNotFoundError' ? 404 : 400;
    return new HttpError(status, e.excType === 'Refused' ? e.message : `${e.excType}: ${e.message}`);
  }
  return new HttpError(500, (e as Error).message);
}

const str = (v: unknown, what: string): string => {
  if (typeof v !== 'string') throw new HttpError(400, `${what}: expected a string`);
  return v;
};

/** Strip what could drive a terminal or forge a log line. */
export function printable(s: string, max = 200): string {
  const t = s.replace(/[\x00-\x1f\x7f-\x9f]/g, '?');
  return t.length > max ? t.slice(0, max) + '…' : t;
}

export class GuiServer {
  readonly token: string;
  readonly prompts: Prompts;
  readonly app: WebApp;
  readonly qubes: QubeManager | null;
  readonly policy: PolicyClient | null;
  readonly terminals: Terminals | null;
  private readonly http: http.Server;
  private readonly servers: net.Server[] = [];
  private readonly log: (msg: string) => void;
  private readonly allowed: ReadonlySet<string>;
  private readonly calls = new Set<net.Socket>();

  constructor(private readonly opts: GuiServerOptions) {
    this.token = opts.token ?? randomBytes(24).toString('hex');
    this.log = opts.log ?? ((m) => void process.stderr.write(`qrexec-gui-server: ${m}\n`));
    this.allowed = new Set(opts.allowedSources ?? ['dom0']);
    this.prompts = new Prompts({ askTimeoutMs: opts.askTimeoutMs ?? 110_000, armMs: 1000, historySize: 500 });
    this.qubes = opts.admin ? new QubeManager(opts.admin, opts.name, (m) => this.log(m)) : null;
    this.policy = opts.admin ? new PolicyClient(opts.admin) : null;
    this.terminals = opts.admin ? (opts.terminals ?? new Terminals()) : null;
    this.app = new WebApp({
      token: this.token,
      name: opts.name,
      ...(opts.assetsDir !== undefined ? { assetsDir: opts.assetsDir } : {}),
      routes: [...this.promptRoutes(), ...this.qubeRoutes(), ...this.policyRoutes(), ...this.terminalRoutes(), ...(opts.routes ?? [])],
      events: (send, onClose) => {
        send('hello', { name: opts.name });
        send('asks', this.asksEvent());
        send('history', this.prompts.history());
        const qm = this.qubes;
        if (qm) {
          void qm.start();
          send('qubes', this.qubesEvent());
          onClose(qm.subscribe((c) => (('all' in c) ? send('qubes', this.qubesEvent()) : send('qube', c))));
        }
        if (this.terminals) onClose(this.terminals.subscribe((e) => send('term', e)));
        onClose(
          this.prompts.subscribe((what, n) => {
            if (what === 'asks') send('asks', this.asksEvent());
            else send('notice', n as Notice);
          }),
        );
      },
    });
    this.http = http.createServer({ keepAliveTimeout: 60_000 }, (req, res) => this.app.handle(req, res));
  }

  private asksEvent(): { now: number; asks: Ask[] } {
    return { now: Date.now(), asks: this.prompts.asks() };
  }

  private qubesEvent(): { loaded: boolean; error: string | null; rows: unknown[] } {
    const qm = this.qubes;
    if (!qm) return { loaded: true, error: 'This GUI domain has no Admin API access.', rows: [] };
    return { loaded: qm.loaded, error: qm.error, rows: qm.list() };
  }

  private qubeRoutes(): Route[] {
    const qm = (): QubeManager => {
      if (!this.qubes) throw new HttpError(503, 'This GUI domain has no Admin API access.');
      return this.qubes;
    };
    const guard = <T>(f: () => Promise<T>): Promise<T> => f().catch((e: unknown) => Promise.reject(adminHttpError(e)));
    return [
      { method: 'GET', pattern: '/api/qubes', handler: () => this.qubesEvent() },
      { method: 'GET', pattern: '/api/labels', handler: () => guard(async () => ({ labels: await qm().labels() })) },
      { method: 'GET', pattern: '/api/qubes/:name', handler: (r) => guard(() => qm().details(r.params[0] as string)) },
      { method: 'GET', pattern: '/api/qubes/:name/audio', handler: (r) => guard(() => qm().audio(r.params[0] as string)) },
      {
        method: 'POST',
        pattern: '/api/qubes',
        handler: (r) =>
          guard(async () => {
            const b = r.body as Record<string, unknown>;
            const netvm = b['netvm'] === undefined || b['netvm'] === null ? null : str(b['netvm'], 'netvm');
            await qm().create({ name: str(b['name'], 'name'), label: str(b['label'], 'label'), template: str(b['template'] ?? '', 'template'), netvm });
            return { ok: true };
          }),
      },
      {
        method: 'POST',
        pattern: '/api/qubes/:name/:what',
        handler: (r) =>
          guard(async () => {
            const [name, what] = r.params as [string, string];
            const b = (r.body ?? {}) as Record<string, unknown>;
            const value = b['value'] === null ? null : b['value'] === undefined ? undefined : str(b['value'], 'value');
            if ((ACTIONS as readonly string[]).includes(what)) await qm().act(name, what as QubeAction);
            else if (what === 'property') await qm().setProperty(name, str(b['name'], 'name'), value ?? null);
            else if (what === 'feature') await qm().setFeature(name, str(b['name'], 'name'), value ?? null);
            else if (what === 'tag') await qm().setTag(name, str(b['name'], 'name'), b['on'] !== false);
            else if (what === 'dispvm') return { name: await qm().startDisposable(name) };
            else if (what === 'audio') return await qm().audio(name, typeof b['muted'] === 'boolean' ? { muted: b['muted'] } : { volume: Number(b['volume']) });
            else throw new HttpError(404, 'no such action');
            return { ok: true };
          }),
      },
    ];
  }

  private terminalRoutes(): Route[] {
    const tm = (): Terminals => {
      if (!this.terminals) throw new HttpError(503, 'This GUI domain opens no terminals.');
      return this.terminals;
    };
    const guard = <T>(f: () => T): T => {
      try {
        return f();
      } catch (e) {
        if (e instanceof TerminalError) throw new HttpError(400, e.message);
        throw e;
      }
    };
    const b = (r: { body: unknown }): Record<string, unknown> => (r.body ?? {}) as Record<string, unknown>;
    return [
      { method: 'POST', pattern: '/api/terms', handler: (r) => guard(() => tm().open(str(b(r)['qube'], 'qube'), Number(b(r)['cols']), Number(b(r)['rows']))) },
      { method: 'GET', pattern: '/api/terms/:id', handler: (r) => guard(() => tm().backlog(r.params[0] as string)) },
      {
        method: 'POST',
        pattern: '/api/terms/:id/input',
        handler: (r) =>
          guard(() => {
            const data = str(b(r)['data'], 'data');
            if (data.length > 65536) throw new HttpError(413, 'input too long');
            tm().input(r.params[0] as string, data);
            return { ok: true };
          }),
      },
      {
        method: 'POST',
        pattern: '/api/terms/:id/resize',
        handler: async (r) => {
          try {
            await tm().resize(r.params[0] as string, Number(b(r)['cols']), Number(b(r)['rows']));
          } catch (e) {
            if (e instanceof TerminalError) throw new HttpError(400, e.message);
            throw e;
          }
          return { ok: true };
        },
      },
      { method: 'POST', pattern: '/api/terms/:id/close', handler: (r) => guard(() => (tm().close(r.params[0] as string), { ok: true })) },
    ];
  }

  private policyRoutes(): Route[] {
    const pc = (): PolicyClient => {
      if (!this.policy) throw new HttpError(503, 'This GUI domain has no Policy API access.');
      return this.policy;
    };
    const guard = <T>(f: () => Promise<T>): Promise<T> => f().catch((e: unknown) => Promise.reject(adminHttpError(e)));
    const body = (r: { body: unknown }): Record<string, unknown> => (r.body ?? {}) as Record<string, unknown>;
    return [
      { method: 'GET', pattern: '/api/policy', handler: () => guard(async () => ({ files: await pc().list() })) },
      { method: 'GET', pattern: '/api/policy/file', handler: (r) => guard(() => pc().get(r.query.get('name') ?? '')) },
      { method: 'GET', pattern: '/api/policy/files-for', handler: (r) => guard(async () => ({ files: await pc().filesFor(r.query.get('service') ?? '') })) },
      {
        // what the editor completes: only what this GUI domain may see
        method: 'GET',
        pattern: '/api/policy/vocabulary',
        handler: () =>
          guard(async () => {
            const rows = this.qubes?.list() ?? [];
            const [services, tags] = await Promise.all([pc().services(), this.qubes ? this.qubes.tags() : Promise.resolve([])]);
            return { qubes: rows.map((r) => r.name), tags, dispvmTemplates: rows.filter((r) => r.dispvmTemplate).map((r) => r.name), services };
          }),
      },
      {
        method: 'POST',
        pattern: '/api/policy/check',
        handler: (r) => guard(async () => ({ diff: await pc().diff(str(body(r)['name'], 'name'), str(body(r)['token'], 'token'), str(body(r)['content'], 'content')) })),
      },
      {
        method: 'POST',
        pattern: '/api/policy/save',
        handler: (r) =>
          guard(async () => {
            const b = body(r);
            const name = str(b['name'], 'name');
            await pc().replace(name, str(b['token'], 'token'), str(b['content'], 'content'));
            return pc().get(name);
          }),
      },
      {
        method: 'POST',
        pattern: '/api/policy/eval',
        handler: (r) => guard(async () => pc().evaluate(str(body(r)['service'], 'service'), str(body(r)['source'], 'source'), str(body(r)['target'], 'target'))),
      },
      {
        method: 'POST',
        pattern: '/api/audit',
        handler: (r) => guard(async () => ({ rows: await pc().audit(body(r) as AuditQuery) })),
      },
    ];
  }

  private promptRoutes(): Route[] {
    return [
      { method: 'GET', pattern: '/api/state', handler: () => ({ name: this.opts.name, asks: this.prompts.asks(), history: this.prompts.history() }) },
      {
        method: 'POST',
        pattern: '/api/asks/:id',
        handler: (r) => {
          const body = r.body as { target?: unknown };
          const target = body.target;
          if (target !== null && typeof target !== 'string') throw new HttpError(400, 'target: expected a qube name or null');
          const result = this.prompts.answer(r.params[0] as string, target);
          if (result === 'unknown') throw new HttpError(404, 'no such prompt (answered or timed out)');
          if (result === 'bad-target') throw new HttpError(400, 'that target was not offered');
          if (result === 'too-early') throw new HttpError(409, 'the prompt is not armed yet');
          return { ok: true };
        },
      },
    ];
  }

  /** Make the sockets. */
  async listen(): Promise<void> {
    // the model loads now, not when the first page asks for it
    void this.qubes?.start();
    fs.mkdirSync(this.opts.rpcDir, { recursive: true });
    for (const svc of SERVICES) {
      const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: false }, (s) => this.accept(svc, s));
      server.on('error', (e) => this.log(`${svc}: ${e.message}`));
      await listenAt(server, path.join(this.opts.rpcDir, svc));
      this.servers.push(server);
    }
  }

  private accept(svc: GuiServiceName, sock: net.Socket): void {
    this.calls.add(sock);
    sock.on('close', () => this.calls.delete(sock));
    sock.on('error', () => undefined);
    readHeader(sock).then(
      ({ header, rest }) => {
        if (!this.allowed.has(header.source)) {
          this.log(`${svc}: call from ${printable(header.source)} refused`);
          sock.destroy();
          return;
        }
        this.serve(svc, header, rest, sock);
      },
      (e: Error) => {
        this.log(`${svc}: ${e.message}`);
        sock.destroy();
      },
    );
  }

  private serve(svc: GuiServiceName, header: CallHeader, rest: Buffer, sock: net.Socket): void {
    switch (svc) {
      case 'gui.Http':
        if (rest.length > 0) sock.unshift(rest);
        sock.resume();
        this.http.emit('connection', sock);
        return;
      case 'gui.Token':
        sock.end(this.token + '\n');
        return;
      case 'policy.Ask':
      case 'policy.Notify':
        readAll(sock, rest, 1024 * 1024).then(
          (data) => this.policyService(svc, data, sock),
          (e: Error) => this.log(`${svc} from ${printable(header.source)}: ${e.message}`),
        );
        return;
    }
  }

  private policyService(svc: 'policy.Ask' | 'policy.Notify', data: Buffer, sock: net.Socket): void {
    let json: unknown;
    try {
      json = JSON.parse(data.toString('utf8')) as unknown;
    } catch {
      this.log(`${svc}: invalid JSON`);
      sock.end(svc === 'policy.Ask' ? 'deny' : '');
      return;
    }
    if (svc === 'policy.Notify') {
      try {
        this.prompts.notify(parseNotice(json));
      } catch (e) {
        this.log(`policy.Notify: ${(e as Error).message}`);
      }
      sock.end();
      return;
    }
    let input;
    try {
      input = parseAsk(json);
    } catch (e) {
      this.log(`policy.Ask: ${(e as Error).message}; denying`);
      sock.end('deny');
      return;
    }
    // the caller going away (the policy daemon's own timeout) withdraws the question
    let gone = false;
    const ask = this.prompts.ask(input);
    sock.once('close', () => {
      gone = true;
      this.prompts.answer(ask.id, null);
    });
    void ask.answer.then((target) => {
      if (gone) return;
      sock.end(target === null ? 'deny' : `allow:${target}`);
    });
  }

  async close(): Promise<void> {
    this.prompts.close();
    this.qubes?.close();
    this.terminals?.closeAll();
    for (const s of this.calls) s.destroy();
    await Promise.all(this.servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    this.http.close();
    for (const svc of SERVICES) {
      try {
        fs.unlinkSync(path.join(this.opts.rpcDir, svc));
      } catch {
        // gone
      }
    }
  }
}
