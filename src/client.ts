/** 'qrexec-ts/client': calling a qrexec service from a Node.js program in a qube (see src/index.ts). */
export { callService, type CallOptions, type CallResult } from './agent/client.js';
