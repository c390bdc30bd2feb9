/**
 * The qfile wire format of qubes.Filecopy, as QubesOS/qubes-linux-utils
 * (qrexec-lib: pack.c, unpack.c, libqubes-rpc-filecopy.h) speaks it, so that
 * our sender and receiver interoperate with real Qubes qubes. Pure: no I/O.
 *
 * The sender writes, per file, a 32-byte little-endian header
 * `namelen u32, mode u32, filelen u64, atime u32, atime_nsec u32, mtime u32,
 * mtime_nsec u32`, the name (`namelen` bytes, NUL-terminated, a path relative
 * to the receiving directory), then the content: `filelen` bytes of a regular
 * file, or a symlink's target (no NUL); a directory has none and is sent again
 * after its contents (so its times are set last). An all-zero header ends the
 * transfer. The receiver answers once, at the end or at its first error:
 * `error_code u32, pad u32, crc32 u64` then `last_namelen u32` and the last
 * name. The CRC-32 (zlib's) covers every byte the receiver read.
 *
 * Names are checked as qubes_pure_validate_file_name_v2 /
 * qubes_pure_validate_symbolic_link_v2 check them (unicode.c): relative, no
 * `.`/`..` component, no `//`, no trailing `/`, printable ASCII or UTF-8 that
 * is safe to display; a symlink is at least two components deep and its
 * target cannot climb out of the top-level directory it is in.
 */

export const HEADER_SIZE = 32;
export const RESULT_SIZE = 16;
/** MAX_PATH_LENGTH of libqubes-rpc-filecopy.h. */
export const MAX_PATH_LENGTH = 16384;
/** The status the receiver sends when the data ended early (LEGAL_EOF). */
export const LEGAL_EOF = 31415926;

/** Linux errno values the protocol carries. */
export const Errno = {
  ENOENT: 2,
  EIO: 5,
  ENOMEM: 12,
  EACCES: 13,
  EEXIST: 17,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  EFBIG: 27,
  ENOSPC: 28,
  ENAMETOOLONG: 36,
  ELOOP: 40,
  ENOLINK: 67,
  EILSEQ: 84,
  EREMOTEIO: 121,
  EDQUOT: 122,
} as const;

const STRERROR: Record<number, string> = {
  1: 'Operation not permitted',
  2: 'No such file or directory',
  5: 'Input/output error',
  12: 'Cannot allocate memory',
  13: 'Permission denied',
  17: 'File exists',
  20: 'Not a directory',
  21: 'Is a directory',
  22: 'Invalid argument',
  27: 'File too large',
  28: 'No space left on device',
  30: 'Read-only file system',
  36: 'File name too long',
  40: 'Too many levels of symbolic links',
  67: 'Link has been severed',
  84: 'Invalid or incomplete multibyte or wide character',
  121: 'Remote I/O error',
  122: 'Disk quota exceeded',
};

/** glibc's strerror for the errnos above. */
export function strerror(code: number): string {
  return STRERROR[code] ?? `Unknown error ${code}`;
}

/** An errno from a Node error code (ENOENT...), EIO when unknown. */
export function errnoOf(e: unknown): number {
  const code = (e as NodeJS.ErrnoException | null)?.code;
  if (code && code in Errno) return Errno[code as keyof typeof Errno];
  const n = (e as NodeJS.ErrnoException | null)?.errno;
  return typeof n === 'number' && n < 0 ? -n : Errno.EIO;
}

export const S_IFMT = 0o170000;
export const S_IFREG = 0o100000;
export const S_IFDIR = 0o040000;
export const S_IFLNK = 0o120000;

export interface FileHeader {
  readonly namelen: number;
  readonly mode: number;
  readonly filelen: bigint;
  readonly atime: number;
  readonly atimeNsec: number;
  readonly mtime: number;
  readonly mtimeNsec: number;
}

export function encodeHeader(h: FileHeader): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  b.writeUInt32LE(h.namelen >>> 0, 0);
  b.writeUInt32LE(h.mode >>> 0, 4);
  b.writeBigUInt64LE(h.filelen, 8);
  b.writeUInt32LE(h.atime >>> 0, 16);
  b.writeUInt32LE(h.atimeNsec >>> 0, 20);
  b.writeUInt32LE(h.mtime >>> 0, 24);
  b.writeUInt32LE(h.mtimeNsec >>> 0, 28);
  return b;
}

export function decodeHeader(b: Buffer): FileHeader {
  return {
    namelen: b.readUInt32LE(0),
    mode: b.readUInt32LE(4),
    filelen: b.readBigUInt64LE(8),
    atime: b.readUInt32LE(16),
    atimeNsec: b.readUInt32LE(20),
    mtime: b.readUInt32LE(24),
    mtimeNsec: b.readUInt32LE(28),
  };
}

/** The receiver's answer: result_header plus result_header_ext with the last name. */
export function encodeResult(code: number, crc: number, lastName: Buffer | null): Buffer {
  const b = Buffer.alloc(RESULT_SIZE + (lastName ? 4 + lastName.length : 0));
  b.writeUInt32LE(code >>> 0, 0);
  b.writeBigUInt64LE(BigInt(crc >>> 0), 8);
  if (lastName) {
    b.writeUInt32LE(lastName.length, RESULT_SIZE);
    lastName.copy(b, RESULT_SIZE + 4);
  }
  return b;
}

// --- CRC-32 (zlib polynomial, as qrexec-lib's Crc32_ComputeBuf) ---

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** Continues a CRC-32 over `buf`. */
export function crc32(crc: number, buf: Uint8Array): number {
  let c = (crc ^ 0xffffffff) >>> 0;
  for (let i = 0; i < buf.length; i++) c = (CRC_TABLE[(c ^ (buf[i] as number)) & 0xff] as number) ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// --- name checks (our reading of qrexec-lib/unicode.c) ---

/** Flags of the checks (QubesFilenameValidationFlags). */
export const NameFlags = {
  ALLOW_UNSAFE_CHARACTERS: 1,
  ALLOW_NON_CANONICAL_SYMLINKS: 2,
  ALLOW_UNSAFE_SYMLINKS: 4,
  ALLOW_NON_CANONICAL_PATHS: 8,
  ALLOW_TRAILING_SLASH: 16,
} as const;

const SAFE_SCRIPT = /^[\p{Script=Latin}\p{Script=Greek}\p{Script=Cyrillic}\p{Script=Han}\p{Script=Hangul}\p{Script=Hiragana}\p{Script=Katakana}\p{Script=Bopomofo}\p{Script=Braille}\p{Script=Common}\p{Script=Inherited}]$/u;
/** Letters, numbers, punctuation, math and currency symbols (no marks, spaces, controls, other symbols). */
const SAFE_CATEGORY = /^[\p{L}\p{N}\p{P}\p{Sm}\p{Sc}]$/u;
/** Right-to-left and other bidi classes the reference refuses, by block, for characters of the scripts above. */
const RTL_BLOCKS: readonly (readonly [number, number])[] = [
  [0x0590, 0x08ff],
  [0xfb1d, 0xfdff],
  [0xfe70, 0xfeff],
  [0x10800, 0x10fff],
  [0x1e800, 0x1efff],
];
/**
 * Characters that Node's Unicode data assigns but the reference's table
 * (an older Unicode) does not know: refused, as the reference refuses them.
 */
const NEWER_THAN_REFERENCE: readonly (readonly [number, number])[] = [
  [0x1c89, 0x1c8a],
  [0x20c1, 0x20c1],
  [0xa7cb, 0xa7cf],
  [0xa7d2, 0xa7d2],
  [0xa7d4, 0xa7d4],
  [0xa7da, 0xa7dc],
  [0xa7f1, 0xa7f1],
  [0x16ff2, 0x16ff6],
  [0x1ccf0, 0x1ccf9],
  [0x1cef0, 0x1cef0],
  [0x1f8d0, 0x1f8d8],
  [0x2b73a, 0x2b73f],
  [0x2cea2, 0x2cead],
  [0x2ebf0, 0x2ee5d],
  [0x323b0, 0x33479],
];

/**
 * A code point that is safe to display, by the criteria of the reference's
 * unicode-generator.c: an assigned letter, number, punctuation, math or
 * currency symbol (no mark, space, control, format, private-use or other
 * symbol) of the Latin, Greek, Cyrillic, CJK, Braille, Common or Inherited
 * scripts, and not right-to-left. Our own derivation from Unicode
 * properties: the reference ships a generated table. Compared with it on
 * every code point, we agree but for three characters we refuse (Common
 * characters in right-to-left blocks).
 */
export function codePointSafeForDisplay(cp: number): boolean {
  if (cp < 0x20 || (cp >= 0x7f && cp < 0xa0) || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
  if (cp < 0x7f) return true;
  if ((cp & 0xfffe) === 0xfffe || (cp >= 0xfdd0 && cp <= 0xfdef)) return false;
  const ch = String.fromCodePoint(cp);
  if (!SAFE_CATEGORY.test(ch) || !SAFE_SCRIPT.test(ch)) return false;
  const within = ([a, b]: readonly [number, number]): boolean => cp >= a && cp <= b;
  return !RTL_BLOCKS.some(within) && !NEWER_THAN_REFERENCE.some(within);
}

/**
 * Length of the UTF-8 character at `i` when it is valid and safe to display;
 * 0 otherwise (control bytes, bad sequences, overlongs, surrogates, unsafe).
 */
function safeUtf8At(b: Uint8Array, i: number): number {
  const c = b[i] as number;
  let len: number;
  let cp: number;
  if (c >= 0xc2 && c <= 0xdf) {
    len = 2;
    cp = c & 0x1f;
  } else if (c >= 0xe0 && c <= 0xef) {
    len = 3;
    cp = c & 0x0f;
    if (c === 0xe0 && !((b[i + 1] ?? 0) >= 0xa0)) return 0;
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4;
    cp = c & 0x07;
    if (c === 0xf0 && !((b[i + 1] ?? 0) >= 0x90)) return 0;
  } else return 0;
  for (let k = 1; k < len; k++) {
    const t = b[i + k];
    if (t === undefined || t < 0x80 || t > 0xbf) return 0;
    cp = (cp << 6) | (t & 0x3f);
  }
  return codePointSafeForDisplay(cp) ? len : 0;
}

/**
 * validate_path: the number of non-`..` components, or a negative errno.
 * At most `leadingDotdot` leading `..` components are allowed.
 */
function validatePath(name: Uint8Array, leadingDotdot: number, flags: number): number {
  const nonCanonical = (flags & NameFlags.ALLOW_NON_CANONICAL_PATHS) !== 0;
  if (name.length === 0) return nonCanonical ? 0 : -Errno.ENOLINK;
  if (name[0] === 0x2f) return -Errno.ENOLINK;
  let parts = 0;
  const at = (k: number): number => (k < name.length ? (name[k] as number) : 0);
  let i = 0;
  for (; i < name.length; i++) {
    if (name[i] === 0) return -Errno.EILSEQ;
    if (i === 0 || name[i - 1] === 0x2f) {
      const c = name[i] as number;
      if (c === 0x2f) {
        if (nonCanonical) continue;
        return -Errno.EILSEQ;
      }
      if (c === 0x2e && (at(i + 1) === 0 || at(i + 1) === 0x2f)) {
        if (nonCanonical) continue;
        return -Errno.EILSEQ;
      }
      if (c === 0x2e && at(i + 1) === 0x2e && (at(i + 2) === 0 || at(i + 2) === 0x2f)) {
        if (leadingDotdot < 1) return -Errno.ENOLINK;
        leadingDotdot--;
        i++;
        continue;
      }
      leadingDotdot = 0;
      parts++;
    }
    const c = name[i] as number;
    if ((c >= 0x20 && c <= 0x7e) || (flags & NameFlags.ALLOW_UNSAFE_CHARACTERS) !== 0) continue;
    const n = safeUtf8At(name, i);
    if (n === 0) return -Errno.EILSEQ;
    i += n - 1;
  }
  if ((flags & NameFlags.ALLOW_TRAILING_SLASH) === 0 && name[name.length - 1] === 0x2f) return -Errno.EILSEQ;
  return parts;
}

/** qubes_pure_validate_file_name_v2: 0 or -EILSEQ. */
export function validateFileName(name: Uint8Array, flags = 0): number {
  return validatePath(name, 0, flags) > 0 ? 0 : -Errno.EILSEQ;
}

/** qubes_pure_validate_symbolic_link_v2: 0, -EILSEQ (bad name) or -ENOLINK/-EILSEQ (bad target). */
export function validateSymlink(name: Uint8Array, target: Uint8Array, flags = 0): number {
  const depth = validatePath(name, 0, flags);
  if (depth < 0) return -Errno.EILSEQ;
  if ((flags & NameFlags.ALLOW_UNSAFE_SYMLINKS) !== 0) return depth > 0 ? 0 : -Errno.ENOLINK;
  if ((flags & NameFlags.ALLOW_NON_CANONICAL_SYMLINKS) !== 0) flags |= NameFlags.ALLOW_NON_CANONICAL_PATHS;
  if (depth < 2) return -Errno.ENOLINK;
  const r = validatePath(target, depth - 2, flags | NameFlags.ALLOW_TRAILING_SLASH);
  return r < 0 ? r : 0;
}

/** The qube-name rules of qubes_pure_is_valid_qube_name. */
export function isValidQubeName(name: string): boolean {
  return /^[A-Za-z][A-Za-z0-9_.-]{0,30}$/.test(name) && !name.endsWith('-dm') && !['none', 'default', 'Domain-0'].includes(name);
}

/** The sender's sanitizing of a name the receiver reported: bytes outside ' '..'~' and '"' become '_'. */
export function sanitizeRemoteName(b: Buffer): string {
  let s = '';
  for (const c of b) s += c < 0x20 || c > 0x7e || c === 0x22 ? '_' : String.fromCharCode(c);
  return s;
}

/** The sender's message for a receiver's status (pack.c wait_for_result). */
export function resultMessage(code: number, lastName: string, hadName: boolean): string {
  const prefix = hadName ? '; Last file: ' : '';
  switch (code) {
    case Errno.EEXIST:
      return `A file named "${lastName}" already exists in QubesIncoming dir`;
    case Errno.EINVAL:
      return `File copy: Corrupted data from packer${prefix}"${lastName}"`;
    case Errno.EILSEQ:
      return `Forbidden character in file or link target. Name might look somewhat like "${lastName}"`;
    case Errno.ENOLINK:
      return `Cannot verify that link at "${lastName}" would not be broken by copy`;
    default:
      return `File copy: "${strerror(code)}${prefix}${lastName}"`;
  }
}
