/**
 * Policy engine benchmark (issue #2). Prints one JSON object as its last line:
 * {"load_ms_1k","load_ms_10k","load_ms_100k","decide_us","decide_us_ask","decide_us_10k",
 *  "baseline_us_json_parse"}
 *
 * - load_ms_N: median of 5 loads (from disk, fresh each time) of a synthetic
 *   valid policy of N rules over ~100 services, in 10 files.
 * - decide_us: µs per decision, median of 5 batches of 10,000 mixed requests
 *   (allow/deny/ask/@default/@dispvm, matching and unmatched services) on a
 *   realistic policy: a Qubes-style default set plus the Admin API
 *   !include-service lines, and 1,000 user rules.
 * - decide_us_ask: the same for ask-only requests.
 * - decide_us_10k: the mixed set on a 10k-rule policy.
 * - baseline_us_json_parse: JSON.parse of one request line, same run, for scale.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { decide, parseSystemInfo, type Policy, type PolicyRequest, type SystemInfo } from '../src/policy/index.js';
import { loadPolicyFromDisk } from '../src/policy-files/disk.js';

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
};
const round = (x: number, d = 3): number => Math.round(x * 10 ** d) / 10 ** d;

// --- a system of 40 qubes -------------------------------------------------
const QUBES: string[] = ['dom0', 'sys-net', 'sys-firewall', 'sys-usb', 'sys-gui', 'vault', 'work', 'personal', 'untrusted', 'banking'];
for (let i = 0; QUBES.length < 36; i++) QUBES.push(`app${i}`);
QUBES.push('default-dvm', 'whonix-dvm', 'fedora-41', 'debian-12');
function systemInfo(): SystemInfo {
  const domains: Record<string, unknown> = {};
  QUBES.forEach((name, i) => {
    const tmpl = name === 'fedora-41' || name === 'debian-12';
    domains[name] = {
      tags: i % 3 === 0 ? ['work'] : i % 3 === 1 ? ['personal', 'audio-vm'] : [],
      type: name === 'dom0' ? 'AdminVM' : tmpl ? 'TemplateVM' : 'AppVM',
      template_for_dispvms: name.endsWith('-dvm'),
      default_dispvm: name === 'dom0' || tmpl ? null : 'default-dvm',
      icon: 'appvm-red', label: 'red', guivm: name === 'dom0' ? null : 'dom0',
      relayvm: null, transport_rpc: null, internal: null,
      power_state: i % 2 ? 'Running' : 'Halted',
      uuid: `00000000-0000-0000-0000-${String(i).padStart(12, '0')}`,
    };
  });
  return parseSystemInfo({ domains });
}

// --- policies --------------------------------------------------------------
const DEFAULT_SERVICES = [
  'qubes.Filecopy', 'qubes.OpenInVM', 'qubes.OpenURL', 'qubes.VMShell', 'qubes.GetDate', 'qubes.GetImageRGBA',
  'qubes.GetRandomizedTime', 'qubes.NotifyTools', 'qubes.NotifyUpdates', 'qubes.StartApp', 'qubes.UpdatesProxy',
  'qubes.ConnectTCP', 'qubes.ClipboardPaste', 'qubes.Gpg', 'qubes.GpgImportKey', 'qubes.USB', 'qubes.InputMouse',
  'qubes.InputKeyboard', 'qubes.InputTablet', 'qubes.PdfConvert', 'qubes.WaitForSession', 'qubes.SyncAppMenus',
  'u2f.Authenticate', 'u2f.Register', 'policy.RegisterArgument', 'qubes.AuthorizedKeys', 'qubes.Backup',
  'qubes.RestoreById', 'qubes.SetDateTime', 'qubes.SuspendPre', 'qubes.SuspendPost', 'qubes.VMExec', 'qubes.VMExecGUI',
  'qubes.PostInstall', 'qubes.GetAppmenus', 'qubes.ResizeDisk', 'qubes.SelectFile', 'qubes.SelectDirectory',
  'qubes.ShowInTerminal', 'qubes.TemplateSearch',
];
const ADMIN = [
  'admin.vm.List', 'admin.vm.property.Get', 'admin.vm.property.GetAll', 'admin.vm.property.Set', 'admin.vm.property.Reset',
  'admin.vm.tag.List', 'admin.vm.tag.Get', 'admin.vm.tag.Set', 'admin.vm.tag.Remove', 'admin.vm.feature.List',
  'admin.vm.feature.Get', 'admin.vm.feature.Set', 'admin.vm.feature.Remove', 'admin.vm.Start', 'admin.vm.Shutdown',
  'admin.vm.Pause', 'admin.vm.Unpause', 'admin.vm.Kill', 'admin.vm.Create.AppVM', 'admin.vm.Remove', 'admin.Events',
  'admin.vm.device.pci.List', 'admin.vm.device.usb.List', 'admin.vm.volume.List', 'admin.vm.volume.Info',
  'admin.label.List', 'admin.property.Get', 'admin.property.List', 'admin.pool.List', 'admin.backup.Info',
];

function defaultPolicy(): Record<string, string> {
  const main: string[] = ['# Qubes-style defaults, written for this benchmark'];
  DEFAULT_SERVICES.forEach((svc, i) => {
    if (i % 4 === 0) main.push(`${svc} * @anyvm @dispvm allow`);
    if (i % 4 === 1) main.push(`${svc} * @anyvm @anyvm ask default_target=@dispvm`);
    if (i % 4 === 2) main.push(`${svc} * @anyvm @adminvm allow user=root`);
    if (i % 4 === 3) main.push(`${svc} * @tag:work @default allow target=vault`);
    main.push(`${svc} * @anyvm @anyvm deny`);
  });
  const admin: string[] = [];
  for (const m of ADMIN) admin.push(`!include-service ${m} * include/admin-${m.includes('.Set') || m.includes('Remove') || m.includes('Create') ? 'rwx' : 'ro'}`);
  return {
    '50-config.policy': main.join('\n') + '\n',
    '90-admin-default.policy': admin.join('\n') + '\n',
    'include/admin-ro': '$anyvm $adminvm allow,target=dom0\nsys-gui $adminvm allow,target=dom0\n',
    'include/admin-rwx': 'sys-gui $adminvm allow,target=dom0\n',
    '99-deny.policy': '* * @anyvm @anyvm deny\n',
  };
}

const ACTIONS = ['allow', 'deny', 'ask', 'ask default_target=vault', 'allow target=vault', 'deny notify=no'];
function userRules(n: number, services: number, seed: number): string[] {
  const out: string[] = [];
  let x = seed;
  const rnd = (k: number): number => {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    return x % k;
  };
  for (let i = 0; i < n; i++) {
    const svc = `user.Service${rnd(services)}`;
    const arg = ['*', '+', `+arg${rnd(5)}`][rnd(3)];
    const src = ['@anyvm', '@tag:work', QUBES[1 + rnd(QUBES.length - 1)], '@type:AppVM'][rnd(4)];
    const tgt = ['@anyvm', QUBES[1 + rnd(QUBES.length - 1)], '@dispvm', '@tag:personal', '@adminvm'][rnd(5)];
    out.push(`${svc} ${arg} ${src} ${tgt} ${ACTIONS[rnd(ACTIONS.length)]}`);
  }
  return out;
}

function writeTree(dir: string, files: Record<string, string>): void {
  fs.rmSync(dir, { recursive: true, force: true });
  for (const [name, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    fs.writeFileSync(path.join(dir, name), text);
  }
}

function syntheticFiles(n: number): Record<string, string> {
  const rules = userRules(n, 100, 42);
  const files: Record<string, string> = {};
  for (let f = 0; f < 10; f++) files[`${10 + f}-user.policy`] = rules.slice((f * n) / 10, ((f + 1) * n) / 10).join('\n') + '\n';
  return files;
}

function loadMs(dir: string): number {
  const times: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t0 = process.hrtime.bigint();
    loadPolicyFromDisk({ policyDirs: [dir] });
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return round(median(times), 2);
}

function requests(kind: 'mixed' | 'ask', count: number): PolicyRequest[] {
  const out: PolicyRequest[] = [];
  let x = 7;
  const rnd = (k: number): number => {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    return x % k;
  };
  const sources = QUBES.filter((q) => q !== 'dom0');
  for (let i = 0; i < count; i++) {
    const source = sources[rnd(sources.length)] as string;
    if (kind === 'ask') {
      const svc = DEFAULT_SERVICES[1 + 4 * rnd(10)] as string; // the "ask" services
      out.push({ source, intendedTarget: QUBES[rnd(QUBES.length)] as string, serviceAndArg: svc });
      continue;
    }
    const svcOf = (k: number): string => DEFAULT_SERVICES[4 * rnd(10) + k] as string;
    const dvm = QUBES[QUBES.length - 3 - rnd(2)] as string;
    const [svc, target] = [
      (): [string, string] => [svcOf(0), '@dispvm'], // allow to a disposable
      (): [string, string] => [svcOf(0), '@dispvm:' + dvm], // explicit disposable template: deny
      (): [string, string] => [svcOf(1), QUBES[rnd(QUBES.length)] as string], // ask
      (): [string, string] => [svcOf(2), 'dom0'], // allow to dom0
      (): [string, string] => [svcOf(3), ''], // @default, redirected for @tag:work
      (): [string, string] => [ADMIN[rnd(ADMIN.length)] + '+' + QUBES[rnd(QUBES.length)], '@adminvm'], // admin API
      (): [string, string] => [`user.Service${rnd(120)}+arg${rnd(5)}`, QUBES[rnd(QUBES.length)] as string], // user rules, some unmatched
      (): [string, string] => [`no.Such${rnd(1000)}`, QUBES[rnd(QUBES.length)] as string], // unknown service
    ][i % 8]!();
    out.push({ source, intendedTarget: target, serviceAndArg: svc });
  }
  return out;
}

function decideUs(policy: Policy, info: SystemInfo, reqs: PolicyRequest[]): number {
  for (const r of reqs) decide(policy, r, info); // warm-up
  const times: number[] = [];
  for (let b = 0; b < 5; b++) {
    const t0 = process.hrtime.bigint();
    for (const r of reqs) decide(policy, r, info);
    times.push(Number(process.hrtime.bigint() - t0) / 1e3 / reqs.length);
  }
  return round(median(times));
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-policy-'));
try {
  const info = systemInfo();
  const result: Record<string, number> = {};
  for (const [key, n] of [['load_ms_1k', 1_000], ['load_ms_10k', 10_000], ['load_ms_100k', 100_000]] as const) {
    const dir = path.join(tmp, key);
    writeTree(dir, syntheticFiles(n));
    result[key] = loadMs(dir);
    console.error(`${key}: ${result[key]} ms`);
  }
  const realistic = path.join(tmp, 'realistic');
  writeTree(realistic, { ...defaultPolicy(), '30-user.policy': userRules(1000, 100, 1).join('\n') + '\n' });
  const p = loadPolicyFromDisk({ policyDirs: [realistic] });
  const mixed = requests('mixed', 10_000);
  result['decide_us'] = decideUs(p, info, mixed);
  result['decide_us_ask'] = decideUs(p, info, requests('ask', 10_000));
  const big = path.join(tmp, 'big');
  writeTree(big, { ...defaultPolicy(), ...syntheticFiles(10_000) });
  result['decide_us_10k'] = decideUs(loadPolicyFromDisk({ policyDirs: [big] }), info, mixed);
  const lines = mixed.map((r) => JSON.stringify(r));
  const t0 = process.hrtime.bigint();
  for (const l of lines) JSON.parse(l);
  result['baseline_us_json_parse'] = round(Number(process.hrtime.bigint() - t0) / 1e3 / lines.length);
  const counts = { allow: 0, ask: 0, deny: 0 };
  for (const r of mixed) counts[decide(p, r, info).result]++;
  console.error(`mixed request outcomes: ${JSON.stringify(counts)}; rules in realistic policy: ${p.rules.length}`);
  console.log(JSON.stringify(result));
} finally {
  fs.rmSync(tmp, { recursive: true, force: true });
}
