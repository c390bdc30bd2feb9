export * from './types.js';
export { ProcessRuntime, daemonProcessHostSide, type HostSide, type HostSideHandle, type ProcessRuntimeOptions } from './process.js';
export { BwrapRuntime, bwrapUnavailable, type BwrapRuntimeOptions, type QubeDescription } from './bwrap.js';
