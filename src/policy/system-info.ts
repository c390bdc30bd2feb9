/**
 * System information: the qubes the policy is evaluated against, in the shape
 * of qubesd's `internal.GetSystemInfo` reply (qubes-core-admin
 * qubes/api/internal.py). Normalised like the reference's get_system_info():
 * every domain also answers to `uuid:<its uuid>`, and knows its own name.
 */

/** One qube, as far as policy evaluation is concerned. */
export interface DomainInfo {
  readonly name: string;
  readonly tags: readonly string[];
  readonly type: string;
  readonly template_for_dispvms: boolean;
  readonly default_dispvm: string | null;
  readonly icon: string | null;
  readonly label: string | null;
  readonly guivm: string | null;
  readonly relayvm: string | null;
  readonly transport_rpc: string | null;
  readonly internal: boolean;
  readonly power_state: string;
  readonly uuid: string | null;
}

/** Domains by name and by `uuid:<uuid>`. A Map, so no name can alias Object.prototype. */
export interface SystemInfo {
  readonly domains: ReadonlyMap<string, DomainInfo>;
  /** The real names only (no `uuid:` aliases), in the order qubesd gave them. */
  readonly names: readonly string[];
}

/** Raised for a system info document that is not in qubesd's shape. */
export class SystemInfoError extends Error {
  override name = 'SystemInfoError';
}

/** Python truthiness, which is how the reference reads flags such as `internal` ("1", "", null). */
function pyTruthy(v: unknown): boolean {
  if (v === null || v === undefined || v === false || v === 0 || v === '') return false;
  if (Array.isArray(v)) return v.length > 0;
  if (typeof v === 'object') return Object.keys(v).length > 0;
  return true;
}

function optString(v: unknown, what: string): string | null {
  if (v === null || v === undefined) return null;
  if (typeof v !== 'string') throw new SystemInfoError(`${what}: expected a string or null`);
  return v;
}

/**
 * Validate and normalise a parsed `internal.GetSystemInfo` JSON document
 * (`{"domains": {NAME: {...}}}`).
 */
export function parseSystemInfo(json: unknown): SystemInfo {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new SystemInfoError('system info: expected a JSON object');
  }
  const doms = (json as Record<string, unknown>)['domains'];
  if (typeof doms !== 'object' || doms === null || Array.isArray(doms)) {
    throw new SystemInfoError('system info: expected a "domains" object');
  }
  const domains = new Map<string, DomainInfo>();
  const names: string[] = [];
  for (const [name, raw] of Object.entries(doms as Record<string, unknown>)) {
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
      throw new SystemInfoError(`system info: domain ${name}: expected an object`);
    }
    const r = raw as Record<string, unknown>;
    const what = `system info: domain ${name}`;
    const tagsRaw = r['tags'] ?? [];
    if (!Array.isArray(tagsRaw) || !tagsRaw.every((t) => typeof t === 'string')) {
      throw new SystemInfoError(`${what}: tags must be a list of strings`);
    }
    const info: DomainInfo = {
      name,
      tags: tagsRaw as string[],
      type: optString(r['type'], `${what}: type`) ?? '',
      template_for_dispvms: pyTruthy(r['template_for_dispvms']),
      default_dispvm: optString(r['default_dispvm'], `${what}: default_dispvm`),
      icon: optString(r['icon'], `${what}: icon`),
      label: optString(r['label'], `${what}: label`),
      guivm: optString(r['guivm'], `${what}: guivm`),
      relayvm: optString(r['relayvm'], `${what}: relayvm`),
      transport_rpc: optString(r['transport_rpc'], `${what}: transport_rpc`),
      internal: pyTruthy(r['internal']),
      power_state: optString(r['power_state'], `${what}: power_state`) ?? '',
      uuid: optString(r['uuid'], `${what}: uuid`),
    };
    domains.set(name, info);
    names.push(name);
  }
  for (const name of names) {
    const info = domains.get(name);
    if (info?.uuid) domains.set('uuid:' + info.uuid, info);
  }
  return { domains, names };
}

/** The uuid of dom0, which every spelling of dom0 may use. */
export const DOM0_UUID = '00000000-0000-0000-0000-000000000000';

/** `@adminvm`, `dom0` and `uuid:<0>` all name the admin qube. */
export function isDom0(s: string): boolean {
  return s === '@adminvm' || s === 'dom0' || s === 'uuid:' + DOM0_UUID;
}
