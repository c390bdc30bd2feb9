/**
 * The sandbox layer of the bwrap runtime: a qube as a bubblewrap sandbox
 * with its own filesystems, network namespace, cgroup and vchan directory.
 */
export { SandboxError } from './errors.js';
export { type MountOp, type SandboxBind, type SandboxPlan, FIRST_BENEATH_FD, SANDBOX_CAPS, bwrapArgs, launchCommand, planCheck } from './plan.js';
export { ensureDirBeneath, isDirBeneath, openDirBeneath } from './beneath.js';
export {
  type QubeClass,
  type QubeVolumes,
  type TemplateSource,
  type VolumeInfo,
  QUBE_USER_UID,
  commitPendingLayer,
  ensurePrivate,
  ensureStandalone,
  ensureTemplate,
  isRunning,
  markRunning,
  privateDir,
  qubeDir,
  readVolumeInfo,
  templateLayers,
  volumeMounts,
} from './volumes.js';
export { type Limits, type CgroupMode, SandboxCgroup, cleanStaleCgroups, detectCgroups } from './cgroup.js';
export { type QubeAddresses, type QubeNetwork, type NetworkOptions, DEFAULT_POOL_OCTET, cleanStaleNetns, connectUplink, createNetns, destroyNetwork, linkAddresses, makeNetvm, networkAvailable } from './netvm.js';
export { INSIDE_AGENT_SOCKET, INSIDE_PROJECT, INSIDE_VCHAN_DIR, Sandbox, type SandboxSpec, type SandboxTools, sandboxPlan, sandboxSupport, waitAgentReady } from './sandbox.js';
export { VchanLinks } from './vchan-links.js';
