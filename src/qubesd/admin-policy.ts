/**
 * The default admin policy, generated from the Admin API's method table as
 * the reference's qubes-rpc-policy/generate-admin-policy does: one
 * `!include-service METHOD * include/admin-SCOPE-(ro|rwx)` line per method
 * (rwx when it writes or executes), the four include files (the ro ones
 * include the rwx ones; all otherwise empty), and the GetAll denial for
 * qubes (GetAll cannot be limited per property). The texts are our own.
 */
import { methods } from './admin-api.js';

/** File name → content, relative to a policy directory. */
export function adminPolicyFiles(): Map<string, string> {
  const files = new Map<string, string>();
  let main =
    '## Admin API methods, one line each, generated from qubesd\'s method table\n' +
    '## (src/qubesd/admin-policy.ts). Grant a management qube access in the\n' +
    '## include files, always redirected to dom0, for example in\n' +
    '## include/admin-local-rwx:\n' +
    '##   mgmt @tag:created-by-mgmt allow target=dom0\n' +
    '## and in include/admin-global-ro:\n' +
    '##   mgmt @adminvm allow target=dom0\n' +
    '##   mgmt @tag:created-by-mgmt allow target=dom0\n\n';
  for (const m of methods()) {
    if (!m.name.startsWith('admin.')) continue;
    main += `!include-service ${m.name} * include/admin-${m.scope}-${m.write || m.execute ? 'rwx' : 'ro'}\n`;
  }
  files.set('90-admin-default.policy', main);
  files.set(
    '91-admin-default-deny.policy',
    '## GetAll returns every property at once, so it cannot be granted per\n' +
      '## property: qubes are denied it (qvm-ls and qvm-prefs then ask one\n' +
      '## property at a time).\n\n' +
      'admin.vm.property.GetAll * @anyvm @anyvm   deny notify=no\n' +
      'admin.vm.property.GetAll * @anyvm @adminvm deny notify=no\n\n' +
      'admin.property.GetAll    * @anyvm @anyvm   deny notify=no\n' +
      'admin.property.GetAll    * @anyvm @adminvm deny notify=no\n',
  );
  for (const scope of ['local', 'global']) {
    const what = scope === 'local' ? 'one qube (the target)' : 'the whole system or its list of qubes';
    files.set(`include/admin-${scope}-rwx`, `## Admin API methods that change or run ${what}.\n## Lines here: SOURCE TARGET allow target=dom0\n`);
    files.set(`include/admin-${scope}-ro`, `## Admin API methods that read ${what}.\n## Lines here: SOURCE TARGET allow target=dom0\n\n!include include/admin-${scope}-rwx\n`);
  }
  return files;
}
