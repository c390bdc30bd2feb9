/** qvm-features (src/qvm). */
// the tool's own modules only, not ../qvm/index.js: every module loaded is start-up time
import { toolMain } from '../qvm/common.js';
import { QVM_FEATURES } from '../qvm/simple.js';

toolMain(QVM_FEATURES);
