/** qvm-copy: in a qube, src/qube/filecopy.ts; in dom0, src/qvm/copy.ts (only the dom0 code is loaded there). */
import { inQube } from '../qube/call.js';

const argv = process.argv.slice(2);
const code = inQube()
  ? await (await import('../qube/filecopy.js')).qubeCopyMain('qvm-copy', argv)
  : await (await import('../qvm/copy.js')).dom0CopyMain('qvm-copy', argv);
process.exitCode = code;
