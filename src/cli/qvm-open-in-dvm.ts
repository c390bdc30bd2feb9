/** qvm-open-in-dvm (src/qube/open.ts). */
import { openInVmMain } from '../qube/open.js';

process.exitCode = await openInVmMain('qvm-open-in-dvm', process.argv.slice(2));
