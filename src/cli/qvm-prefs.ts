/** qvm-prefs (src/qvm). */
import { toolMain, QVM_PREFS } from '../qvm/index.js';

toolMain(QVM_PREFS);
