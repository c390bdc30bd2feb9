/**
 * The policy daemon's request format, as the reference really speaks it
 * (qrexec_policy_daemon.py handle_client_connection): ASCII `key=value`
 * lines, the value being everything after the first `=`, ended by an empty
 * line or by EOF. Pure and push-based: feed it chunks as they arrive.
 *
 * Accepted keys: `source`, `intended_target`, `service_and_arg` (required),
 * `requested_source`, `assume_yes_for_ask`, `just_evaluate` (optional, the
 * last two `yes`|`no`). Everything the reference rejects is rejected
 * (unknown or duplicate keys, missing keys, bad booleans, a line without
 * `=`, non-ASCII), and, stricter than the reference, any byte outside
 * printable ASCII (NUL, CR, TAB...) and any value longer than the qrexec
 * protocol can carry.
 */

/** Longest `service+argument` qrexec carries (MAX_SERVICE_NAME_LEN-ish limit of the protocol). */
export const MAX_SERVICE_AND_ARG = 65000;
/** Longest qube name or target token: the protocol's target field holds 63 bytes. */
export const MAX_NAME = 63;
/** Longest line we buffer: `service_and_arg=` plus the longest value. */
export const MAX_LINE = 'service_and_arg='.length + MAX_SERVICE_AND_ARG;
/** Longest whole request (all lines with their newlines). */
export const MAX_REQUEST = MAX_LINE + 1 + 5 * (32 + MAX_NAME + 1) + 1;

/** A request after validation. Values are printable ASCII within their limits. */
export interface DaemonRequest {
  readonly source: string;
  readonly intendedTarget: string;
  readonly serviceAndArg: string;
  readonly requestedSource: string | undefined;
  readonly assumeYesForAsk: boolean;
  readonly justEvaluate: boolean;
}

export type ParseStep =
  | { readonly kind: 'more' }
  | { readonly kind: 'done'; readonly request: DaemonRequest }
  | { readonly kind: 'error'; readonly reason: string };

const MORE: ParseStep = { kind: 'more' };

const LIMITS: Readonly<Record<string, number>> = {
  source: MAX_NAME,
  intended_target: MAX_NAME,
  service_and_arg: MAX_SERVICE_AND_ARG,
  requested_source: MAX_NAME,
  assume_yes_for_ask: 3,
  just_evaluate: 3,
};

/** Printable rendering of an untrusted key for error messages. */
function showKey(b: Uint8Array, start: number, end: number): string {
  let s = '';
  for (let i = start; i < end && i < start + 40; i++) {
    const c = b[i] as number;
    s += c >= 0x20 && c < 0x7f ? String.fromCharCode(c) : '\\x' + c.toString(16).padStart(2, '0');
  }
  return end - start > 40 ? s + '...' : s;
}

/**
 * Incremental parser for one request. `push()` each chunk; the first step
 * that is not `more` is final (later input is ignored, as the reference stops
 * reading at the empty line). Call `end()` at EOF.
 */
export class RequestParser {
  private readonly pending: Uint8Array[] = [];
  private pendingLen = 0;
  private total = 0;
  private readonly fields = new Map<string, string>();
  private final: ParseStep | null = null;

  /** Feed a chunk; returns the outcome so far. */
  push(chunk: Uint8Array): ParseStep {
    if (this.final) return this.final;
    let start = 0;
    const n = chunk.length;
    while (start < n) {
      const nl = chunk.indexOf(0x0a, start);
      const end = nl < 0 ? n : nl;
      const piece = end - start;
      if (this.pendingLen + piece > MAX_LINE) {
        return this.fail(`line longer than ${MAX_LINE} bytes`);
      }
      this.total += piece + (nl < 0 ? 0 : 1);
      if (this.total > MAX_REQUEST) return this.fail(`request longer than ${MAX_REQUEST} bytes`);
      if (nl < 0) {
        if (piece > 0) {
          this.pending.push(chunk.subarray(start, end));
          this.pendingLen += piece;
        }
        return MORE;
      }
      let line: Uint8Array;
      if (this.pendingLen === 0) {
        line = chunk.subarray(start, end);
      } else {
        this.pending.push(chunk.subarray(start, end));
        line = Buffer.concat(this.pending, this.pendingLen + piece);
        this.pending.length = 0;
        this.pendingLen = 0;
      }
      start = nl + 1;
      const step = this.line(line);
      if (step !== MORE) return step;
    }
    return MORE;
  }

  /** EOF: a partial last line counts as a line, then the request ends (as in the reference). */
  end(): ParseStep {
    if (this.final) return this.final;
    if (this.pendingLen > 0) {
      const line = Buffer.concat(this.pending, this.pendingLen);
      this.pending.length = 0;
      this.pendingLen = 0;
      const step = this.line(line);
      if (step !== MORE) return step;
    }
    return this.finish();
  }

  private fail(reason: string): ParseStep {
    this.final = { kind: 'error', reason };
    return this.final;
  }

  private line(b: Uint8Array): ParseStep {
    if (b.length === 0) return this.finish();
    let eq = -1;
    for (let i = 0; i < b.length; i++) {
      const c = b[i] as number;
      if (c < 0x20 || c > 0x7e) {
        return this.fail(
          c > 0x7f
            ? `non-ASCII byte 0x${c.toString(16)} in request`
            : `non-printable byte 0x${c.toString(16).padStart(2, '0')} in request`,
        );
      }
      if (c === 0x3d && eq < 0) eq = i;
    }
    if (eq < 0) return this.fail(`line without '=': ${showKey(b, 0, b.length)}`);
    const key = Buffer.from(b.buffer, b.byteOffset, eq).toString('latin1');
    const limit = LIMITS[key];
    if (limit === undefined || !Object.hasOwn(LIMITS, key)) {
      return this.fail(`unknown argument ${showKey(b, 0, eq)}`);
    }
    if (this.fields.has(key)) return this.fail(`duplicate argument ${key}`);
    const valueLen = b.length - eq - 1;
    if ((key === 'assume_yes_for_ask' || key === 'just_evaluate') && valueLen <= 64) {
      const v = Buffer.from(b.buffer, b.byteOffset + eq + 1, valueLen).toString('latin1');
      if (v !== 'yes' && v !== 'no') return this.fail(`invalid bool value ${v} for argument ${key}`);
    }
    if (valueLen > limit) return this.fail(`value of ${key} is ${valueLen} bytes long, the limit is ${limit}`);
    const value = Buffer.from(b.buffer, b.byteOffset + eq + 1, valueLen).toString('latin1');
    this.fields.set(key, value);
    return MORE;
  }

  private finish(): ParseStep {
    const f = this.fields;
    const source = f.get('source');
    const intendedTarget = f.get('intended_target');
    const serviceAndArg = f.get('service_and_arg');
    if (source === undefined || intendedTarget === undefined || serviceAndArg === undefined) {
      return this.fail('required argument missing');
    }
    this.final = {
      kind: 'done',
      request: {
        source,
        intendedTarget,
        serviceAndArg,
        requestedSource: f.get('requested_source'),
        assumeYesForAsk: f.get('assume_yes_for_ask') === 'yes',
        justEvaluate: f.get('just_evaluate') === 'yes',
      },
    };
    return this.final;
  }
}

/** Serialise a request the way qrexec-daemon writes it (for clients and tests). */
export function formatRequest(r: {
  source: string;
  intendedTarget: string;
  serviceAndArg: string;
  requestedSource?: string | undefined;
  assumeYesForAsk?: boolean;
  justEvaluate?: boolean;
}): string {
  let s = `source=${r.source}\nintended_target=${r.intendedTarget}\nservice_and_arg=${r.serviceAndArg}\n`;
  if (r.requestedSource !== undefined) s += `requested_source=${r.requestedSource}\n`;
  if (r.justEvaluate) s += 'just_evaluate=yes\n';
  if (r.assumeYesForAsk) s += 'assume_yes_for_ask=yes\n';
  return s + '\n';
}
