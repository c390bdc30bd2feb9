import { decide, decisionToJson, loadRules, memorySource, parseSystemInfo, Policy, type DecisionJson, type SystemInfo } from '../../src/policy/index.js';

/** A small system, in qubesd's internal.GetSystemInfo shape. */
export const INFO_JSON = {
  domains: {
    dom0: { tags: [], type: 'AdminVM', template_for_dispvms: false, default_dispvm: 'default-dvm', icon: 'adminvm-black', label: 'black', guivm: null, relayvm: null, transport_rpc: null, internal: null, power_state: 'Running', uuid: '00000000-0000-0000-0000-000000000000' },
    work: { tags: ['trusted'], type: 'AppVM', template_for_dispvms: false, default_dispvm: 'default-dvm', icon: 'appvm-blue', label: 'blue', guivm: 'dom0', relayvm: null, transport_rpc: null, internal: null, power_state: 'Running', uuid: '11111111-1111-1111-1111-111111111111' },
    personal: { tags: [], type: 'AppVM', template_for_dispvms: false, default_dispvm: null, icon: 'appvm-yellow', label: 'yellow', guivm: 'dom0', relayvm: null, transport_rpc: null, internal: null, power_state: 'Halted', uuid: '22222222-2222-2222-2222-222222222222' },
    vault: { tags: ['secrets'], type: 'AppVM', template_for_dispvms: false, default_dispvm: 'default-dvm', icon: 'appvm-black', label: 'black', guivm: 'dom0', relayvm: null, transport_rpc: null, internal: null, power_state: 'Halted', uuid: '33333333-3333-3333-3333-333333333333' },
    'default-dvm': { tags: ['dvm'], type: 'AppVM', template_for_dispvms: true, default_dispvm: 'default-dvm', icon: 'appvm-red', label: 'red', guivm: 'dom0', relayvm: null, transport_rpc: null, internal: null, power_state: 'Halted', uuid: '44444444-4444-4444-4444-444444444444' },
    'sys-usb': { tags: [], type: 'AppVM', template_for_dispvms: false, default_dispvm: 'default-dvm', icon: 'appvm-red', label: 'red', guivm: 'dom0', relayvm: null, transport_rpc: null, internal: '1', power_state: 'Running', uuid: '55555555-5555-5555-5555-555555555555' },
    'fedora-41': { tags: [], type: 'TemplateVM', template_for_dispvms: false, default_dispvm: 'default-dvm', icon: 'templatevm-black', label: 'black', guivm: 'dom0', relayvm: null, transport_rpc: null, internal: null, power_state: 'Halted', uuid: '66666666-6666-6666-6666-666666666666' },
    remote: { tags: [], type: 'RemoteVM', template_for_dispvms: false, default_dispvm: null, icon: 'remotevm-gray', label: 'gray', guivm: null, relayvm: 'sys-relay', transport_rpc: 'qubesair.SSHProxy', internal: null, power_state: 'Running', uuid: '77777777-7777-7777-7777-777777777777' },
    'sys-relay': { tags: [], type: 'AppVM', template_for_dispvms: false, default_dispvm: null, icon: 'appvm-gray', label: 'gray', guivm: 'dom0', relayvm: null, transport_rpc: null, internal: null, power_state: 'Running', uuid: '88888888-8888-8888-8888-888888888888' },
  },
};

export const INFO: SystemInfo = parseSystemInfo(INFO_JSON);

/** Load a policy from in-memory files under /p (policy dir) and /l (legacy dir). */
export function policyOf(files: Record<string, string>, legacy: Record<string, string> = {}): Policy {
  const m = new Map<string, string>();
  for (const [k, v] of Object.entries(files)) m.set('/p/' + k, v);
  for (const [k, v] of Object.entries(legacy)) m.set('/l/' + k, v);
  if (![...m.keys()].some((k) => k.startsWith('/p/'))) m.set('/p/.keep', '');
  if (![...m.keys()].some((k) => k.startsWith('/l/'))) m.set('/l/.keep', '');
  return new Policy(loadRules(memorySource(m), { policyDirs: ['/p'], legacyDir: '/l' }));
}

/** Decide one request like qrexec-policy-eval. */
export function ask(policy: Policy, source: string, target: string, svc: string, requestedSource?: string): DecisionJson {
  return decisionToJson(
    decide(policy, { source, intendedTarget: target, serviceAndArg: svc, requestedSource }, INFO),
    INFO,
  );
}
