/**
 * The Policy API's services (reference qrexec/policy/admin.py PolicyAdmin):
 * list, get, replace and remove policy files and include files, and list the
 * files that mention a service. Every change is validated by loading the
 * whole policy with the change applied (our engine; file:line errors) and,
 * when given, by the extra checks (policy tests, delegation scopes); a change
 * that fails is refused and nothing is written. Calls are synchronous, so in
 * the one process serving them they are serialised: that is the exclusive
 * lock the reference takes with flock().
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LoadCache, loadRules, Policy, PolicySyntaxError, type Rule } from '../policy/index.js';
import { diskSource } from '../policy-files/disk.js';
import {
  PolicyAdminException,
  PolicyAdminFileNotFoundException,
  PolicyAdminInvalidFilePathException,
  PolicyAdminProtocolException,
  PolicyAdminSyntaxException,
} from './errors.js';
import { checkArgument, checkFileName, checkServiceName, checkToken, METHODS, parseToken, splitReplacePayload, type Kind, type Method, type Token } from './names.js';
import { computeToken, overlaySource, readIfFile, removeDurably, removeStaleTemps, writeAtomic } from './store.js';

/** A service's answer: exit status, stdout, stderr (the reference's way of replying). */
export interface Reply {
  readonly code: number;
  readonly stdout: Buffer;
  readonly stderr: string;
}

/** An accepted change. */
export interface PolicyChange {
  readonly timeMs: number;
  /** The calling qube (dom0 for local callers). */
  readonly caller: string;
  readonly service: string;
  readonly kind: Kind;
  /** File name as given (no suffix). */
  readonly name: string;
  /** The file's path. */
  readonly file: string;
  /** Token before (null: there was no file) and after (null: removed). */
  readonly oldToken: string | null;
  readonly newToken: string | null;
  /** The new content (null: removed). */
  readonly content: Buffer | null;
  /** The content before (null: there was no file). */
  readonly oldContent: Buffer | null;
}

/** A proposed change, for extra checks. */
export interface ProposedChange {
  readonly caller: string;
  readonly kind: Kind;
  readonly name: string;
  readonly file: string;
  readonly content: Buffer | null;
  /** The whole policy with the change applied (it loaded). */
  readonly policy: Policy;
  /** The rules that came from this file (or files it includes) in the new policy. */
  readonly rulesOfFile: readonly Rule[];
}

/** Throws a PolicyAdminException to refuse a change. */
export type ChangeCheck = (c: ProposedChange) => void;
/** Throws a PolicyAdminException to refuse a change before it is even loaded. */
export type AccessCheck = (c: Omit<ProposedChange, 'policy' | 'rulesOfFile'>) => void;

export interface PolicyAdminOptions {
  /** The directory the API edits (reference $QREXEC_POLICY_DIR, /etc/qubes/policy.d). */
  readonly dir: string;
  /** Every directory the policy is loaded from, for validation (default: `dir` alone). */
  readonly policyDirs?: readonly string[];
  readonly legacyDir?: string;
  /** Where details of internal errors are logged (named in their message). */
  readonly logName?: string;
  readonly log?: (level: 'info' | 'warning' | 'error', msg: string) => void;
  /** Extra checks of every change, after the policy loaded. */
  readonly checks?: readonly ChangeCheck[];
  /** Checks of who may write what, before the change is validated (delegation). */
  readonly access?: readonly AccessCheck[];
  /** After a change was written: the new policy (audit, history, the daemon's reload). */
  readonly onChange?: (c: PolicyChange, policy: Policy) => void;
  /** Services beyond the reference's nine (ours: policy.Eval, policy.Diff...). */
  readonly extra?: ReadonlyMap<string, ExtraService>;
  /** Awaited by serve() before a change or a dry run (e.g. fetching system info for the checks). */
  readonly beforeWrite?: () => Promise<void>;
  /** The policy in force (the daemon's), when loaded; else it is loaded from disk. */
  readonly current?: () => Policy | null;
}

/** A service of ours served next to the reference's. */
export interface ExtraService {
  readonly noArg: boolean;
  readonly noPayload: boolean;
  handle(arg: string, payload: Buffer, caller: string): Buffer | Promise<Buffer>;
}

export class PolicyAdmin {
  readonly dir: string;
  readonly includeDir: string;
  readonly policyDirs: readonly string[];
  readonly legacyDir: string;
  private readonly log: NonNullable<PolicyAdminOptions['log']>;
  /** Validation parses only the changed file (and those whose reads changed). */
  private readonly cache = new LoadCache();

  constructor(private readonly opts: PolicyAdminOptions) {
    this.dir = diskSource.resolve(opts.dir);
    this.includeDir = path.join(this.dir, 'include');
    this.policyDirs = (opts.policyDirs ?? [opts.dir]).map((d) => diskSource.resolve(d));
    if (!this.policyDirs.includes(this.dir)) this.policyDirs = [...this.policyDirs, this.dir];
    this.legacyDir = opts.legacyDir ?? '/etc/qubes-rpc/policy';
    this.log = opts.log ?? (() => undefined);
    removeStaleTemps(this.dir);
  }

  /**
   * Serves one call of the reference's services, synchronously: `service`
   * without argument, the argument ('' when none), stdin.
   */
  handle(service: string, arg: string, payload: Buffer, caller: string): Reply {
    try {
      const out = this.dispatch(service, arg, payload, caller);
      if (out instanceof Promise) throw new Error(`${service} is asynchronous: use serve()`);
      return this.ok(service, arg, caller, out);
    } catch (e) {
      return this.failed(service, arg, caller, e);
    }
  }

  /** Serves one call of any service (ours may wait for system info). */
  async serve(service: string, arg: string, payload: Buffer, caller: string): Promise<Reply> {
    try {
      if (METHODS.get(service)?.writes || service.endsWith('.Diff')) await this.opts.beforeWrite?.();
      return this.ok(service, arg, caller, await this.dispatch(service, arg, payload, caller));
    } catch (e) {
      return this.failed(service, arg, caller, e);
    }
  }

  private ok(service: string, arg: string, caller: string, out: Buffer): Reply {
    this.log('info', `${service}+${arg} (${caller})`);
    return { code: 0, stdout: out, stderr: '' };
  }

  private failed(service: string, arg: string, caller: string, e: unknown): Reply {
    if (e instanceof PolicyAdminException) {
      this.log('warning', `${service}+${arg} (${caller}): error: ${e.message}`);
      return { code: 1, stdout: Buffer.alloc(0), stderr: `${e.name} ${e.message}` };
    }
    this.log('error', `${service}+${arg} (${caller}): exception: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    return { code: 2, stdout: Buffer.alloc(0), stderr: `Internal error. See '${this.opts.logName ?? 'the qrexec-host log'}' in dom0 for details.` };
  }

  /** Every service served (the reference's and ours). */
  serviceNames(): string[] {
    return [...METHODS.keys(), ...(this.opts.extra?.keys() ?? [])];
  }

  private dispatch(service: string, arg: string, payload: Buffer, caller: string): Buffer | Promise<Buffer> {
    checkArgument(arg);
    const method: Method | ExtraService | undefined = METHODS.get(service) ?? this.opts.extra?.get(service);
    if (!method) throw new PolicyAdminProtocolException(`unrecognized method: ${service}`);
    if (method.noArg && arg !== '') throw new PolicyAdminProtocolException('Unexpected argument');
    if (method.noPayload && payload.length !== 0) throw new PolicyAdminProtocolException('Unexpected payload');
    if (!('op' in method)) return method.handle(arg, payload, caller);
    switch (method.op) {
      case 'List':
        return this.list(method.kind);
      case 'Get':
        return this.get(this.pathOf(arg, method.kind));
      case 'Replace': {
        const { token, content } = splitReplacePayload(payload);
        this.change(service, method.kind, arg, token, Buffer.from(content), caller);
        return Buffer.alloc(0);
      }
      case 'Remove':
        this.change(service, method.kind, arg, parseToken(payload.toString('latin1')), null, caller);
        return Buffer.alloc(0);
      case 'GetFiles':
        return this.getFiles(arg);
    }
  }

  /** The path of file NAME of a kind, checked as the reference's _get_path. */
  pathOf(name: string, kind: Kind): string {
    checkFileName(name);
    const dir = kind === 'policy' ? this.dir : this.includeDir;
    const p = diskSource.resolve(path.join(dir, kind === 'policy' ? `${name}.policy` : name));
    if (path.dirname(p) !== dir) throw new PolicyAdminInvalidFilePathException(`Expecting a path inside ${dir}`);
    return p;
  }

  private list(kind: Kind): Buffer {
    const dir = kind === 'policy' ? this.dir : this.includeDir;
    const names: string[] = [];
    for (const e of fs.readdirSync(dir)) {
      const st = fs.statSync(path.join(dir, e), { throwIfNoEntry: false });
      if (!st?.isFile()) continue;
      if (kind === 'include') names.push(e);
      else if (e.endsWith('.policy')) names.push(e.slice(0, -'.policy'.length));
    }
    names.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    return Buffer.from(names.map((n) => n + '\n').join(''), 'utf8');
  }

  private get(p: string): Buffer {
    const data = readIfFile(p);
    if (data === null) throw new PolicyAdminFileNotFoundException(`Not found: ${p}`);
    return Buffer.concat([Buffer.from(computeToken(data) + '\n', 'latin1'), data]);
  }

  /**
   * Every check of a Replace (content) or Remove (null), without writing:
   * the token, the file's existence, loading, the extra checks.
   */
  propose(kind: Kind, name: string, token: Token, content: Buffer | null, caller: string): ProposedChange & { readonly oldToken: string | null; readonly oldContent: Buffer | null } {
    const file = this.pathOf(name, kind);
    const oldContent = readIfFile(file);
    const oldToken = oldContent === null ? null : computeToken(oldContent);
    checkToken(token, oldToken);
    if (content === null && oldToken === null) throw new PolicyAdminFileNotFoundException(`Not found: ${file}`);
    for (const check of this.opts.access ?? []) check({ caller, kind, name, file, content });
    const { policy, rulesOfFile } = this.validate(file, content);
    const proposed: ProposedChange = { caller, kind, name, file, content, policy, rulesOfFile };
    for (const check of this.opts.checks ?? []) check(proposed);
    return { ...proposed, oldToken, oldContent };
  }

  /** Replace (content) or remove (null) a file, after every check. */
  change(service: string, kind: Kind, name: string, token: Token, content: Buffer | null, caller: string): void {
    const { file, oldToken, oldContent, policy } = this.propose(kind, name, token, content, caller);
    if (content === null) removeDurably(file);
    else writeAtomic(file, content, this.dir);
    const change: PolicyChange = {
      timeMs: Date.now(),
      caller,
      service,
      kind,
      name,
      file,
      oldToken,
      newToken: content === null ? null : computeToken(content),
      content,
      oldContent,
    };
    this.opts.onChange?.(change, policy);
  }

  /**
   * Loads the whole policy with `file` replaced by `content` (null:
   * removed). @throws PolicyAdminSyntaxException when it would not load.
   */
  validate(file: string, content: Buffer | null): { policy: Policy; rulesOfFile: Rule[] } {
    if (content !== null) {
      try {
        new TextDecoder('utf-8', { fatal: true }).decode(content);
      } catch {
        throw new PolicyAdminSyntaxException(`Policy change validation failed: ${file}:None: invalid UTF-8`);
      }
    }
    const src = overlaySource(new Map([[file, content]]));
    let rules: Rule[];
    try {
      rules = loadRules(src, { policyDirs: this.policyDirs, legacyDir: this.legacyDir, cache: this.cache });
    } catch (e) {
      if (e instanceof PolicySyntaxError) throw new PolicyAdminSyntaxException(`Policy change validation failed: ${e.message}`);
      throw e;
    }
    return { policy: new Policy(rules), rulesOfFile: rulesFrom(rules, file) };
  }

  /** The policy as the files are now. */
  currentPolicy(): Policy {
    return this.opts.current?.() ?? new Policy(loadRules(diskSource, { policyDirs: this.policyDirs, legacyDir: this.legacyDir }));
  }

  private getFiles(service: string): Buffer {
    checkServiceName(service);
    const policy = new Policy(loadRules(diskSource, { policyDirs: [this.dir], legacyDir: this.legacyDir }));
    const files: string[] = [];
    for (const r of policy.rulesForService(service)) {
      const rel = path.relative(this.dir, r.file);
      const name = rel.startsWith('..') || path.isAbsolute(rel) ? r.file : stem(r.file);
      if (!files.includes(name)) files.push(name);
    }
    return Buffer.from(files.map((f) => f + '\n').join(''), 'utf8');
  }
}

/** Python's Path.stem. */
function stem(p: string): string {
  const b = path.basename(p);
  const dot = b.lastIndexOf('.');
  return dot > 0 ? b.slice(0, dot) : b;
}

/**
 * The rules a file contributes to a policy: its own lines and those of the
 * files it includes. Rules are in load order, so those of one top-level file
 * are contiguous; for an include file, its own lines wherever included.
 */
export function rulesFrom(rules: readonly Rule[], file: string): Rule[] {
  return rules.filter((r) => r.file === file);
}
