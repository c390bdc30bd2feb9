/**
 * Validation of names qubesd accepts, as the reference does
 * (qubes/vm/__init__.py validate_name and Tags.validate_tag,
 * qubes/api/__init__.py decode_vm, qubes/utils.py validate_label_name).
 */
import { ProtocolError, QubesInvalidLabelError, QubesInvalidLabelValueError, QubesInvalidTagError, QubesValueError, QubesVMInvalidUUIDError, QubesPropertyValueError } from './errors.js';

/** The qube classes (admin.vmclass.List order: sorted). */
export const QUBE_CLASSES = ['AdminVM', 'AppVM', 'DispVM', 'RemoteVM', 'StandaloneVM', 'TemplateVM'] as const;
export type QubeClass = (typeof QUBE_CLASSES)[number];

export function isQubeClass(s: string): s is QubeClass {
  return (QUBE_CLASSES as readonly string[]).includes(s);
}

/**
 * A qube name as Qubes allows it.
 * @param prop when the name is a property's value, the message names the property (QubesPropertyValueError).
 * @throws {@link QubesValueError} / {@link QubesPropertyValueError}
 */
export function validateName(value: string, prop?: string): void {
  const fail = (generic: string, perProp: string): never => {
    if (prop !== undefined) throw new QubesPropertyValueError(perProp);
    throw new QubesValueError(generic);
  };
  if (value.length > 31) fail('VM name must be shorter than 32 characters', `${prop} value must be shorter than 32 characters`);
  if (/^[0-9_.-]/.test(value)) {
    fail('VM name cannot start with hyphen, underscore, dot or numbers', `${prop} cannot start with hyphen, underscore, dot or numbers`);
  }
  if (!/^[a-zA-Z][a-zA-Z0-9_.-]*$/.test(value)) fail('VM name contains illegal characters', `${prop} value contains illegal characters`);
  if (value === 'Domain-0') throw new QubesValueError("VM name cannot be 'Domain-0'");
  if (value === 'none' || value === 'default') throw new QubesValueError("VM name cannot be 'none' nor 'default'");
  if (value.endsWith('-dm')) throw new QubesValueError('VM name cannot end with -dm');
}

const UUID_RE = /^uuid:[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]*$/;

/** A qube reference on the wire: `uuid:<uuid>` or a name (decode_vm). Returns the uuid or the name. */
export function parseQubeRef(raw: Buffer): { uuid: string } | { name: string } {
  for (const b of raw) if (b > 0x7f) throw new ProtocolError('non-ASCII qube reference');
  const s = raw.toString('latin1');
  if (s.startsWith('uuid:')) {
    if (raw.length !== 41 || !UUID_RE.test(s)) throw new QubesVMInvalidUUIDError(s.slice(5));
    return { uuid: s.slice(5) };
  }
  validateName(s);
  return { name: s };
}

/** A tag (Tags.validate_tag). @throws {@link QubesInvalidTagError} */
export function validateTag(tag: string): void {
  if (tag === '') throw new QubesInvalidTagError('tag cannot be empty');
  if (!/^[A-Za-z0-9_-]+$/.test(tag)) throw new QubesInvalidTagError('disallowed characters');
}

/** A label name (qubes/utils.py validate_label_name). @throws QubesInvalidLabelError */
export function validateLabelName(label: string, creation = false): void {
  if (label === '') throw new QubesInvalidLabelError('Label name must be set');
  if (creation && /^[0-9]+$/.test(label)) throw new QubesInvalidLabelError('Label must not be a digit');
  if (!/^[A-Za-z0-9_.-]+$/.test(label)) {
    throw new QubesInvalidLabelError('Label must be in safe set: abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.');
  }
}

/** A label colour `0xRRGGBB` (validate_label_value); returns it trimmed. @throws QubesInvalidLabelValueError */
export function validateLabelColor(raw: Buffer): string {
  if (raw.length === 0) throw new QubesInvalidLabelValueError('Label value must be set');
  for (const b of raw) if (b > 0x7f) throw new QubesInvalidLabelValueError('Label value must be encoded in ASCII');
  const v = raw.toString('latin1').trim();
  if (v.length !== 8) throw new QubesInvalidLabelValueError('Label value must have length of 8');
  if (!v.startsWith('0x')) throw new QubesInvalidLabelValueError('Label value must start with: 0x');
  if (!/^[0-9a-fA-F]{6}$/.test(v.slice(2))) {
    throw new QubesInvalidLabelValueError('Label value must only contain hexadecimal digits after prefix: 0123456789abcdefABCDEF');
  }
  return v;
}

/** A feature name for Set (admin.vm.feature.Set). */
export function validateFeatureName(name: string): void {
  if (!/^[a-zA-Z0-9_.-]+$/.test(name)) throw new ProtocolError('feature name contains illegal characters');
}

/** Printable as Python's string.printable (str property values). */
export function isPrintable(s: string): boolean {
  return /^[\x20-\x7e\t\n\r\x0b\x0c]*$/.test(s);
}
