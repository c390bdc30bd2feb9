/** qfile-unpacker: the receiving side of qubes.Filecopy (src/qube/filecopy.ts). */
import { unpackerMain } from '../qube/filecopy.js';

process.exitCode = await unpackerMain(process.argv.slice(2));
