/**
 * Reading a command's input files and writing its output files, with
 * failures said in one line (`cannot write F: /x does not exist`) as
 * CommandError.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CommandError, describeSystemError } from './errors.js';

/** Write `text` to `file`; with `atomic`, through a temporary file in the same directory and a rename. */
export function writeOutputFile(file: string, text: string, opts: { readonly atomic?: boolean; readonly mode?: number } = {}): void {
  const mode = opts.mode ?? 0o644;
  try {
    if (!opts.atomic) {
      fs.writeFileSync(file, text, { mode });
      return;
    }
    const tmp = path.join(path.dirname(path.resolve(file)), `.${path.basename(file)}.${process.pid}.tmp`);
    try {
      fs.writeFileSync(tmp, text, { mode });
      fs.renameSync(tmp, file);
    } catch (e) {
      fs.rmSync(tmp, { force: true });
      throw e;
    }
  } catch (e) {
    throw new CommandError(`cannot write ${file}: ${describeSystemError(e, file)}`);
  }
}

/** The text of an input file (`-`: stdin). */
export function readInputFile(file: string): string {
  try {
    return fs.readFileSync(file === '-' ? 0 : file, 'utf8');
  } catch (e) {
    throw new CommandError(file === '-' ? `cannot read stdin: ${describeSystemError(e)}` : describeSystemError(e, file));
  }
}
