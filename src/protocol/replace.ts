/**
 * Output filtering of qrexec-client -t/-T and qrexec-client-vm -t/-T: every
 * byte that is not printable ASCII, tab, newline, CR, backspace or bell becomes
 * `_`, so a remote qube cannot send terminal escape sequences.
 */
export function replaceUnsafeBytes<T extends Uint8Array>(buf: T): T {
  for (let i = 0; i < buf.length; i++) {
    const c = buf[i] as number;
    if ((c < 0x20 || c > 0x7e) && c !== 0x09 && c !== 0x0a && c !== 0x0d && c !== 0x08 && c !== 0x07) buf[i] = 0x5f;
  }
  return buf;
}
