/** The dom0 side in one process: policy daemon and the qrexec daemons of all qubes. */
export { startHost, inProcessPolicy, type HostConfig, type RunningHost } from './host.js';
