/**
 * What our qvm-* tools know of the system, fetched as qubesadmin does
 * (qubesadmin/app.py, qubesadmin/base.py): the qube list from
 * admin.vm.List (once per process), properties by admin.vm.property.Get,
 * or all at once by GetAll when caching (qvm-ls, qvm-prefs without a
 * property), falling back to one Get per property when GetAll is refused
 * (a management qube is denied GetAll by default policy).
 */
import { AdminError, AdminTransportError, type AdminTransport } from '../qubesd-client/client.js';

export type PropType = 'str' | 'int' | 'bool' | 'vm' | 'label';

/** One property as Get/GetAll report it. */
export interface PropValue {
  readonly isDefault: boolean;
  readonly type: PropType;
  /** The text after the type; '' for None. */
  readonly value: string;
}

/** Parse `default=X type=T VALUE` (the value may be empty). */
export function parsePropReply(s: string): PropValue {
  const m = /^default=(True|False) type=(str|int|bool|vm|label) ?([\s\S]*)$/.exec(s);
  if (!m) throw new AdminError('QubesDaemonCommunicationError', `Invalid property reply: ${JSON.stringify(s.slice(0, 80))}`);
  return { isDefault: m[1] === 'True', type: m[2] as PropType, value: m[3] as string };
}

function unescapeGetAll(s: string): string {
  return s.includes('\\') ? s.replace(/\\(\\|n)/g, (_m, c: string) => (c === 'n' ? '\n' : '\\')) : s;
}

export class Qube {
  /**
   * GetAll's answer, when fetched: each property's reply text, parsed when
   * first asked for (a listing reads a few of the ~60); missing names are
   * absent properties.
   */
  private all: Map<string, PropValue | string> | null = null;
  private allFailed = false;
  private readonly one = new Map<string, PropValue | null>();

  constructor(
    readonly app: QubesApp,
    readonly name: string,
    readonly klass: string,
    private state: string,
    readonly uuid: string,
  ) {}

  /** The power state: from the list when caching, else admin.vm.CurrentState. */
  async powerState(): Promise<string> {
    if (this.app.cacheEnabled) return this.state;
    const r = await this.app.call(this.name, 'admin.vm.CurrentState');
    const m = /(?:^| )power_state=(\S+)/.exec(r);
    this.state = m ? (m[1] as string) : 'NA';
    return this.state;
  }

  get cachedState(): string {
    return this.state;
  }

  /** A property, or null when the qube has no such property (or it has no value). */
  async prop(name: string): Promise<PropValue | null> {
    if (this.app.cacheEnabled && !this.allFailed) {
      if (this.all === null) {
        try {
          const text = await this.app.call(this.name, 'admin.vm.property.GetAll');
          const m = new Map<string, PropValue | string>();
          for (let i = 0; i < text.length; ) {
            let nl = text.indexOf('\n', i);
            if (nl < 0) nl = text.length;
            const sp = text.indexOf(' ', i);
            if (sp > i && sp < nl) m.set(text.slice(i, sp), text.slice(sp + 1, nl));
            i = nl + 1;
          }
          this.all = m;
        } catch (e) {
          // refused by the policy (a qube is denied GetAll by default) or by qubesd: one Get per property
          if (!(e instanceof AdminError) && !(e instanceof AdminTransportError)) throw e;
          this.allFailed = true;
        }
      }
      if (this.all !== null) {
        const v = this.all.get(name);
        if (typeof v !== 'string') return v ?? null;
        const parsed = parsePropReply(unescapeGetAll(v));
        this.all.set(name, parsed);
        return parsed;
      }
    }
    if (this.one.has(name)) return this.one.get(name) as PropValue | null;
    try {
      const v = parsePropReply(await this.app.call(this.name, 'admin.vm.property.Get', name));
      this.one.set(name, v);
      return v;
    } catch (e) {
      // a property the policy does not let us read is shown as absent when listing
      // (the reference's QubesPropertyAccessError is an AttributeError)
      if ((e instanceof AdminError && e.excType === 'QubesNoSuchPropertyError') || (e instanceof AdminTransportError && this.app.cacheEnabled)) {
        this.one.set(name, null);
        return null;
      }
      throw e;
    }
  }

  /** The property's value as text, null if absent or None (or an int/bool with no value). */
  async value(name: string): Promise<string | null> {
    const p = await this.prop(name);
    if (!p || p.value === '') return p && p.type === 'str' ? '' : null;
    return p.value;
  }

  async tags(): Promise<string[]> {
    return (await this.app.call(this.name, 'admin.vm.tag.List')).split('\n').filter((x) => x);
  }

  async features(): Promise<string[]> {
    return (await this.app.call(this.name, 'admin.vm.feature.List')).split('\n').filter((x) => x);
  }

  /** A feature's value, or undefined when not set. */
  async feature(name: string): Promise<string | undefined> {
    try {
      return await this.app.call(this.name, 'admin.vm.feature.Get', name);
    } catch (e) {
      if (e instanceof AdminError && e.excType === 'QubesFeatureNotFoundError') return undefined;
      throw e;
    }
  }

  async volumes(): Promise<Map<string, Map<string, string>>> {
    const out = new Map<string, Map<string, string>>();
    for (const v of (await this.app.call(this.name, 'admin.vm.volume.List')).split('\n').filter((x) => x)) {
      const info = new Map<string, string>();
      for (const l of (await this.app.call(this.name, 'admin.vm.volume.Info', v)).split('\n')) {
        const eq = l.indexOf('=');
        if (eq > 0) info.set(l.slice(0, eq), l.slice(eq + 1));
      }
      out.set(v, info);
    }
    return out;
  }
}

export class QubesApp {
  private domains: Map<string, Qube> | null = null;
  /** Keep what was fetched (qvm-ls, qvm-prefs listing). */
  cacheEnabled = false;

  constructor(readonly transport: AdminTransport) {}

  call(dest: string, method: string, arg = '', payload: Buffer | string = ''): Promise<string> {
    return this.transport.call(dest, method, arg, payload);
  }

  /** Every qube, sorted by name. */
  async list(): Promise<Qube[]> {
    if (this.domains === null) {
      const text = await this.call('dom0', 'admin.vm.List');
      const m = new Map<string, Qube>();
      for (const line of text.split('\n')) {
        if (!line) continue;
        const [name, ...kv] = line.split(' ');
        const f = new Map(kv.map((x) => [x.slice(0, x.indexOf('=')), x.slice(x.indexOf('=') + 1)] as const));
        m.set(name as string, new Qube(this, name as string, f.get('class') ?? '', f.get('state') ?? 'NA', f.get('uuid') ?? ''));
      }
      this.domains = m;
    }
    return [...this.domains.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** A qube by name, or undefined. */
  async get(name: string): Promise<Qube | undefined> {
    await this.list();
    return this.domains?.get(name);
  }

  /** Drop the cached list (after a create). */
  invalidate(): void {
    this.domains = null;
  }
}
