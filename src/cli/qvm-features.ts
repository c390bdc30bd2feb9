/** qvm-features (src/qvm). */
import { toolMain, QVM_FEATURES } from '../qvm/index.js';

toolMain(QVM_FEATURES);
