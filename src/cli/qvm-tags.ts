/** qvm-tags (src/qvm). */
import { toolMain, QVM_TAGS } from '../qvm/index.js';

toolMain(QVM_TAGS);
