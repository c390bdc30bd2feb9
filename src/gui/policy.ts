/**
 * The policy editor's and audit view's calls from the GUI domain: the
 * Policy API (policy.List/Get/Replace/Diff/Eval and their include.*
 * variants, docs/POLICY-API.md) and our read-only `audit.Query`, each one
 * qrexec call to dom0 under the policy (by default only sys-gui may:
 * policy/50-gui-admin.policy). dom0 validates every change; the errors it
 * gives (`Policy change validation failed: FILE:LINE: ...`, `Token
 * mismatch`) are passed on as they came.
 */
import type { AdminTransport, ServiceReply } from './admin.js';

/** A refused or failed Policy API call: `kind` is the exception class dom0 named. */
export class PolicyCallError extends Error {
  override name = 'PolicyCallError';
  constructor(
    readonly kind: string,
    message: string,
    /** `file:line` diagnostics found in the message. */
    readonly diagnostics: readonly { file: string; line: number; message: string }[] = [],
  ) {
    super(message);
  }
}

/** `include/NAME` or `NAME` (no dots: the API's own rule). */
const FILE = /^(include\/)?[\w-]{1,100}$/;

function split(name: string): { ns: 'policy' | 'policy.include'; base: string } {
  if (!FILE.test(name)) throw new PolicyCallError('PolicyAdminInvalidFileNameException', 'invalid policy file name');
  return name.startsWith('include/') ? { ns: 'policy.include', base: name.slice(8) } : { ns: 'policy', base: name };
}

/** Diagnostics `FILE:LINE: message` in an error text. */
export function diagnosticsOf(text: string): { file: string; line: number; message: string }[] {
  const out: { file: string; line: number; message: string }[] = [];
  for (const m of text.matchAll(/([\w./@-]+\.policy|[\w./@-]+):(\d+): ([^\n]*)/g)) out.push({ file: m[1] as string, line: Number(m[2]), message: m[3] as string });
  return out;
}

function check(what: string, r: ServiceReply): string {
  if (r.refused) throw new PolicyCallError('Refused', `${what}: refused by the policy`);
  if (r.code !== 0) {
    const text = r.stderr.trim();
    const sp = text.indexOf(' ');
    const kind = sp > 0 && /^[A-Za-z]+$/.test(text.slice(0, sp)) ? text.slice(0, sp) : 'Error';
    const message = sp > 0 && kind !== 'Error' ? text.slice(sp + 1) : text || `${what}: exit status ${r.code}`;
    throw new PolicyCallError(kind, message, diagnosticsOf(message));
  }
  return r.stdout.toString('utf8');
}

export interface PolicyFile {
  readonly name: string;
  readonly token: string;
  readonly content: string;
}

export interface AuditQuery {
  readonly source?: string;
  readonly target?: string;
  readonly service?: string;
  readonly result?: 'allow' | 'deny';
  readonly sinceMs?: number;
  readonly limit?: number;
}

export class PolicyClient {
  constructor(private readonly t: AdminTransport) {}

  private async call(service: string, payload = ''): Promise<string> {
    return check(service, await this.t.service('dom0', service, payload));
  }

  /** Every policy file and include file, `include/` names after the others. */
  async list(): Promise<string[]> {
    const names = (await this.call('policy.List+')).split('\n').filter(Boolean);
    const inc = await this.call('policy.include.List+').then(
      (t) => t.split('\n').filter(Boolean).map((n) => `include/${n}`),
      () => [] as string[],
    );
    return [...names, ...inc];
  }

  /** The services the rules of every file name (their first column; not `*`), sorted. */
  async services(): Promise<string[]> {
    const names = await this.list();
    const files = await Promise.all(names.map((n) => this.get(n).catch(() => null)));
    const out = new Set<string>();
    for (const f of files) {
      for (const line of f?.content.split('\n') ?? []) {
        const svc = /^\s*([^\s#!]\S*)\s/.exec(line)?.[1];
        if (svc !== undefined && svc !== '*' && /^[\w.+-]{1,200}$/.test(svc)) out.add(svc);
      }
    }
    return [...out].sort();
  }

  /** policy.GetFiles: the files with rules for `service` (or `*`), in load order. */
  async filesFor(service: string): Promise<string[]> {
    if (!/^[\w.-]{1,200}$/.test(service)) throw new PolicyCallError('PolicyAdminProtocolException', 'invalid service name');
    return (await this.call(`policy.GetFiles+${service}`)).split('\n').filter(Boolean);
  }

  async get(name: string): Promise<PolicyFile> {
    const { ns, base } = split(name);
    const text = await this.call(`${ns}.Get+${base}`);
    const nl = text.indexOf('\n');
    return { name, token: text.slice(0, nl), content: text.slice(nl + 1) };
  }

  /** The impact of a change (nothing written); validation errors throw. */
  async diff(name: string, token: string, content: string): Promise<unknown> {
    const { ns, base } = split(name);
    return JSON.parse(await this.call(`${ns}.Diff+${base}`, `${token}\n${content}`)) as unknown;
  }

  /** Replace with the token read: a change made meanwhile is a `Token mismatch`, not overwritten. */
  async replace(name: string, token: string, content: string): Promise<void> {
    const { ns, base } = split(name);
    await this.call(`${ns}.Replace+${base}`, `${token}\n${content}`);
  }

  /** policy.Eval: how a call would be decided. */
  async evaluate(service: string, source: string, target: string): Promise<unknown> {
    if (!/^[\w.+-]{1,200}$/.test(service) || !/^[\w@:.-]{1,100}$/.test(source) || !/^[\w@:.-]{1,100}$/.test(target)) throw new PolicyCallError('PolicyAdminProtocolException', 'invalid service, source or target');
    return JSON.parse(await this.call(`policy.Eval+${service}`, `${source} ${target}`)) as unknown;
  }

  /** audit.Query: the decision log's rows, oldest first. */
  async audit(q: AuditQuery): Promise<unknown[]> {
    return JSON.parse(await this.call('audit.Query+', JSON.stringify(q))) as unknown[];
  }
}
