/** qvm-clone (src/qvm). */
import { toolMain, QVM_CLONE } from '../qvm/index.js';

toolMain(QVM_CLONE);
