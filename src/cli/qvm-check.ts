/** qvm-check (src/qvm). */
// the tool's own modules only, not ../qvm/index.js: every module loaded is start-up time
import { toolMain } from '../qvm/common.js';
import { QVM_CHECK } from '../qvm/simple.js';

toolMain(QVM_CHECK);
