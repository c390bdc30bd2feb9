/**
 * End-to-end signing of relayed calls (where we go beyond the reference,
 * whose doc names it as missing): the source host's dom0 signs each call its
 * policy allowed toward a RemoteVM, and the target host's dom0 (not its
 * relay qube) verifies it before the call is delivered. A relay can then
 * neither pass one of its RemoteVMs off as another nor replay a call.
 *
 * The envelope covers: the two host names, the source (its name on the
 * source host), the target (its name on the target host), the service with
 * its argument, a random nonce and the time. Ed25519 through node:crypto,
 * one key per host (DATA/air/signing-key.pem); peers pin the public key
 * from the offer. On the wire it is one base64url word.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AirError } from './errors.js';

/** How far an envelope's time may be from ours, either way. */
export const MAX_SKEW_MS = 60_000;
const KEY_FILE = 'signing-key.pem';
/** The key a rotation brings in: offered to peers before it signs anything. */
const NEXT_KEY_FILE = 'signing-key.next.pem';
const DOMAIN = 'qubes-air-call-v1';

/** The signed fields of one relayed call. */
export interface CallClaim {
  /** The source host (signer). */
  readonly from: string;
  /** The target host. */
  readonly to: string;
  /** The calling qube, by its name on the source host. */
  readonly source: string;
  /** The called qube, by its name on the target host. */
  readonly target: string;
  /** SERVICE+ARG. */
  readonly service: string;
  /** 16 random bytes, base64url. */
  readonly nonce: string;
  /** Unix milliseconds. */
  readonly time: number;
}

function makeKeyFile(airDir: string, name: string): void {
  const f = path.join(airDir, name);
  if (fs.existsSync(f)) return;
  const { privateKey } = crypto.generateKeyPairSync('ed25519');
  fs.mkdirSync(airDir, { recursive: true, mode: 0o700 });
  fs.writeFileSync(`${f}.new`, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  fs.renameSync(`${f}.new`, f);
}

/** Makes DATA/air/signing-key.pem if missing. */
export function ensureSigningKey(airDir: string): void {
  makeKeyFile(airDir, KEY_FILE);
}

/**
 * A key rotation without a gap, step 1: makes the next signing key (kept if
 * there is one) and returns its public key. It signs nothing yet; offers
 * carry it (`nextSigningKey`), and peers that import one accept either key.
 */
export function prepareRotation(airDir: string): string {
  loadSigningKey(airDir);
  makeKeyFile(airDir, NEXT_KEY_FILE);
  return nextPublicKeyOf(airDir) as string;
}

/** The next signing key's public key, while a rotation is under way. */
export function nextPublicKeyOf(airDir: string): string | undefined {
  const f = path.join(airDir, NEXT_KEY_FILE);
  if (!fs.existsSync(f)) return undefined;
  return rawPublicKey(crypto.createPrivateKey(fs.readFileSync(f)));
}

/**
 * Step 2: the next key becomes the signing key and the old one is deleted.
 * Returns the new public key.
 * @throws AirError when no rotation was prepared
 */
export function finishRotation(airDir: string): string {
  const next = path.join(airDir, NEXT_KEY_FILE);
  if (!fs.existsSync(next)) throw new AirError('no key rotation is under way (qvm-air rotate first)');
  fs.renameSync(next, path.join(airDir, KEY_FILE));
  return publicKeyOf(airDir);
}

export function loadSigningKey(airDir: string): crypto.KeyObject {
  try {
    return crypto.createPrivateKey(fs.readFileSync(path.join(airDir, KEY_FILE)));
  } catch {
    throw new AirError(`this host has no signing key (${path.join(airDir, KEY_FILE)}): qvm-air init NAME`);
  }
}

/** The 32 raw bytes of an Ed25519 public key, base64. */
export function rawPublicKey(k: crypto.KeyObject): string {
  const der = crypto.createPublicKey(k).export({ type: 'spki', format: 'der' });
  return der.subarray(der.length - 32).toString('base64');
}

export function publicKeyOf(airDir: string): string {
  return rawPublicKey(loadSigningKey(airDir));
}

/** A public key from its 32 raw bytes (base64). */
export function publicKeyFromRaw(b64: string): crypto.KeyObject {
  const raw = Buffer.from(b64, 'base64');
  if (raw.length !== 32) throw new AirError('an Ed25519 public key has 32 bytes');
  return crypto.createPublicKey({ key: Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), raw]), format: 'der', type: 'spki' });
}

/** The fingerprint shown in logs and the audit: SHA-256 of the raw key, base64, first 16 characters. */
export function keyFingerprint(b64: string): string {
  return 'ed25519:' + crypto.createHash('sha256').update(Buffer.from(b64, 'base64')).digest('base64').slice(0, 16);
}

function message(c: CallClaim): Buffer {
  return Buffer.from([DOMAIN, c.from, c.to, c.source, c.target, c.service, c.nonce, String(c.time)].join('\n'));
}

/** Signs a call; the envelope word. */
export function signCall(key: crypto.KeyObject, claim: Omit<CallClaim, 'nonce' | 'time'>, now = Date.now()): string {
  const c: CallClaim = { ...claim, nonce: crypto.randomBytes(16).toString('base64url'), time: now };
  const sig = crypto.sign(null, message(c), key).toString('base64url');
  return Buffer.from(JSON.stringify({ ...c, sig })).toString('base64url');
}

/** Why an envelope is refused. */
export class EnvelopeError extends AirError {
  override name = 'EnvelopeError';
}

/** The envelope's claim, its signature not yet checked. */
export function decodeEnvelope(word: string): CallClaim & { sig: string } {
  if (word.length > 2048 || !/^[A-Za-z0-9_-]+$/.test(word)) throw new EnvelopeError('malformed envelope');
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(Buffer.from(word, 'base64url').toString('utf8')) as Record<string, unknown>;
  } catch {
    throw new EnvelopeError('malformed envelope');
  }
  const s = (k: string): string => {
    const v = j[k];
    if (typeof v !== 'string' || v.length > 300) throw new EnvelopeError(`envelope without ${k}`);
    return v;
  };
  const time = j['time'];
  if (typeof time !== 'number' || !Number.isSafeInteger(time)) throw new EnvelopeError('envelope without time');
  return { from: s('from'), to: s('to'), source: s('source'), target: s('target'), service: s('service'), nonce: s('nonce'), time, sig: s('sig') };
}

/**
 * Remembers the nonces of envelopes accepted within the skew window, so
 * each is accepted once. Older nonces can go: their envelope is refused by
 * its time.
 */
export class ReplayGuard {
  private readonly seen = new Map<string, number>();
  accept(nonce: string, time: number, now: number): boolean {
    if (this.seen.size > 4096) for (const [n, t] of this.seen) if (t < now - 2 * MAX_SKEW_MS) this.seen.delete(n);
    if (this.seen.has(nonce)) return false;
    this.seen.set(nonce, time);
    return true;
  }
}

/**
 * Verifies an envelope against the expectations of the target host: the
 * signer's pinned keys (its key, and during a rotation its next one), this
 * host's name, the call as the relay presents it. Returns the claim and the
 * index of the key that made it. Throws EnvelopeError naming what does not
 * match.
 */
export function verifyCall(
  word: string,
  expect: { readonly from: string; readonly keys: readonly crypto.KeyObject[]; readonly to: string; readonly source: string; readonly target: string; readonly service: string },
  guard: ReplayGuard,
  now = Date.now(),
): CallClaim & { readonly keyIndex: number } {
  const c = decodeEnvelope(word);
  const m = message(c);
  const sig = Buffer.from(c.sig, 'base64url');
  const keyIndex = expect.keys.findIndex((k) => crypto.verify(null, m, k, sig));
  if (keyIndex < 0) throw new EnvelopeError(`bad signature (not made by ${expect.from}'s key)`);
  if (c.from !== expect.from) throw new EnvelopeError(`signed by host ${c.from}, relayed from ${expect.from}`);
  if (c.to !== expect.to) throw new EnvelopeError(`signed for host ${c.to}, not this one (${expect.to})`);
  if (c.source !== expect.source) throw new EnvelopeError(`signed for source ${c.source}, the relay claims ${expect.source}`);
  if (c.target !== expect.target) throw new EnvelopeError(`signed for target ${c.target}, the relay asks for ${expect.target}`);
  if (c.service !== expect.service) throw new EnvelopeError(`signed for ${c.service}, the relay asks for ${expect.service}`);
  if (Math.abs(now - c.time) > MAX_SKEW_MS) throw new EnvelopeError(`envelope time is ${Math.round((now - c.time) / 1000)} s off`);
  if (!guard.accept(c.nonce, c.time, now)) throw new EnvelopeError('replayed envelope (nonce seen before)');
  return { ...c, keyIndex };
}
