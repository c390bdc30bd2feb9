/** qvm-check (src/qvm). */
import { toolMain, QVM_CHECK } from '../qvm/index.js';

toolMain(QVM_CHECK);
