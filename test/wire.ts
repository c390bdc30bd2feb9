/**
 * qrexec message framing for the test peers (test/agent/peer.ts,
 * test/daemon/peer.ts), written from the spec (libqrexec/qrexec.h): u32 type,
 * u32 length, little-endian. It does not import the codec under test.
 */

export const T = {
  DATA_STDIN: 0x190,
  DATA_STDOUT: 0x191,
  DATA_STDERR: 0x192,
  DATA_EXIT_CODE: 0x193,
  EXEC_CMDLINE: 0x200,
  JUST_EXEC: 0x201,
  SERVICE_CONNECT: 0x202,
  SERVICE_REFUSED: 0x203,
  TRIGGER_SERVICE: 0x210,
  CONNECTION_TERMINATED: 0x211,
  TRIGGER_SERVICE3: 0x212,
  TRIGGER_SERVICE4: 0x213,
  HELLO: 0x300,
} as const;

/** Little-endian u32 words. */
export const u32 = (...v: number[]): Buffer => {
  const b = Buffer.alloc(4 * v.length);
  v.forEach((x, i) => b.writeUInt32LE(x >>> 0, 4 * i));
  return b;
};

/** One message: header and payload (a string is UTF-8). */
export const msg = (type: number, payload: Buffer | string = Buffer.alloc(0)): Buffer => {
  const p = typeof payload === 'string' ? Buffer.from(payload) : payload;
  return Buffer.concat([u32(type, p.length), p]);
};

/** `s` (latin1 when a string) in a zero-padded field of `n` bytes. */
export const fixed = (s: string | Buffer, n: number): Buffer => {
  const b = Buffer.alloc(n);
  (typeof s === 'string' ? Buffer.from(s, 'latin1') : s).copy(b);
  return b;
};
