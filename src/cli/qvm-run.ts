/** qvm-run (src/qvm/run.ts). */
import { toolMain, QVM_RUN } from '../qvm/index.js';

toolMain(QVM_RUN);
