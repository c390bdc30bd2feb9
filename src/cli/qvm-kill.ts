/** qvm-kill (src/qvm). */
import { toolMain, QVM_KILL } from '../qvm/index.js';

toolMain(QVM_KILL);
