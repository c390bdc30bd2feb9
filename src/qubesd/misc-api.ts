/**
 * qubesd.misc.sock (qubes-core-admin qubes/api/misc.py): calls from qubes
 * that are not the Admin API, reached through /etc/qubes-rpc scripts.
 *
 * The reference reads the requested features from the qube's QubesDB
 * (`/features-request/*`, `/qubes-tools/*`). There is no QubesDB here: the
 * qube sends them as the payload instead, one `KEY=VALUE` per line (our
 * difference, documented in docs/QUBESD.md). Values are checked against the
 * reference's safe sets, then the core-features rules apply
 * (qubes/ext/core_features.py): a qube without a template records what its
 * tools support; a template-based qube's requests are ignored, as its
 * template's count.
 */
import { ProtocolError } from './errors.js';
import { defineMethod, type Call, type MethodSpec, type MethodTable } from './admin-api.js';

const SAFE_REQUEST = /^[A-Za-z0-9\-.,_= ]*$/;
const SAFE_TOOLS = /^[A-Za-z0-9]*$/;
const TOOLS_KEYS = ['qrexec', 'gui', 'gui-emulated', 'default-user', 'os'];
/** Features a qube's tools may announce (core_features.py and the supported-* extensions). */
const ACCEPTED = /^(qrexec|gui|gui-emulated|gui-agent|vmexec|os|os-distribution|os-distribution-like|os-version|os-eol|default-user|supported-service\..+|supported-feature\..+|supported-rpc\..+)$/;

function parseRequests(c: Call, safe: RegExp): Map<string, string> {
  const out = new Map<string, string>();
  for (const b of c.payload) if (b > 0x7f) throw new ProtocolError('Value outside safe set');
  for (const line of c.payload.toString('latin1').split('\n')) {
    if (line === '') continue;
    const eq = line.indexOf('=');
    if (eq <= 0) throw new ProtocolError('Feature request is not KEY=VALUE');
    const key = line.slice(0, eq);
    const value = line.slice(eq + 1);
    if (!/^[A-Za-z0-9_.-]+$/.test(key)) throw new ProtocolError('feature name contains illegal characters');
    if (!safe.test(value)) throw new ProtocolError(`Value outside safe set: ${safe === SAFE_TOOLS ? 'letters and digits' : "letters, digits and -.,_= "}`);
    out.set(key, value);
  }
  return out;
}

function apply(c: Call, requested: Map<string, string>): null {
  const q = c.src;
  c.registry.fire(q, 'features-request', [['untrusted_features', JSON.stringify(Object.fromEntries(requested))]]);
  if (q.has('template') || q.klass === 'AdminVM') return null;
  for (const [k, v] of requested) {
    if (!ACCEPTED.test(k)) continue;
    if (q.features.get(k) !== v) c.registry.setFeature(q, k, v);
  }
  return null;
}

export function miscMethods(): MethodTable {
  const t = new Map<string, MethodSpec>();
  defineMethod(t, 'qubes.FeaturesRequest', { dest: true, arg: false, payload: null, scope: 'local', write: true }, (c) =>
    apply(c, parseRequests(c, SAFE_REQUEST)),
  );
  defineMethod(t, 'qubes.NotifyTools', { dest: true, arg: false, payload: null, scope: 'local', write: true }, (c) => {
    const req = parseRequests(c, SAFE_TOOLS);
    for (const k of req.keys()) if (!TOOLS_KEYS.includes(k)) req.delete(k);
    return apply(c, req);
  });
  defineMethod(t, 'qubes.NotifyUpdates', { dest: true, arg: false, payload: true, scope: 'local', write: true }, (c) => {
    const raw = c.payload.toString('latin1').trim();
    if (!/^[0-9]+$/.test(raw)) throw new ProtocolError('Update count is not a digit');
    const q = c.src;
    if (q.get('updateable') === true) {
      const now = new Date().toISOString().replace('T', ' ').slice(0, 19);
      const had = q.features.get('updates-available');
      const avail = Number(raw) > 0;
      if (had && had !== '' && !avail) c.registry.setFeature(q, 'last-update', now);
      c.registry.setFeature(q, 'updates-available', avail ? '1' : '');
      c.registry.setFeature(q, 'last-updates-check', now);
    }
    return null;
  });
  return t;
}
