/** qvm-remove (src/qvm). */
import { toolMain, QVM_REMOVE } from '../qvm/index.js';

toolMain(QVM_REMOVE);
