/**
 * The policy conformance corpus, vendored as test/conformance/policy.tar.gz
 * (cases, daemon vectors, the contract README, compare.py). `corpusDir()`
 * unpacks it once per test process into a fresh temp dir (removed when the
 * process exits) and returns the path of its `policy/` directory.
 *
 * The archive is read with Node's zlib and a small ustar reader, so no tar
 * program is needed. A missing or damaged archive throws: the tests that use
 * the corpus fail, they never skip.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';

/** Repository root (this file runs from dist/test/conformance/). */
const ROOT = path.resolve(import.meta.dirname, '..', '..', '..');
export const CORPUS_ARCHIVE = path.join(ROOT, 'test', 'conformance', 'policy.tar.gz');

/** Number of case directories the archive must hold. */
export const CORPUS_CASES = 420;

let unpacked: string | null = null;

function field(block: Buffer, off: number, len: number): string {
  const s = block.subarray(off, off + len);
  const nul = s.indexOf(0);
  return s.subarray(0, nul === -1 ? len : nul).toString('utf8');
}

function octal(block: Buffer, off: number, len: number): number {
  const s = field(block, off, len).trim();
  const n = s === '' ? 0 : parseInt(s, 8);
  if (!Number.isFinite(n)) throw new Error(`corpus archive: bad number field ${JSON.stringify(s)}`);
  return n;
}

/** Unpack a tar stream (ustar, with GNU long names and pax paths) under `dest`. */
export function untar(data: Buffer, dest: string): number {
  let off = 0;
  let files = 0;
  let longName: string | null = null;
  const root = path.resolve(dest);
  while (off + 512 <= data.length) {
    const h = data.subarray(off, off + 512);
    if (h.every((b) => b === 0)) break;
    const size = octal(h, 124, 12);
    const type = String.fromCharCode(h[156] ?? 0x30);
    const prefix = field(h, 345, 155);
    const name = longName ?? (prefix !== '' ? `${prefix}/${field(h, 0, 100)}` : field(h, 0, 100));
    const body = data.subarray(off + 512, off + 512 + size);
    if (body.length !== size) throw new Error('corpus archive: truncated');
    off += 512 + Math.ceil(size / 512) * 512;
    if (type === 'L') {
      longName = body.toString('utf8').replace(/\0+$/, '');
      continue;
    }
    if (type === 'x') {
      const m = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(body.toString('utf8'));
      if (m) longName = m[1] as string;
      continue;
    }
    if (type === 'g') continue;
    longName = null;
    const target = path.resolve(root, name);
    if (target !== root && !target.startsWith(root + path.sep)) throw new Error(`corpus archive: path outside the archive: ${name}`);
    if (type === '5') {
      fs.mkdirSync(target, { recursive: true });
    } else if (type === '0' || type === '\0') {
      fs.mkdirSync(path.dirname(target), { recursive: true });
      fs.writeFileSync(target, body, { mode: octal(h, 100, 8) & 0o755 });
      files++;
    } else {
      throw new Error(`corpus archive: unsupported entry type ${JSON.stringify(type)} for ${name}`);
    }
  }
  return files;
}

/** The unpacked corpus's `policy/` directory (unpacked on first call). */
export function corpusDir(): string {
  if (unpacked !== null) return unpacked;
  if (!fs.existsSync(CORPUS_ARCHIVE)) throw new Error(`policy conformance corpus missing: ${CORPUS_ARCHIVE}`);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qrexec-corpus-'));
  process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));
  untar(gunzipSync(fs.readFileSync(CORPUS_ARCHIVE)), tmp);
  const dir = path.join(tmp, 'policy');
  const cases = fs.existsSync(dir) ? fs.readdirSync(dir).filter((c) => c.startsWith('case-')).length : 0;
  if (cases < CORPUS_CASES) throw new Error(`policy conformance corpus ${CORPUS_ARCHIVE} holds ${cases} cases, expected ${CORPUS_CASES}`);
  unpacked = dir;
  return dir;
}
