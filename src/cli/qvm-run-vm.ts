/** qvm-run-vm (src/qube/run-vm.ts). */
import { runVmMain } from '../qube/run-vm.js';

process.exitCode = await runVmMain(process.argv.slice(2));
