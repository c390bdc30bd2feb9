/** qubesd: the qube registry, its store, the Admin/internal/misc APIs and the power lifecycle. */
export * from './errors.js';
export * from './names.js';
export { NO_VALUE, propDef, propList, pyStr, type PropDef, type PropType, type Value } from './properties.js';
export * from './registry.js';
export * from './store.js';
export * from './protocol.js';
export { ADMIN_METHODS, Call, dispatch, method, methods, serializeProperty, type ApiContext, type MethodSpec, type PermissionHook, type PermitFilter, type PermitItem, type PowerControl } from './admin-api.js';
export { SystemInfoCache, internalMethods } from './internal-api.js';
export { miscMethods } from './misc-api.js';
export { Lifecycle } from './lifecycle.js';
export { serveApi, removeStaleSocket, defaultServerKind, type ApiServer, type ServerKind, type ServerLog } from './server.js';
export * from './daemon.js';
export { adminPolicyFiles } from './admin-policy.js';
export { policyFilterHook, type PolicyFilterSource } from './policy-filter.js';
