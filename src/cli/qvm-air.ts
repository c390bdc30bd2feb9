/** qvm-air: Qubes Air set-up in dom0 (src/air/commands.ts, docs/AIR.md). */
import * as fs from 'node:fs';
import { runMain } from '../common/args.js';
import { USAGE, qvmAirMain } from '../air/commands.js';

runMain('qvm-air', USAGE, () => qvmAirMain(process.argv.slice(2), { out: (s) => void process.stdout.write(s), readStdin: () => fs.readFileSync(0, 'utf8') }));
