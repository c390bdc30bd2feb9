/** qvm-open-in-vm (src/qube/open.ts). */
import { openInVmMain } from '../qube/open.js';

process.exitCode = await openInVmMain('qvm-open-in-vm', process.argv.slice(2));
