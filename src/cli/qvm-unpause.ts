/** qvm-unpause (src/qvm). */
import { toolMain, QVM_UNPAUSE } from '../qvm/index.js';

toolMain(QVM_UNPAUSE);
