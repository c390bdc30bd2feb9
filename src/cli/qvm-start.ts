/** qvm-start (src/qvm). */
import { toolMain, QVM_START } from '../qvm/index.js';

toolMain(QVM_START);
