/**
 * History of accepted changes (ours, not in the reference): every version a
 * change replaced or wrote is kept, content-addressed (`objects/<sha256>`),
 * and every change is a line of `log.jsonl` (when, who, which file, old and
 * new token). Retention: at most `maxEntries` log lines (the oldest go
 * first) and none older than `maxAgeDays`; objects no line names any more
 * are deleted. The directory lies outside the policy directory (the daemon
 * never reads it).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PolicyAdminFileNotFoundException, PolicyAdminProtocolException } from './errors.js';
import type { ExtraService, PolicyChange } from './admin.js';
import { computeToken, writeAtomic } from './store.js';
import type { Kind } from './names.js';
import { checkFileName } from './names.js';

export interface HistoryEntry {
  readonly timeMs: number;
  readonly caller: string;
  readonly service: string;
  readonly kind: Kind;
  readonly name: string;
  readonly old: string | null;
  readonly new: string | null;
}

export interface HistoryOptions {
  readonly dir: string;
  /** Most log lines kept (default 10,000; 0: no limit). */
  readonly maxEntries?: number;
  /** Lines older than this are dropped (default 0: kept). */
  readonly maxAgeDays?: number;
}

const HEX = /^[0-9a-f]{64}$/;

export class PolicyHistory {
  private readonly objects: string;
  private readonly logFile: string;

  constructor(private readonly opts: HistoryOptions) {
    this.objects = path.join(opts.dir, 'objects');
    this.logFile = path.join(opts.dir, 'log.jsonl');
    fs.mkdirSync(this.objects, { recursive: true, mode: 0o750 });
  }

  private put(data: Buffer): string {
    const token = computeToken(data);
    const file = path.join(this.objects, token.slice('sha256:'.length));
    if (!fs.existsSync(file)) writeAtomic(file, data, this.objects, 0o640);
    return token;
  }

  /** Records an accepted change (both versions' contents). */
  record(c: PolicyChange): void {
    if (c.oldContent !== null) this.put(c.oldContent);
    if (c.content !== null) this.put(c.content);
    const e: HistoryEntry = { timeMs: c.timeMs, caller: c.caller, service: c.service, kind: c.kind, name: c.name, old: c.oldToken, new: c.newToken };
    const fd = fs.openSync(this.logFile, 'a', 0o640);
    try {
      fs.writeSync(fd, JSON.stringify(e) + '\n');
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    this.prune();
  }

  entries(): HistoryEntry[] {
    let text: string;
    try {
      text = fs.readFileSync(this.logFile, 'utf8');
    } catch {
      return [];
    }
    // a line cut short by a crash is skipped
    return text.split('\n').flatMap((l) => {
      try {
        return l ? [JSON.parse(l) as HistoryEntry] : [];
      } catch {
        return [];
      }
    });
  }

  /** The changes of one file, oldest first. */
  log(kind: Kind, name: string): HistoryEntry[] {
    return this.entries().filter((e) => e.kind === kind && e.name === name);
  }

  /** A kept version by token (`sha256:HEX` or HEX). */
  show(token: string): Buffer {
    const hex = token.startsWith('sha256:') ? token.slice('sha256:'.length) : token;
    if (!HEX.test(hex)) throw new PolicyAdminProtocolException('Invalid token: want sha256:<64 hex digits>');
    try {
      return fs.readFileSync(path.join(this.objects, hex));
    } catch {
      throw new PolicyAdminFileNotFoundException(`No such version: sha256:${hex}`);
    }
  }

  private prune(): void {
    const max = this.opts.maxEntries ?? 10_000;
    const age = this.opts.maxAgeDays ?? 0;
    const all = this.entries();
    const cutoff = age > 0 ? Date.now() - age * 86_400_000 : -Infinity;
    let keep = all.filter((e) => e.timeMs >= cutoff);
    if (max > 0 && keep.length > max) keep = keep.slice(keep.length - max);
    if (keep.length === all.length) return;
    writeAtomic(this.logFile, Buffer.from(keep.map((e) => JSON.stringify(e) + '\n').join('')), this.opts.dir, 0o640);
    const used = new Set(keep.flatMap((e) => [e.old, e.new]).filter((t): t is string => t !== null).map((t) => t.slice('sha256:'.length)));
    for (const n of fs.readdirSync(this.objects)) if (HEX.test(n) && !used.has(n)) fs.rmSync(path.join(this.objects, n), { force: true });
  }
}

/** `policy.History+NAME` / `policy.include.History+NAME`: the file's log lines (JSON, oldest first). */
export function historyService(h: PolicyHistory, kind: Kind): ExtraService {
  return {
    noArg: false,
    noPayload: true,
    handle(arg) {
      checkFileName(arg);
      return Buffer.from(h.log(kind, arg).map((e) => JSON.stringify(e) + '\n').join(''), 'utf8');
    },
  };
}

/** `policy.Show+HEX` (the argument cannot hold `:`): a kept version, as Get replies (token line, content). */
export function showService(h: PolicyHistory): ExtraService {
  return {
    noArg: false,
    noPayload: true,
    handle(arg) {
      const data = h.show(arg);
      return Buffer.concat([Buffer.from(computeToken(data) + '\n', 'latin1'), data]);
    },
  };
}
