/**
 * The GUI domain's web app over HTTP/1.1 (each connection arrives as one
 * qrexec call from dom0's proxy). What protects it:
 *
 * - Login by a random token (printed by dom0 at start, Jupyter style): a
 *   `GET /?token=…` sets an HttpOnly, SameSite=Strict session cookie whose
 *   name carries this server's id (two GUI domains on one host do not clash).
 *   Everything under /api/ needs that session.
 * - Host header: only loopback names (127.0.0.0/8, localhost, [::1]), which
 *   stops DNS rebinding.
 * - Cross-origin: a request whose Origin is not this origin, or whose
 *   Sec-Fetch-Site says another site, is refused; every state change is a
 *   POST that must also carry the session's CSRF token in a header (the page
 *   reads it from a meta element).
 * - A strict Content-Security-Policy: scripts, styles and connections only
 *   from this origin, no inline script or style, no frames, no third-party
 *   origins; plus nosniff, no referrer, frame-ancestors 'none'.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import * as fs from 'node:fs';
import type * as http from 'node:http';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export const CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "font-src 'self'",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy': CSP,
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'permissions-policy': 'camera=(), microphone=(), geolocation=()',
};

/** Where the built front end is (dist/gui-web, made by `npm run build:gui`). */
export const DEFAULT_ASSETS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../gui-web');

const TYPES: Record<string, string> = {
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.woff2': 'font/woff2',
  '.map': 'application/json',
};

interface Session {
  readonly id: string;
  readonly csrf: string;
}

/** One API route's handler: returns a JSON-able value, or throws an {@link HttpError}. */
export type ApiHandler = (req: ApiRequest) => unknown;

export interface ApiRequest {
  readonly method: string;
  readonly path: string;
  readonly params: readonly string[];
  readonly query: URLSearchParams;
  readonly body: unknown;
}

export class HttpError extends Error {
  override name = 'HttpError';
  constructor(
    readonly status: number,
    message: string,
    /** More fields of the JSON error body. */
    readonly extra?: Readonly<Record<string, unknown>>,
  ) {
    super(message);
  }
}

export interface Route {
  readonly method: 'GET' | 'POST';
  /** A pattern like `/api/asks/:id` (each `:x` matches one path segment). */
  readonly pattern: string;
  readonly handler: ApiHandler;
}

/** A long-lived event stream handler: write `event:`/`data:` frames with `send`. */
export type StreamHandler = (send: (event: string, data: unknown) => void, onClose: (f: () => void) => void) => void;

export interface WebAppOptions {
  /** The login token (compared in constant time). */
  readonly token: string;
  /** This GUI domain's name (shown in the page title). */
  readonly name: string;
  readonly assetsDir?: string;
  readonly routes: readonly Route[];
  /** GET /api/events. */
  readonly events: StreamHandler;
  /** Largest JSON body accepted. */
  readonly maxBody?: number;
}

const LOOPBACK_HOST = /^(?:127(?:\.\d{1,3}){3}|localhost|\[::1\])(?::\d{1,5})?$/;

function matchRoute(pattern: string, p: string): string[] | null {
  const a = pattern.split('/');
  const b = p.split('/');
  if (a.length !== b.length) return null;
  const params: string[] = [];
  for (let i = 0; i < a.length; i++) {
    const x = a[i] as string;
    const y = b[i] as string;
    if (x.startsWith(':')) {
      if (y === '') return null;
      params.push(decodeURIComponent(y));
    } else if (x !== y) return null;
  }
  return params;
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** The web app: call {@link handle} for each request. */
export class WebApp {
  /** Cookie name: differs between GUI domains (cookies ignore the port). */
  readonly cookieName = `qgui_${randomBytes(6).toString('hex')}`;
  private readonly sessions = new Map<string, Session>();
  private readonly token: Buffer;
  private readonly assets = new Map<string, { type: string; body: Buffer }>();
  private readonly indexTemplate: string;

  constructor(private readonly opts: WebAppOptions) {
    this.token = Buffer.from(opts.token);
    const dir = opts.assetsDir ?? DEFAULT_ASSETS;
    let files: string[];
    try {
      files = fs.readdirSync(dir);
    } catch (e) {
      throw new Error(`the front end is not built (${dir}: ${(e as Error).message}); run npm run build:gui`, { cause: e });
    }
    for (const f of files) {
      const type = TYPES[path.extname(f)];
      if (type) this.assets.set(`/assets/${f}`, { type, body: fs.readFileSync(path.join(dir, f)) });
    }
    this.indexTemplate = fs.readFileSync(path.join(dir, 'index.html'), 'utf8');
  }

  private send(res: http.ServerResponse, status: number, type: string, body: string | Buffer, extra: Record<string, string> = {}): void {
    res.writeHead(status, { ...SECURITY_HEADERS, 'content-type': type, 'cache-control': 'no-store', ...extra });
    res.end(body);
  }

  private json(res: http.ServerResponse, status: number, value: unknown): void {
    this.send(res, status, 'application/json; charset=utf-8', JSON.stringify(value));
  }

  private session(req: http.IncomingMessage): Session | null {
    const cookie = req.headers.cookie ?? '';
    for (const part of cookie.split(';')) {
      const eq = part.indexOf('=');
      if (eq < 0 || part.slice(0, eq).trim() !== this.cookieName) continue;
      const s = this.sessions.get(part.slice(eq + 1).trim());
      if (s) return s;
    }
    return null;
  }

  private tokenOk(given: string | null): boolean {
    if (given === null) return false;
    const b = Buffer.from(given);
    return b.length === this.token.length && timingSafeEqual(b, this.token);
  }

  /** Handle one request (never throws). */
  handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    try {
      this.route(req, res);
    } catch (e) {
      if (!res.headersSent) this.json(res, 500, { error: (e as Error).message });
      else res.destroy();
    }
  }

  private route(req: http.IncomingMessage, res: http.ServerResponse): void {
    const host = req.headers.host ?? '';
    if (!LOOPBACK_HOST.test(host)) return this.send(res, 421, 'text/plain; charset=utf-8', 'This GUI is served on loopback addresses only.\n');
    const url = new URL(req.url ?? '/', `http://${host}`);
    const method = req.method ?? 'GET';
    const site = req.headers['sec-fetch-site'];
    const origin = req.headers.origin;
    const crossOrigin = (origin !== undefined && origin !== `http://${host}`) || site === 'cross-site' || site === 'same-site';
    if (crossOrigin) return this.json(res, 403, { error: 'cross-origin request refused' });

    if (method === 'GET' && this.assets.has(url.pathname)) {
      const a = this.assets.get(url.pathname) as { type: string; body: Buffer };
      return this.send(res, 200, a.type, a.body, { 'cache-control': 'no-cache' });
    }
    if (method === 'GET' && url.pathname === '/') {
      const token = url.searchParams.get('token');
      if (token !== null) {
        if (!this.tokenOk(token)) return this.loginPage(res, 403, 'That token is not valid for this GUI domain.');
        const s: Session = { id: randomBytes(24).toString('base64url'), csrf: randomBytes(24).toString('base64url') };
        this.sessions.set(s.id, s);
        res.writeHead(303, {
          ...SECURITY_HEADERS,
          location: '/',
          'cache-control': 'no-store',
          'set-cookie': `${this.cookieName}=${s.id}; HttpOnly; SameSite=Strict; Path=/`,
        });
        return void res.end();
      }
      const s = this.session(req);
      if (!s) return this.loginPage(res, 401, '');
      const html = this.indexTemplate
        .replace('%CSRF%', escapeHtml(s.csrf))
        .replaceAll('%NAME%', escapeHtml(this.opts.name));
      return this.send(res, 200, 'text/html; charset=utf-8', html);
    }
    if (!url.pathname.startsWith('/api/')) return this.send(res, 404, 'text/plain; charset=utf-8', 'Not found\n');

    const s = this.session(req);
    if (!s) return this.json(res, 401, { error: 'not logged in' });
    if (method === 'GET' && url.pathname === '/api/events') return this.stream(req, res);
    if (method !== 'GET' && method !== 'POST') return this.json(res, 405, { error: 'method not allowed' });
    if (method === 'POST') {
      const csrf = req.headers['x-qgui-csrf'];
      if (typeof csrf !== 'string' || csrf !== s.csrf) return this.json(res, 403, { error: 'missing or wrong CSRF token' });
      if (!(req.headers['content-type'] ?? '').startsWith('application/json')) return this.json(res, 415, { error: 'expected application/json' });
    }
    let found: { route: Route; params: string[] } | null = null;
    for (const r of this.opts.routes) {
      if (r.method !== method) continue;
      const params = matchRoute(r.pattern, url.pathname);
      if (params) {
        found = { route: r, params };
        break;
      }
    }
    if (!found) return this.json(res, 404, { error: 'no such API' });
    const { route, params } = found;
    const run = (body: unknown): void => {
      Promise.resolve()
        .then(() => route.handler({ method, path: url.pathname, params, query: url.searchParams, body }))
        .then(
          (v) => this.json(res, 200, v ?? {}),
          (e: unknown) => {
            if (e instanceof HttpError) this.json(res, e.status, { ...(e.extra ?? {}), error: e.message });
            else this.json(res, 500, { error: (e as Error).message });
          },
        );
    };
    if (method === 'GET') return run(undefined);
    const max = this.opts.maxBody ?? 1024 * 1024;
    const chunks: Buffer[] = [];
    let len = 0;
    req.on('data', (c: Buffer) => {
      len += c.length;
      if (len > max) {
        this.json(res, 413, { error: 'body too large' });
        req.destroy();
      } else chunks.push(c);
    });
    req.on('end', () => {
      if (len > max) return;
      let body: unknown;
      try {
        body = len === 0 ? {} : (JSON.parse(Buffer.concat(chunks, len).toString('utf8')) as unknown);
      } catch {
        return this.json(res, 400, { error: 'invalid JSON' });
      }
      run(body);
    });
  }

  private stream(req: http.IncomingMessage, res: http.ServerResponse): void {
    res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' });
    res.flushHeaders();
    const closers: (() => void)[] = [];
    const ping = setInterval(() => res.write(': ping\n\n'), 15_000);
    const close = (): void => {
      clearInterval(ping);
      for (const f of closers.splice(0)) f();
    };
    req.on('close', close);
    res.on('error', close);
    this.opts.events(
      (event, data) => {
        if (!res.destroyed) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
      },
      (f) => closers.push(f),
    );
  }

  private loginPage(res: http.ServerResponse, status: number, message: string): void {
    const name = escapeHtml(this.opts.name);
    const html = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${name}: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/assets/app.css"></head>
<body class="login"><main class="login-card" aria-labelledby="login-title">
<h1 id="login-title"><span class="logo" aria-hidden="true"></span>${name}</h1>
<p>This GUI domain needs its access token. Open the link printed when the GUI started, or paste the token here.</p>
${message ? `<p class="login-error" role="alert">${escapeHtml(message)}</p>` : ''}
<form method="get" action="/"><label for="token">Token</label>
<input id="token" name="token" type="password" autocomplete="off" required>
<button type="submit">Log in</button></form></main></body></html>
`;
    this.send(res, status, 'text/html; charset=utf-8', html);
  }
}
