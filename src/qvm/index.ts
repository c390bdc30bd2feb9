/** Our qvm-* tools: the same options, output and exit codes as the reference's (qubes-core-admin-client). */
export { QubesApp, Qube, parsePropReply, type PropValue } from './app.js';
export { runTool, toolMain, formatTable, type ToolIO, type ToolSpec } from './common.js';
export { QVM_LS, FORMATS } from './ls.js';
export { QVM_PREFS, QUBES_PREFS } from './prefs.js';
export { QVM_TAGS, QVM_FEATURES, QVM_CHECK, QVM_START, QVM_SHUTDOWN, QVM_KILL, QVM_PAUSE, QVM_UNPAUSE, QVM_CREATE, QVM_REMOVE, QVM_CLONE } from './simple.js';
export { QVM_RUN, shellQuote, encodeForVmexec } from './run.js';
export { dom0Qrexec, type Dom0Qrexec } from './qrexec-env.js';
export { dom0CopyMain } from './copy.js';
