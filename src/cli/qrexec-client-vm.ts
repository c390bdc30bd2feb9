/**
 * qrexec-client-vm in Node.js: used by the native launcher (bin/qrexec-client-vm)
 * when the agent is the reference one; see src/agent/client-vm.ts.
 */
import { runClientVmCli } from '../agent/client-vm.js';

const status = await runClientVmCli(process.argv.slice(2));
process.exit(status);
