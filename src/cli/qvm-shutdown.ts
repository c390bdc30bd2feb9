/** qvm-shutdown (src/qvm). */
import { toolMain, QVM_SHUTDOWN } from '../qvm/index.js';

toolMain(QVM_SHUTDOWN);
