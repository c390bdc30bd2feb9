/** qvm-create (src/qvm). */
import { toolMain, QVM_CREATE } from '../qvm/index.js';

toolMain(QVM_CREATE);
