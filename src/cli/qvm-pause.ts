/** qvm-pause (src/qvm). */
import { toolMain, QVM_PAUSE } from '../qvm/index.js';

toolMain(QVM_PAUSE);
