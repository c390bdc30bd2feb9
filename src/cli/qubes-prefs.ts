/** qubes-prefs (src/qvm). */
// the tool's own modules only, not ../qvm/index.js: every module loaded is start-up time
import { toolMain } from '../qvm/common.js';
import { QUBES_PREFS } from '../qvm/prefs.js';

toolMain(QUBES_PREFS);
