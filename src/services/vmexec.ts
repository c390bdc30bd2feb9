/**
 * qubes.VMExec / qubes.VMExecGUI argument encoding (qubes-core-agent-linux,
 * qubesadmin.utils.encode_for_vmexec): the command's arguments joined by `+`;
 * in each, `[A-Za-z0-9._]` stand for themselves, `--` for `-`, and `-HH`
 * (two upper-case hex digits) for any other byte. Decoding is strict: any
 * other character, a lone `-`, lower-case hex, or a byte that cannot be an
 * exec argument (NUL, invalid UTF-8) rejects the whole argument.
 */

/** The service names handled here. */
export const VMEXEC_SERVICES: readonly string[] = ['qubes.VMExec', 'qubes.VMExecGUI'];

/** A malformed VMExec argument; `message` says what is wrong and where. */
export class VmExecDecodeError extends Error {
  override name = 'VmExecDecodeError';
}

const PLAIN = /^[A-Za-z0-9._]$/;
const HEX = /^[0-9A-F]{2}$/;

/** Decodes one `+`-separated part into its bytes. */
export function decodeVmExecPart(part: string, index = 0): Buffer {
  const out: number[] = [];
  for (let i = 0; i < part.length; i++) {
    const c = part[i] as string;
    if (PLAIN.test(c)) {
      out.push(c.charCodeAt(0));
      continue;
    }
    if (c !== '-') throw new VmExecDecodeError(`part ${index}: illegal character ${JSON.stringify(c)} at offset ${i}`);
    if (part[i + 1] === '-') {
      out.push(0x2d);
      i++;
      continue;
    }
    const hh = part.slice(i + 1, i + 3);
    if (!HEX.test(hh)) throw new VmExecDecodeError(`part ${index}: '-' can be used only in '-HH' or '--' (offset ${i})`);
    out.push(parseInt(hh, 16));
    i += 2;
  }
  return Buffer.from(out);
}

/**
 * Decodes a whole service argument into the command's argv. Throws
 * VmExecDecodeError for anything malformed, an empty command, or arguments
 * that cannot be passed to exec (NUL bytes, invalid UTF-8).
 */
export function decodeVmExecArg(arg: string): string[] {
  const parts = arg.split('+').map((p, i) => decodeVmExecPart(p, i));
  if ((parts[0] as Buffer).length === 0) throw new VmExecDecodeError('empty command');
  return parts.map((b, i) => {
    if (b.includes(0)) throw new VmExecDecodeError(`part ${i}: NUL byte`);
    const s = b.toString('utf8');
    if (!Buffer.from(s, 'utf8').equals(b)) throw new VmExecDecodeError(`part ${i}: not valid UTF-8`);
    return s;
  });
}

/** Encodes argv for qubes.VMExec (what dom0's qvm-run --no-shell does). */
export function encodeVmExecArgs(argv: readonly string[]): string {
  return argv
    .map((a) => {
      let s = '';
      for (const byte of Buffer.from(a, 'utf8')) {
        const c = String.fromCharCode(byte);
        if (PLAIN.test(c)) s += c;
        else if (c === '-') s += '--';
        else s += `-${byte.toString(16).toUpperCase().padStart(2, '0')}`;
      }
      return s;
    })
    .join('+');
}
