import { fileURLToPath } from 'node:url';
import { qrexecDaemonMain } from '../daemon/main-daemon.js';

await qrexecDaemonMain(process.argv.slice(2), fileURLToPath(import.meta.url));
