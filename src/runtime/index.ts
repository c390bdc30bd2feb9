export * from './types.js';
export { ProcessRuntime, type ProcessRuntimeOptions } from './process.js';
export { daemonProcessHostSide, type DaemonHostSideOptions } from './host-side.js';
export { BwrapRuntime, bwrapUnavailable, resourcePrefix, type BwrapRuntimeOptions, type QubeDescription } from './bwrap.js';
