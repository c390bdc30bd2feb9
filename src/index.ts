/**
 * The public API of qrexec-ts, for other programs (`import ... from 'qrexec-ts'`):
 *
 * - the policy engine: load a policy (from disk with loadPolicyFromDisk, or
 *   from memory with loadRules + memorySource), decide requests (decide,
 *   decisionToJson), explain them, lint, convert 4.0 files, draw graphs;
 * - callService: call a qrexec service from a Node.js program in a qube,
 *   through its running qrexec-agent (what qrexec-client-vm does);
 * - the qrexec wire protocol codec: message types and encoders, a
 *   push-based frame decoder with length checks, command-line parsing.
 *
 * Also as subpaths: 'qrexec-ts/policy', 'qrexec-ts/protocol',
 * 'qrexec-ts/client'. Anything else under dist/ is internal.
 */
export * from './policy/index.js';
export { loadPolicyFromDisk, diskSource, DEFAULT_POLICY_DIRS, DEFAULT_LEGACY_DIR, type DiskPolicyOptions } from './policy-files/disk.js';
export { callService, type CallOptions, type CallResult } from './agent/client.js';
export * from './protocol/index.js';
