/** qubes-prefs (src/qvm). */
import { toolMain, QUBES_PREFS } from '../qvm/index.js';

toolMain(QUBES_PREFS);
