import { qrexecClientMain } from '../daemon/main-client.js';
import { exitOnUncaught } from '../common/errors.js';

exitOnUncaught('qrexec-client');
process.on('SIGPIPE', () => undefined);
const code = await qrexecClientMain(process.argv.slice(2));
process.exitCode = code;
// stdin may keep the loop alive after the remote side is done
setImmediate(() => process.exit(code));
