/**
 * Policy-based filtering of what a qube may see through the Admin API, as
 * the reference's AdminExtension (qubes/ext/admin.py) does it:
 *
 * - `admin.vm.List` with destination dom0 ("the full list") shows a qube X
 *   only if the policy *allows* `admin.vm.List+ARG` from the caller to X;
 * - `admin.Events` sends an event only if the policy allows
 *   `admin.Events+EVENT` (with `:` written `_`) from the caller to the
 *   event's subject (or its `vm` argument, else `@adminvm`).
 *
 * The policy is only evaluated, never executed: `ask` counts as hidden (no
 * prompt is shown for a list), and so does a policy that failed to load.
 * dom0's own calls are never filtered.
 */
import type { Policy, SystemInfo } from '../policy/index.js';
import type { Call, PermissionHook, PermitFilter, PermitItem } from './admin-api.js';

export interface PolicyFilterSource {
  /** The policy to evaluate now; null when none could be loaded (everything is hidden). */
  policy(): Policy | null;
  /** The system info the policy is evaluated against. */
  systemInfo(): SystemInfo;
}

/** Whether the policy allows `service+arg` from `source` to `target` (evaluated only). */
function allowed(src: PolicyFilterSource, serviceAndArg: string, source: string, target: string): boolean {
  const policy = src.policy();
  if (policy === null) return false;
  return policy.evaluate({ source, intendedTarget: target, serviceAndArg }, src.systemInfo()).result === 'allow';
}

/** The subject the reference evaluates an event against. */
function eventTarget(item: Extract<PermitItem, { kind: 'event' }>): string {
  if (item.subject !== null) return item.subject.name;
  const vm = item.kwargs.find(([k]) => k === 'vm');
  return vm !== undefined && vm[1] !== '' ? vm[1] : '@adminvm';
}

export function policyFilterHook(src: PolicyFilterSource): PermissionHook {
  return {
    permit(call: Call): PermitFilter[] {
      if (call.src.klass === 'AdminVM') return [];
      const caller = call.src.name;
      if (call.method === 'admin.vm.List') {
        const service = `admin.vm.List+${call.arg}`;
        return [(item) => item.kind === 'qube' && allowed(src, service, caller, item.qube.name)];
      }
      if (call.method === 'admin.Events') {
        return [(item) => item.kind === 'event' && allowed(src, `admin.Events+${item.event.replace(/:/g, '_')}`, caller, eventTarget(item))];
      }
      return [];
    },
  };
}
