/**
 * qrexec-legacy-convert: turn a Qubes 4.0 policy directory (or some of its
 * files) into one new-format policy file that decides every call the same.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { opt, parseArgs, runMain, UsageError } from '../common/args.js';
import { convertLegacy, LegacyConvertError, PolicySyntaxError } from '../policy/index.js';
import { DEFAULT_LEGACY_DIR, diskSource } from '../policy-files/disk.js';
import { writeOutputFile } from '../common/command-files.js';
import { whatIsMissing } from '../common/errors.js';

const USAGE = `usage: qrexec-legacy-convert [--legacy-dir DIR] [--output FILE] [--no-comments] [FILE ...]

Convert Qubes 4.0 policy files (${DEFAULT_LEGACY_DIR}/SERVICE[+ARG], lines
"SOURCE TARGET ACTION[,PARAM...]") into one new-format policy file that decides
every call exactly as the same files read through !compat-4.0 do. Put the
result where the !compat-4.0 line was (e.g. /etc/qubes/policy.d/35-compat.policy),
then move the 4.0 files away.

  FILE ...          convert only these 4.0 files (all in one directory);
                    default: every file of --legacy-dir that !compat-4.0 reads
  --legacy-dir DIR  the 4.0 policy directory (default ${DEFAULT_LEGACY_DIR})
  --output FILE     write the result to FILE (atomically) instead of stdout
  --no-comments     leave out the comments of the 4.0 files

What is converted as !compat-4.0 reads it: files sorted by service, SERVICE+ARG
before SERVICE; *.rpmsave, *.rpmnew, *.swp, dotfiles and other names skipped;
$-tokens become @-tokens, commas spaces; $include: files are inlined; after
each SERVICE+ARG file the two denies 4.0 implied are written out.

Exit status: 0 converted; 1 the 4.0 files do not load (FILE:LINE: problem);
2 bad usage.
`;

runMain('qrexec-legacy-convert', USAGE, () => {
  const args = parseArgs(process.argv.slice(2), [
    { name: 'legacy-dir', value: true },
    { name: 'output', short: 'o', value: true },
    { name: 'no-comments' },
  ]);
  if (args.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  let legacyDir = path.resolve(opt(args, 'legacy-dir') ?? DEFAULT_LEGACY_DIR);
  // the output's comments name the directory as the user did
  let shownAs = opt(args, 'legacy-dir') ?? DEFAULT_LEGACY_DIR;
  let only: string[] | undefined;
  if (args.positional.length > 0) {
    const dirs = new Set(args.positional.map((f) => path.dirname(path.resolve(f))));
    if (dirs.size !== 1) throw new UsageError('the named files must all be in one directory');
    const dir = [...dirs][0] as string;
    if (opt(args, 'legacy-dir') !== undefined && dir !== legacyDir) {
      throw new UsageError(`the named files are not in --legacy-dir ${legacyDir}`);
    }
    legacyDir = dir;
    shownAs = opt(args, 'legacy-dir') ?? path.dirname(args.positional[0] as string);
    only = args.positional.map((f) => path.basename(f));
  }
  const missing = whatIsMissing(legacyDir);
  if (missing !== undefined || !fs.statSync(legacyDir).isDirectory()) {
    process.stderr.write(`qrexec-legacy-convert: ${missing ?? `${legacyDir} is not a directory`}\n`);
    return 1;
  }
  let result;
  try {
    result = convertLegacy(diskSource, { legacyDir, only, comments: !args.flags.has('no-comments'), shownAs });
  } catch (e) {
    if (e instanceof PolicySyntaxError || e instanceof LegacyConvertError) {
      process.stderr.write(`qrexec-legacy-convert: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
  const output = opt(args, 'output');
  if (output === undefined) {
    process.stdout.write(result.text);
  } else {
    writeOutputFile(output, result.text, { atomic: true });
    process.stderr.write(`qrexec-legacy-convert: wrote ${result.rules} rule${result.rules === 1 ? '' : 's'} from ${result.files.length} file${result.files.length === 1 ? '' : 's'} to ${output}\n`);
  }
  return 0;
});
