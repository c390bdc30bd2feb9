/** qubes-service: the in-qube services written in TypeScript (src/qube/open.ts). */
import { fileEditorMain, openUrlMain } from '../qube/open.js';

const HELP = `usage: qubes-service file-editor|open-url

The programs behind two qrexec services every qube has (qubes-rpc/qube/):
  file-editor  qubes.OpenInVM: receives a file, opens it with qubes-open, sends it back if edited
  open-url     qubes.OpenURL: reads a URL (http, https, ftp) and opens it with qubes-open
`;
const [cmd, ...rest] = process.argv.slice(2);
try {
  if (cmd === '-h' || cmd === '--help') process.stdout.write(HELP);
  else if (cmd === 'file-editor' && rest.length === 0) process.exitCode = await fileEditorMain();
  else if (cmd === 'open-url' && rest.length === 0) process.exitCode = await openUrlMain();
  else {
    process.stderr.write(`qubes-service: ${cmd === undefined ? 'a program name is required' : `unknown program '${[cmd, ...rest].join(' ')}'`}\n${HELP}`);
    process.exitCode = 2;
  }
} catch (e) {
  process.stderr.write(`qubes-service ${cmd ?? ''}: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
}
