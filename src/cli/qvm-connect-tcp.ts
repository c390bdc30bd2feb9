/** qvm-connect-tcp (src/qube/connect-tcp.ts). */
import { fileURLToPath } from 'node:url';
import { connectTcpMain } from '../qube/connect-tcp.js';

process.exitCode = await connectTcpMain(process.argv.slice(2), fileURLToPath(import.meta.url));
