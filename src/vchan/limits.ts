/**
 * Limits on one call's data vchan that the reference does not have (see the
 * README, "Data-channel hardening"): how long a call may take to be set up,
 * how long an established one may stay silent, and how many protocol
 * complaints one call may add to the log.
 */
import { QrexecError } from '../common/errors.js';

export interface DataLimits {
  /**
   * Milliseconds each set-up step may take: the data vchan being connected
   * (or accepted), and then the peer's MSG_HELLO. 0: no limit.
   */
  readonly setupTimeoutMs: number;
  /**
   * Milliseconds an established call may go without any frame, sent or
   * received, before it is closed. 0 (the default): no limit, as long-lived
   * quiet streams (qubes.ConnectTCP sessions) are legitimate.
   */
  readonly idleTimeoutMs: number;
}

/** The reference's data-vchan connect budget for set-up; no idle limit. */
export const DEFAULT_DATA_LIMITS: DataLimits = { setupTimeoutMs: 120_000, idleTimeoutMs: 0 };

/** Protocol complaints one call logs in full; later ones are counted, and the count is logged at the end. */
export const COMPLAINTS_LOGGED_PER_CALL = 10;

/** Environment variables holding the limits, in seconds (fractions allowed; 0 disables). */
export const SETUP_TIMEOUT_ENV = 'QREXEC_DATA_SETUP_TIMEOUT';
export const IDLE_TIMEOUT_ENV = 'QREXEC_DATA_IDLE_TIMEOUT';

/** A limit that is not a non-negative number of seconds. */
export class DataLimitError extends QrexecError {
  override name = 'DataLimitError';
}

/** Seconds (a non-negative decimal number) as milliseconds. */
export function parseSeconds(what: string, v: string): number {
  if (!/^[0-9]+(\.[0-9]+)?$/.test(v)) throw new DataLimitError(`${what}: not a number of seconds: '${v}'`);
  const ms = Math.round(Number(v) * 1000);
  if (!Number.isSafeInteger(ms) || ms > 2 ** 31 - 1) throw new DataLimitError(`${what}: too large: '${v}'`);
  return ms;
}

/** The limits set in `env` (QREXEC_DATA_SETUP_TIMEOUT, QREXEC_DATA_IDLE_TIMEOUT), else the defaults. */
export function dataLimitsFromEnv(env: NodeJS.ProcessEnv = process.env): DataLimits {
  const s = env[SETUP_TIMEOUT_ENV];
  const i = env[IDLE_TIMEOUT_ENV];
  return {
    setupTimeoutMs: s === undefined || s === '' ? DEFAULT_DATA_LIMITS.setupTimeoutMs : parseSeconds(SETUP_TIMEOUT_ENV, s),
    idleTimeoutMs: i === undefined || i === '' ? DEFAULT_DATA_LIMITS.idleTimeoutMs : parseSeconds(IDLE_TIMEOUT_ENV, i),
  };
}
