/**
 * The GUI domain's prompts and notifications: `policy.Ask` requests wait in
 * a queue until the user answers in the browser (or the prompt times out,
 * which denies); `policy.Notify` messages are kept in a bounded history.
 * Everything here is validated data: the policy daemon's JSON is checked
 * before it becomes an {@link Ask} or a {@link Notice}.
 */
import { randomBytes } from 'node:crypto';

/** Qube labels, as Qubes names them. */
export const LABELS = ['red', 'orange', 'yellow', 'green', 'gray', 'blue', 'purple', 'black'] as const;
export type Label = (typeof LABELS)[number];

/** A pending question. */
export interface Ask {
  readonly id: string;
  readonly source: string;
  readonly sourceLabel: Label | null;
  readonly service: string;
  readonly argument: string;
  readonly targets: readonly { readonly name: string; readonly label: Label | null }[];
  readonly defaultTarget: string | null;
  /** ms since the epoch. */
  readonly created: number;
  readonly deadline: number;
}

export interface Notice {
  readonly id: number;
  readonly time: number;
  readonly resolution: 'allow' | 'deny' | 'fail';
  readonly service: string;
  readonly argument: string;
  readonly source: string;
  readonly target: string;
}

export class PromptError extends Error {
  override name = 'PromptError';
}

/** Names, tokens (`@dispvm:NAME`, `uuid:…`), services and arguments. */
const WORD = /^[A-Za-z0-9@_.:+-]{1,255}$/;

function field(o: Record<string, unknown>, k: string, allowEmpty = false): string {
  const v = o[k];
  if (typeof v !== 'string' || (!(allowEmpty && v === '') && !WORD.test(v))) throw new PromptError(`${k}: invalid`);
  return v;
}

function object(json: unknown): Record<string, unknown> {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new PromptError('expected a JSON object');
  return json as Record<string, unknown>;
}

/** The label of an icon name such as `appvm-red` or `dispvm-blue`. */
export function labelOfIcon(icon: unknown): Label | null {
  if (typeof icon !== 'string') return null;
  const m = /-([a-z]+)$/.exec(icon);
  const l = m?.[1];
  return l !== undefined && (LABELS as readonly string[]).includes(l) ? (l as Label) : null;
}

export interface AskInput {
  readonly source: string;
  readonly sourceLabel: Label | null;
  readonly service: string;
  readonly argument: string;
  readonly targets: Ask['targets'];
  readonly defaultTarget: string | null;
}

/** Validate policy.Ask's JSON (`{source, service, argument, targets, default_target, icons}`). @throws PromptError */
export function parseAsk(json: unknown): AskInput {
  const o = object(json);
  const icons = typeof o['icons'] === 'object' && o['icons'] !== null ? (o['icons'] as Record<string, unknown>) : {};
  const raw = o['targets'];
  if (!Array.isArray(raw) || raw.length === 0 || raw.length > 10_000) throw new PromptError('targets: expected a non-empty list');
  const names = new Set<string>();
  for (const t of raw) {
    if (typeof t !== 'string' || !WORD.test(t)) throw new PromptError('targets: invalid entry');
    names.add(t);
  }
  const def = field(o, 'default_target', true);
  const source = field(o, 'source');
  const label = (n: string): Label | null => (Object.hasOwn(icons, n) ? labelOfIcon(icons[n]) : null);
  return {
    source,
    sourceLabel: label(source),
    service: field(o, 'service'),
    argument: field(o, 'argument'),
    targets: [...names].map((name) => ({ name, label: label(name) })),
    defaultTarget: names.has(def) ? def : null,
  };
}

/** Validate policy.Notify's JSON. @throws PromptError */
export function parseNotice(json: unknown): Omit<Notice, 'id' | 'time'> {
  const o = object(json);
  const r = o['resolution'];
  if (r !== 'allow' && r !== 'deny' && r !== 'fail') throw new PromptError('resolution: invalid');
  return { resolution: r, service: field(o, 'service'), argument: field(o, 'argument'), source: field(o, 'source'), target: field(o, 'target') };
}

export interface PromptsOptions {
  /** An unanswered prompt denies after this long. */
  readonly askTimeoutMs: number;
  /** An allow is refused until the prompt has existed this long (the page also waits 1 s of visibility and focus). */
  readonly armMs: number;
  /** Notifications kept. */
  readonly historySize: number;
  readonly now?: () => number;
}

interface Pending {
  readonly ask: Ask;
  readonly resolve: (target: string | null) => void;
  readonly timer: NodeJS.Timeout;
}

/** The answer to {@link Prompts.answer}. */
export type AnswerResult = 'ok' | 'unknown' | 'too-early' | 'bad-target';

export class Prompts {
  private readonly pending = new Map<string, Pending>();
  private readonly notices: Notice[] = [];
  private nextNotice = 1;
  private readonly listeners = new Set<(what: 'asks' | 'notice', n?: Notice) => void>();
  private readonly now: () => number;

  constructor(private readonly opts: PromptsOptions) {
    this.now = opts.now ?? Date.now;
  }

  /** Queue a question; `answer` resolves with the chosen target, or null (deny, timeout, close). */
  ask(input: AskInput): { readonly id: string; readonly answer: Promise<string | null> } {
    const created = this.now();
    const ask: Ask = { ...input, id: randomBytes(9).toString('base64url'), created, deadline: created + this.opts.askTimeoutMs };
    const answer = new Promise<string | null>((resolve) => {
      const timer = setTimeout(() => this.settle(ask.id, null), this.opts.askTimeoutMs);
      this.pending.set(ask.id, { ask, resolve, timer });
    });
    this.emit('asks');
    return { id: ask.id, answer };
  }

  /** Answer a question: a target (one of those offered) or null for deny. */
  answer(id: string, target: string | null): AnswerResult {
    const p = this.pending.get(id);
    if (!p) return 'unknown';
    if (target !== null) {
      if (!p.ask.targets.some((t) => t.name === target)) return 'bad-target';
      if (this.now() - p.ask.created < this.opts.armMs) return 'too-early';
    }
    this.settle(id, target);
    return 'ok';
  }

  private settle(id: string, target: string | null): void {
    const p = this.pending.get(id);
    if (!p) return;
    clearTimeout(p.timer);
    this.pending.delete(id);
    p.resolve(target);
    this.emit('asks');
  }

  notify(n: Omit<Notice, 'id' | 'time'>): Notice {
    const notice: Notice = { ...n, id: this.nextNotice++, time: this.now() };
    this.notices.push(notice);
    if (this.notices.length > this.opts.historySize) this.notices.splice(0, this.notices.length - this.opts.historySize);
    this.emit('notice', notice);
    return notice;
  }

  /** Pending questions, oldest first. */
  asks(): Ask[] {
    return [...this.pending.values()].map((p) => p.ask);
  }

  history(): readonly Notice[] {
    return this.notices;
  }

  /** Called on every change; returns an unsubscribe function. */
  subscribe(f: (what: 'asks' | 'notice', n?: Notice) => void): () => void {
    this.listeners.add(f);
    return () => this.listeners.delete(f);
  }

  private emit(what: 'asks' | 'notice', n?: Notice): void {
    for (const f of this.listeners) f(what, n);
  }

  /** Deny everything pending (shutdown). */
  close(): void {
    for (const id of [...this.pending.keys()]) this.settle(id, null);
  }
}
