/** qvm-run (src/qvm/run.ts). */
// the tool's own modules only, not ../qvm/index.js: every module loaded is start-up time
import { toolMain } from '../qvm/common.js';
import { QVM_RUN } from '../qvm/run.js';

toolMain(QVM_RUN);
