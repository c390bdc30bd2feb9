/**
 * The demo system `npm start` creates at the first start of an empty data
 * dir, through the Admin API as dom0 (the calls qvm-create, qvm-prefs and
 * qubes-prefs make): the default template (made from the host's own /usr and
 * /etc by the bwrap runtime), `sys-net` (provides_network, autostart), `work`
 * (autostart) and `personal` behind sys-net, `vault` without network,
 * `default-dvm`, the disposable template, and `sys-gui` (autostart), the GUI
 * domain of every other qube (default_guivm), whose web app the host
 * serves on 127.0.0.1 (src/host/gui.ts), and `sys-audio` (autostart), the
 * audio domain of every other qube (default_audiovm, docs/AUDIO.md). The policy directory gets the
 * default policy of examples/policy.d and a 30-user.policy of the demo's
 * own rules: every call to vault asks.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { QubesdCaller } from '../daemon/index.js';
import type { Registry } from '../qubesd/registry.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
/** The default policy shipped in the repository: the qrexec defaults, then the services' (policy/). */
export const DEFAULT_POLICY_DIRS = [path.join(ROOT, 'examples', 'policy.d'), path.join(ROOT, 'policy')];

/** The demo's own rules (they come before the defaults, 90-*). */
export const DEMO_USER_POLICY = `# Your own rules: they come before the defaults (90-*.policy).
# The policy daemon reloads this directory when a file changes.
#
# service         arg  source   target  action

# Every call to vault asks first, whatever the service.
*                 *    @anyvm   vault   ask

# Files go from work to personal after a confirmation (as the default).
qubes.Filecopy    *    work     personal  ask
`;

/** The demo's rule for the tour without qvm-copy (src/host/tour.ts). */
const VMEXEC_RULE = `# work may run cat (the built-in qubes.VMExec) in personal after a confirmation.
qubes.VMExec      +cat work     personal  ask
`;

/** The default template's name: the host's distribution (`debian-12`), as Qubes names its templates. */
export function defaultTemplateName(osRelease = '/etc/os-release'): string {
  try {
    const t = fs.readFileSync(osRelease, 'utf8');
    const id = /^ID="?([a-z0-9]+)"?$/m.exec(t)?.[1];
    const ver = /^VERSION_ID="?([0-9]+)/m.exec(t)?.[1];
    if (id && ver) return `${id}-${ver}`;
    if (id) return id;
  } catch {
    // no os-release
  }
  return 'host-template';
}

export const DEMO_QUBES = ['sys-net', 'sys-gui', 'work', 'personal', 'vault', 'default-dvm'] as const;

/** Creates the demo system if the registry holds no qube but dom0; returns whether it did. */
export async function ensureDemoSystem(registry: Registry, call: QubesdCaller, policyDir: string): Promise<boolean> {
  ensureDemoPolicy(policyDir);
  if (registry.list().some((q) => q.klass !== 'AdminVM')) return false;
  const tpl = defaultTemplateName();
  const run = async (method: string, dest: string, arg = '', payload = ''): Promise<void> => {
    await call(method, dest, { arg, payload: Buffer.from(payload) });
  };
  const create = (klass: string, name: string, label: string): Promise<void> => run(`admin.vm.Create.${klass}`, 'dom0', '', `name=${name} label=${label}`);
  const set = (vm: string, prop: string, value: string): Promise<void> => run('admin.vm.property.Set', vm, prop, value);
  const pref = (prop: string, value: string): Promise<void> => run('admin.property.Set', 'dom0', prop, value);

  await create('TemplateVM', tpl, 'black');
  await pref('default_template', tpl);
  await create('AppVM', 'sys-net', 'red');
  await set('sys-net', 'provides_network', 'True');
  await set('sys-net', 'netvm', '');
  await set('sys-net', 'autostart', 'True');
  await pref('default_netvm', 'sys-net');
  await pref('updatevm', 'sys-net');
  await pref('clockvm', 'sys-net');
  // the GUI domain: its own GUI is dom0's; every other qube's is sys-gui, and so
  // is that of the qubes it creates (policy/50-gui.policy says what it may do)
  await create('AppVM', 'sys-gui', 'black');
  await set('sys-gui', 'guivm', 'dom0');
  await set('sys-gui', 'autostart', 'True');
  await run('admin.vm.feature.Set', 'sys-gui', 'set-created-guivm', 'sys-gui');
  await pref('default_guivm', 'sys-gui');
  // the audio domain: every other qube plays and records through it (examples/policy.d/50-audio.policy)
  await create('AppVM', 'sys-audio', 'red');
  await set('sys-audio', 'netvm', '');
  await set('sys-audio', 'audiovm', '');
  await set('sys-audio', 'autostart', 'True');
  await pref('default_audiovm', 'sys-audio');
  await create('AppVM', 'work', 'blue');
  await set('work', 'autostart', 'True');
  await create('AppVM', 'personal', 'yellow');
  await create('AppVM', 'vault', 'black');
  await set('vault', 'netvm', '');
  await create('AppVM', 'default-dvm', 'red');
  await set('default-dvm', 'template_for_dispvms', 'True');
  await pref('default_dispvm', 'default-dvm');
  return true;
}

/** The policy directory at first start: the shipped defaults, and the demo's 30-user.policy. Never overwrites. */
export function ensureDemoPolicy(policyDir: string): void {
  fs.mkdirSync(policyDir, { recursive: true });
  if (fs.readdirSync(policyDir).length > 0) return;
  for (const dir of DEFAULT_POLICY_DIRS) {
    if (!fs.existsSync(dir)) continue;
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      // the example owner's rules and the 4.0 compatibility include are not the demo's
      if (e.name === '30-user.policy' || e.name === '35-compat.policy') continue;
      if (e.isDirectory() ? e.name !== 'include' : !e.name.endsWith('.policy')) continue;
      fs.cpSync(path.join(dir, e.name), path.join(policyDir, e.name), { recursive: true });
    }
  }
  const withCopy = fs.existsSync(path.join(ROOT, 'bin', 'qvm-copy-to-vm'));
  fs.writeFileSync(path.join(policyDir, '30-user.policy'), DEMO_USER_POLICY + (withCopy ? '' : VMEXEC_RULE));
}

/** The shipped services policy (policy/): every host gets it, demo system or not. */
export const SERVICES_POLICY = '80-services-default.policy';
/** In the policy directory: the shipped files installed there once (the loader skips dot files). */
export const INSTALLED_DEFAULTS_FILE = '.qrexec-ts-installed-defaults';

/**
 * Installs policy/80-services-default.policy into `policyDir` unless it was
 * installed there before: a data dir made by an older version gets it at its
 * next start, but a file the user edited is never overwritten and one the
 * user removed is not put back (the names installed are recorded in
 * {@link INSTALLED_DEFAULTS_FILE}). Returns whether it installed it.
 */
export function ensureServicesPolicy(policyDir: string): boolean {
  const record = path.join(policyDir, INSTALLED_DEFAULTS_FILE);
  let done: string[] = [];
  try {
    done = fs.readFileSync(record, 'utf8').split('\n').filter((l) => l !== '');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  if (done.includes(SERVICES_POLICY)) return false;
  const dst = path.join(policyDir, SERVICES_POLICY);
  let installed = false;
  if (!fs.existsSync(dst)) {
    fs.mkdirSync(policyDir, { recursive: true });
    const tmp = `${dst}.tmp-${process.pid}`;
    fs.copyFileSync(path.join(ROOT, 'policy', SERVICES_POLICY), tmp);
    fs.renameSync(tmp, dst);
    installed = true;
  }
  fs.writeFileSync(record, [...done, SERVICES_POLICY].map((l) => `${l}\n`).join(''));
  return installed;
}
