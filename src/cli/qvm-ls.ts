/** qvm-ls (src/qvm). */
import { toolMain, QVM_LS } from '../qvm/index.js';

toolMain(QVM_LS);
