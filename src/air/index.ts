/** Qubes Air: RemoteVMs on other hosts, reached through relay qubes over OpenSSH (docs/AIR.md). */
export * from './config.js';
export * from './errors.js';
export * from './setup.js';
export * from './sign.js';
export * from './commands.js';
export * from './dom0.js';
