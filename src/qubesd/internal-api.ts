/**
 * qubesd.internal.sock (qubes-core-admin qubes/api/internal.py):
 * `internal.GetSystemInfo`, the JSON the policy daemon evaluates against.
 * The document is cached and dropped on the events that can change it (the
 * reference's SystemInfoCache.vm_events, plus qube add/remove), so 1,000
 * qubes cost one JSON.stringify per change, not per call.
 */
import { parseSystemInfo, type SystemInfo } from '../policy/index.js';
import { defineMethod, type MethodSpec, type MethodTable } from './admin-api.js';
import { NO_VALUE } from './properties.js';
import type { Qube, Registry } from './registry.js';

const INVALIDATING = [
  'domain-spawn',
  'domain-start',
  'domain-shutdown',
  'domain-add',
  'domain-delete',
  'domain-paused',
  'domain-unpaused',
  'domain-tag-add:',
  'domain-tag-delete:',
  'domain-feature-set:internal',
  'domain-feature-delete:internal',
  'property-set:',
  'property-reset:',
];

const str = (q: Qube, prop: string): string | null => {
  const v = q.has(prop) ? q.get(prop) : NO_VALUE;
  return typeof v === 'string' && v !== '' ? v : null;
};

/** The system info document, cached per registry until an event changes it. */
export class SystemInfoCache {
  private cache: string | null = null;
  private parsed: SystemInfo | null = null;
  private readonly off: () => void;

  constructor(private readonly registry: Registry) {
    this.off = registry.on((_s, event) => {
      if ((this.cache !== null || this.parsed !== null) && INVALIDATING.some((p) => (p.endsWith(':') ? event.startsWith(p) : event === p))) {
        this.cache = null;
        this.parsed = null;
      }
    });
  }

  /** The same document as the policy engine reads it (for evaluating policy inside qubesd). */
  info(): SystemInfo {
    return (this.parsed ??= parseSystemInfo(JSON.parse(this.json()) as unknown));
  }

  /** The JSON text of internal.GetSystemInfo. */
  json(): string {
    if (this.cache === null) this.cache = JSON.stringify(this.build());
    return this.cache;
  }

  build(): { domains: Record<string, unknown> } {
    const domains: Record<string, unknown> = {};
    for (const q of this.registry.list()) {
      const label = q.get('label');
      const lab = typeof label === 'string' ? [...this.registry.labels.values()].find((l) => l.name === label) : undefined;
      const icon = q.get('icon');
      domains[q.name] = {
        internal: q.features.get('internal') ?? null,
        tags: [...q.tags],
        type: q.klass,
        template_for_dispvms: q.has('template_for_dispvms') ? q.get('template_for_dispvms') === true : false,
        default_dispvm: str(q, 'default_dispvm'),
        icon: typeof icon === 'string' ? icon : null,
        label: lab ? lab.color : null,
        guivm: str(q, 'guivm'),
        relayvm: str(q, 'relayvm'),
        transport_rpc: str(q, 'transport_rpc'),
        power_state: q.power,
        uuid: q.uuid,
      };
    }
    return { domains };
  }

  close(): void {
    this.off();
  }
}

/** The internal API's methods over a cache. */
export function internalMethods(cache: SystemInfoCache): MethodTable {
  const t = new Map<string, MethodSpec>();
  defineMethod(t, 'internal.GetSystemInfo', { dest: true, arg: false, payload: false, scope: 'global' }, () => cache.json());
  return t;
}
