/**
 * qvm-copy, qvm-move, qvm-copy-to-vm and qvm-move-to-vm inside a qube (the
 * reference's qubes-rpc/qvm-copy script of qubes-core-agent-linux), and
 * qfile-unpacker, the program behind the qubes.Filecopy service.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { callQube } from './call.js';
import { checkTree, FilecopyError, pack } from './pack.js';
import { isValidQubeName } from './qfile.js';
import { CopyFlags, DEFAULT_COPY_FLAGS, cleanStaleStaging, unpack } from './unpack.js';

export type CopyProg = 'qvm-copy' | 'qvm-move' | 'qvm-copy-to-vm' | 'qvm-move-to-vm';

export function copyUsage(prog: CopyProg): string {
  const toVm = prog.endsWith('-to-vm');
  const move = prog.startsWith('qvm-move');
  return (
    `usage: ${prog} [--without-progress] [--ignore-symlinks] ${toVm ? 'destination_qube_name ' : ''}FILE [FILE ...]\n` +
    'Options:\n' +
    '    --no-ignore-symlinks   Do not ignore symbolic links (default).\n' +
    '    --ignore-symlinks      Ignore symbolic links.\n' +
    '    --with-progress        Show a progress indicator (default).\n' +
    '    --without-progress     Do not show a progress indicator.\n' +
    '    -h, --help             Show this message and exit.\n' +
    '    --                     Stop searching for options.\n\n' +
    '    If there is a conflict, later options override earlier options.\n\n' +
    `${move ? 'Move' : 'Copy'} FILE to ~/QubesIncoming/[THIS QUBE'S NAME]/ in the destination qube.\n\n` +
    'You will be prompted to select the destination qube. If FILE is a directory, it will be copied recursively.\n' +
    (toVm ? 'In order to avoid typing target qube name twice, use qvm-copy/qvm-move instead of qvm-copy-to-vm/qvm-move-to-vm.\n' : '')
  );
}

export interface CopyArgs {
  readonly target: string;
  readonly files: string[];
  readonly ignoreSymlinks: boolean;
  readonly progress: boolean;
}

/** The command line of the qvm-copy family; a number is the exit status after usage was printed. */
export function parseCopyArgs(prog: CopyProg, argv: readonly string[], toVm = prog.endsWith('-to-vm')): CopyArgs | number {
  let ignoreSymlinks = false;
  let progress = true;
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '--without-progress') progress = false;
    else if (a === '--with-progress') progress = true;
    else if (a === '--ignore-symlinks') ignoreSymlinks = true;
    else if (a === '--no-ignore-symlinks') ignoreSymlinks = false;
    else if (a === '-h' || a === '--help') {
      process.stdout.write(copyUsage(prog));
      return 0;
    } else if (a === '--') {
      i++;
      break;
    } else if (a.startsWith('-')) {
      process.stderr.write(`${prog}: unrecognized option '${a}'\n${copyUsage(prog)}`);
      return 2;
    } else break;
  }
  const rest = argv.slice(i);
  if (rest.length < (toVm ? 2 : 1)) {
    process.stderr.write(copyUsage(prog));
    return 2;
  }
  const target = toVm ? (rest.shift() as string) : '@default';
  // "${@%/}": one trailing slash dropped
  return { target, files: rest.map((f) => (f.length > 1 && f.endsWith('/') ? f.slice(0, -1) : f)), ignoreSymlinks, progress };
}

/** A console progress line on stderr, when it is a terminal (PROGRESS_TYPE=console). */
function progressLine(total: number): ((sent: number) => void) | undefined {
  if (!process.stderr.isTTY) return undefined;
  let last = 0;
  return (sent) => {
    const now = Date.now();
    if (now - last < 200 && sent < total) return;
    last = now;
    process.stderr.write(`\rsent ${Math.floor(sent / 1024)}/${Math.floor(total / 1024)} KB`);
    if (sent >= total) process.stderr.write('\n');
  };
}

/**
 * Sends the files to `target` with qubes.Filecopy (or
 * qubes.Filecopy+allow-all-names when a name needs it), through `call`,
 * which runs the service with our stream as its stdin and its stdout into
 * ours. Resolves with the exit status; prints errors as `PROG: MESSAGE`.
 */
export async function sendFiles(
  prog: string,
  a: CopyArgs,
  call: (service: string, stdin: PassThrough, stdout: PassThrough) => Promise<number>,
): Promise<number> {
  let tree;
  try {
    tree = checkTree(a.files, { ignoreSymlinks: a.ignoreSymlinks });
  } catch (e) {
    if (!(e instanceof FilecopyError)) throw e;
    process.stderr.write(`${prog}: ${e.message}\n`);
    return 1;
  }
  const service = tree.needAllNames ? 'qubes.Filecopy+allow-all-names' : 'qubes.Filecopy';
  const toRemote = new PassThrough();
  const fromRemote = new PassThrough();
  const progress = a.progress ? progressLine(tree.totalBytes) : undefined;
  let callDone = false;
  const called = call(service, toRemote, fromRemote).then((code) => {
    callDone = true;
    fromRemote.end();
    return code;
  });
  let failure: string | null = null;
  try {
    await pack(a.files, toRemote, fromRemote, { ignoreSymlinks: a.ignoreSymlinks, ...(progress ? { progress } : {}) });
  } catch (e) {
    if (!(e instanceof FilecopyError)) throw e;
    failure = e.message;
    toRemote.destroy();
  }
  const code = await called;
  if (code === 126) return 126;
  if (failure !== null) {
    if (!callDone || code === 0 || !/ended without a status/.test(failure)) process.stderr.write(`${prog}: ${failure}\n`);
    return code !== 0 ? code : 1;
  }
  return code;
}

/** qvm-copy / qvm-move / qvm-copy-to-vm / qvm-move-to-vm in a qube. */
export async function qubeCopyMain(prog: CopyProg, argv: readonly string[]): Promise<number> {
  const a = parseCopyArgs(prog, argv);
  if (typeof a === 'number') return a;
  if (prog.endsWith('-to-vm')) process.stderr.write('In order to avoid typing target qube name twice, use qvm-copy/qvm-move instead of qvm-copy-to-vm/qvm-move-to-vm.\n');
  const code = await sendFiles(prog, a, (service, stdin, stdout) => callQube({ target: a.target, service, stdin, stdout, filterStderr: true }));
  if (code === 0 && prog.startsWith('qvm-move')) for (const f of a.files) fs.rmSync(f, { recursive: true, force: true });
  return code;
}

const UNPACKER_HELP = `usage: qfile-unpacker [--allow-all-names] [--allow-unsafe-symlinks] [--verbose]
                      [--max-bytes N] [--max-files N] [DIR]

Receives a qubes.Filecopy transfer on stdin (the qfile format) into DIR, by
default ~/QubesIncoming/$QREXEC_REMOTE_DOMAIN, and answers on stdout.

options:
  -h, --help               show this help message and exit
  --allow-all-names        accept names with characters unsafe to display
  --no-allow-all-names     refuse them (default)
  --allow-unsafe-symlinks  accept symlinks pointing anywhere
  --no-allow-unsafe-symlinks
                           refuse symlinks leaving their top-level directory (default)
  -v, --verbose            print each received file name on stderr
  --max-bytes N            refuse transfers of more than N bytes (default:
                           $QUBES_FILECOPY_MAX_BYTES, else 90% of the free space)
  --max-files N            refuse transfers of more than N files (default:
                           $QUBES_FILECOPY_MAX_FILES, else no limit)
`;

function parseCount(s: string | undefined, what: string): bigint {
  if (s === undefined || !/^\d+$/.test(s)) throw new Error(`${what}: not a number: ${s ?? ''}`);
  return BigInt(s);
}

/** qfile-unpacker: the qubes.Filecopy service. Resolves with the exit status. */
export async function unpackerMain(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  let flags: number = DEFAULT_COPY_FLAGS;
  let verbose = false;
  let maxBytes: bigint | undefined = env['QUBES_FILECOPY_MAX_BYTES'] ? parseCount(env['QUBES_FILECOPY_MAX_BYTES'], 'QUBES_FILECOPY_MAX_BYTES') : undefined;
  let maxFiles = env['QUBES_FILECOPY_MAX_FILES'] ? Number(parseCount(env['QUBES_FILECOPY_MAX_FILES'], 'QUBES_FILECOPY_MAX_FILES')) : 0;
  const pos: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '-h' || a === '--help') {
      process.stdout.write(UNPACKER_HELP);
      return 0;
    } else if (a === '--allow-all-names') flags |= CopyFlags.ALLOW_UNSAFE_CHARACTERS;
    else if (a === '--no-allow-all-names') flags &= ~CopyFlags.ALLOW_UNSAFE_CHARACTERS;
    else if (a === '--allow-unsafe-symlinks') flags |= CopyFlags.ALLOW_UNSAFE_SYMLINKS;
    else if (a === '--no-allow-unsafe-symlinks') flags &= ~CopyFlags.ALLOW_UNSAFE_SYMLINKS;
    else if (a === '-v' || a === '--verbose') verbose = true;
    else if (a === '--max-bytes') maxBytes = parseCount(argv[++i], '--max-bytes');
    else if (a === '--max-files') maxFiles = Number(parseCount(argv[++i], '--max-files'));
    else if (a.startsWith('-')) {
      process.stderr.write(`qfile-unpacker: unknown option ${a}\n${UNPACKER_HELP}`);
      return 2;
    } else pos.push(a);
  }
  if (pos.length > 1) {
    process.stderr.write(`qfile-unpacker: too many arguments\n${UNPACKER_HELP}`);
    return 2;
  }
  let dir = pos[0];
  let stagingParent: string;
  let tag: string;
  if (dir === undefined) {
    const source = env['QREXEC_REMOTE_DOMAIN'];
    if (!source) {
      process.stderr.write('qfile-unpacker: Cannot get remote domain name\n');
      return 1;
    }
    if (!isValidQubeName(source)) {
      process.stderr.write(`qfile-unpacker: Invalid remote domain name: ${source}\n`);
      return 1;
    }
    const home = env['HOME'] || '/home/user';
    stagingParent = path.join(home, 'QubesIncoming');
    fs.mkdirSync(stagingParent, { recursive: true, mode: 0o700 });
    dir = path.join(stagingParent, source);
    tag = source;
  } else {
    stagingParent = path.dirname(path.resolve(dir));
    tag = path.basename(path.resolve(dir));
  }
  try {
    fs.mkdirSync(dir, { mode: 0o700 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') {
      process.stderr.write(`qfile-unpacker: Error creating ${dir}: ${(e as Error).message}\n`);
      return 1;
    }
  }
  const st = fs.lstatSync(dir);
  if (!st.isDirectory()) {
    process.stderr.write(`qfile-unpacker: Error chdir to ${dir}\n`);
    return 1;
  }
  if (maxBytes === undefined) {
    try {
      const fsst = fs.statfsSync(dir, { bigint: true });
      // at least 1: 0 would mean no limit
      maxBytes = (fsst.bavail * fsst.bsize * 9n) / 10n || 1n;
    } catch {
      maxBytes = 0n;
    }
  }
  cleanStaleStaging(stagingParent);
  const status = await unpack(process.stdin, process.stdout, {
    dir,
    stagingDir: path.join(stagingParent, `.qfile-${tag}-${process.pid}`),
    flags,
    maxBytes,
    maxFiles,
    ...(verbose ? { verbose: (n: string) => process.stderr.write(`${n}\n`) } : {}),
  });
  return status & 0xff;
}
