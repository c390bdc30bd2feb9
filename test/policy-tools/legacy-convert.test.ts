/**
 * qrexec-legacy-convert: the converted policy decides every request exactly
 * as the 4.0 files read through !compat-4.0 do (only rule labels differ).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import fc from 'fast-check';
import {
  convertLegacy,
  decide,
  decisionToJson,
  loadRules,
  memorySource,
  parseSystemInfo,
  Policy,
  PolicySyntaxError,
  type PolicyRequest,
  type SystemInfo,
} from '../../src/policy/index.js';
import { diskSource } from '../../src/policy-files/disk.js';
import { INFO } from '../policy/helpers.js';
import { corpusDir } from '../conformance/corpus.js';

const ROOT = path.resolve(import.meta.dirname, '../../..');

/** A decision without the rule label (which must differ: the rules moved). */
function outcome(p: Policy, req: PolicyRequest, info: SystemInfo): string {
  const j = decisionToJson(decide(p, req, info), info) as Record<string, unknown>;
  delete j['rule'];
  if (Array.isArray(j['targets_for_ask'])) j['targets_for_ask'] = [...(j['targets_for_ask'] as string[])].sort();
  return JSON.stringify(j);
}

/** Every source x target x service worth asking about in a system. */
function requestsFor(info: SystemInfo, services: Iterable<string>): PolicyRequest[] {
  const targets = ['', '@default', '@dispvm', '@adminvm', 'nosuchqube'];
  for (const n of info.names) {
    targets.push(n);
    if (info.domains.get(n)?.template_for_dispvms) targets.push('@dispvm:' + n);
  }
  const out: PolicyRequest[] = [];
  for (const serviceAndArg of services) {
    for (const source of info.names) {
      for (const intendedTarget of targets) out.push({ source, intendedTarget, serviceAndArg });
    }
  }
  return out;
}

/** Services named by 4.0 file names, plus other arguments of them. */
function servicesOf(names: Iterable<string>): Set<string> {
  const s = new Set<string>(['other.Service']);
  for (const n of names) {
    const svc = n.includes('+') ? n.slice(0, n.indexOf('+')) : n;
    s.add(n);
    s.add(svc);
    s.add(svc + '+');
    s.add(svc + '+other');
  }
  return s;
}

function copyDir(from: string, to: string): void {
  fs.cpSync(from, to, { recursive: true, verbatimSymlinks: true });
}

test('equivalence on every conformance case with a 4.0 directory', { timeout: 120_000 }, (t) => {
  const CONFORMANCE = corpusDir();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'legacy-conv-'));
  let compared = 0;
  let cases = 0;
  let failing = 0;
  try {
    for (const name of fs.readdirSync(CONFORMANCE).sort()) {
      const dir = path.join(CONFORMANCE, name);
      const legacyDir = path.join(dir, 'legacy');
      if (!fs.existsSync(legacyDir)) continue;
      const info = parseSystemInfo(JSON.parse(fs.readFileSync(path.join(dir, 'system-info.json'), 'utf8')));
      const opts = { policyDirs: [path.join(dir, 'policy.d')], legacyDir };
      let original: Policy | null = null;
      let loadError: PolicySyntaxError | null = null;
      try {
        original = new Policy(loadRules(diskSource, opts));
      } catch (e) {
        if (!(e instanceof PolicySyntaxError)) throw e;
        loadError = e;
      }
      let converted;
      try {
        converted = convertLegacy(diskSource, { legacyDir });
      } catch (e) {
        if (!(e instanceof PolicySyntaxError)) throw e;
        // a broken 4.0 file: the whole policy must have failed at that same place
        assert.ok(loadError, `${name}: converter fails (${e.message}) but the policy loads`);
        if (loadError.file.startsWith(legacyDir)) {
          assert.equal(`${e.file}:${e.line}`, `${loadError.file}:${loadError.line}`, name);
        }
        failing++;
        continue;
      }
      // The same policy directory with each !compat-4.0 line replaced by the conversion.
      const work = path.join(tmp, name);
      copyDir(path.join(dir, 'policy.d'), work);
      let replaced = 0;
      const walk = (d: string): void => {
        for (const e of fs.readdirSync(d, { withFileTypes: true })) {
          const p = path.join(d, e.name);
          if (e.isDirectory()) walk(p);
          else if (e.isFile()) {
            const text = fs.readFileSync(p, 'latin1');
            const lines = text.split(/\r\n|\r|\n/);
            if (!lines.some((l) => l.trim() === '!compat-4.0')) continue;
            fs.writeFileSync(p, lines.map((l) => (l.trim() === '!compat-4.0' ? converted.text : l)).join('\n'), 'latin1');
            replaced++;
          }
        }
      };
      walk(work);
      let after: Policy | null = null;
      try {
        after = new Policy(loadRules(diskSource, { policyDirs: [work], legacyDir: path.join(tmp, 'no-legacy') }));
      } catch (e) {
        if (!(e instanceof PolicySyntaxError)) throw e;
        // elsewhere broken: it must be broken both ways
        assert.ok(loadError, `${name}: converted policy does not load: ${e.message}`);
        continue;
      }
      if (original === null) {
        // the original failed outside the 4.0 files (e.g. a compat line in a bad place)
        assert.ok(loadError && (!loadError.file.startsWith(legacyDir) || replaced === 0), `${name}: only the original fails`);
        continue;
      }
      cases++;
      const queries = fs
        .readFileSync(path.join(dir, 'queries.jsonl'), 'utf8')
        .split('\n')
        .filter((l) => l.trim() !== '')
        .map((l) => JSON.parse(l) as { service_and_arg: string });
      const services = servicesOf(fs.readdirSync(legacyDir));
      for (const q of queries) services.add(q.service_and_arg);
      for (const req of requestsFor(info, services)) {
        assert.equal(outcome(after, req, info), outcome(original, req, info), `${name}: ${JSON.stringify(req)}`);
        compared++;
      }
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  assert.ok(cases >= 20, `only ${cases} cases compared`);
  t.diagnostic(`${cases} cases, ${compared} requests equal; ${failing} cases with broken 4.0 files fail alike`);
});

// Property: random 4.0 directories and requests.
const QUBES = ['work', 'personal', 'vault', 'default-dvm', 'sys-usb', 'fedora-41', 'dom0'];
const OLD_SOURCES = ['$anyvm', '@anyvm', '$adminvm', '$tag:trusted', '$type:AppVM', '*', ...QUBES];
const OLD_TARGETS = [...OLD_SOURCES, '$default', '$dispvm', '$dispvm:default-dvm', '@dispvm:@tag:dvm', 'uuid:33333333-3333-3333-3333-333333333333'];
const OLD_ACTIONS = ['allow', 'deny', 'ask', 'allow,target=vault', 'ask,default_target=vault', 'allow,user=root', 'ask,target=$dispvm', 'deny,notify=no', 'allow autostart=no', 'allow,target=$adminvm'];
const oldLine = fc
  .record({ src: fc.constantFrom(...OLD_SOURCES), tgt: fc.constantFrom(...OLD_TARGETS), action: fc.constantFrom(...OLD_ACTIONS) })
  .map((r) => `${r.src} ${r.tgt} ${r.action}`)
  .filter((l) => !/ [$@]default (allow|allow autostart=no|allow,user=root)$/.test(l));
const fileLines = fc.array(fc.oneof(oldLine, fc.constant('# a comment'), fc.constant('$include:include/common')), { maxLength: 6 });
const FILE_NAMES = ['q.A', 'q.A+x', 'q.A+y', 'q.B', 'q.B+x', 'q.C+', 'q.D.rpmsave', '.hidden'];

test('property: converted policy decides like !compat-4.0', () => {
  fc.assert(
    fc.property(
      fc.dictionary(fc.constantFrom(...FILE_NAMES), fileLines, { minKeys: 1 }),
      fc.array(oldLine, { maxLength: 3 }),
      fc.constantFrom('', 'q.A * @anyvm @anyvm ask\n* * @anyvm @anyvm deny notify=no\n'),
      (legacy, common, after) => {
        const files = new Map<string, string>();
        for (const [n, lines] of Object.entries(legacy)) files.set('/l/' + n, lines.join('\n'));
        files.set('/l/include/common', common.join('\n'));
        files.set('/p/10-before.policy', 'q.B +x work vault allow\n');
        files.set('/p/35-compat.policy', '!compat-4.0\n');
        files.set('/p/90-after.policy', after);
        const src = memorySource(files);
        let original: Policy;
        try {
          original = new Policy(loadRules(src, { policyDirs: ['/p'], legacyDir: '/l' }));
        } catch (e) {
          // e.g. `$include:` with a bad line count; the converter must refuse alike
          assert.ok(e instanceof PolicySyntaxError);
          assert.throws(() => convertLegacy(src, { legacyDir: '/l' }), PolicySyntaxError);
          return;
        }
        const conv = convertLegacy(src, { legacyDir: '/l' });
        files.set('/p/35-compat.policy', conv.text);
        const converted = new Policy(loadRules(memorySource(files), { policyDirs: ['/p'], legacyDir: '/nowhere' }));
        for (const req of requestsFor(INFO, ['q.A', 'q.A+x', 'q.A+z', 'q.B+x', 'q.C', 'q.D'])) {
          assert.equal(outcome(converted, req, INFO), outcome(original, req, INFO), JSON.stringify(req) + '\n' + conv.text);
        }
      },
    ),
    { numRuns: 60 },
  );
});

test('output: order, $-tokens, commas, implicit denies, comments, skipped files', () => {
  const src = memorySource(
    new Map([
      ['/l/q.B', '# b\n$anyvm $anyvm ask,default_target=$dispvm\n'],
      ['/l/q.A', 'work vault allow\n'],
      ['/l/q.A+x', '$include:include/inc\n'],
      ['/l/include/inc', '# shared\n$tag:t $adminvm allow,user=root\n'],
      ['/l/q.C.rpmnew', 'work vault allow\n'],
      ['/l/bad name', 'work vault allow\n'],
    ]),
  );
  const c = convertLegacy(src, { legacyDir: '/l' });
  const body = c.text
    .split('\n')
    .filter((l) => l !== '' && !l.startsWith('# Converted') && !l.startsWith('# It decides') && !l.startsWith('# where'))
    .map((l) => l.replace(/ +/g, ' '));
  assert.deepEqual(body, [
    '# q.A+x (from /l/q.A+x)',
    '# $include:include/inc (inlined below: /l/include/inc)',
    '# shared',
    'q.A +x @tag:t @adminvm allow user=root',
    '# (end of /l/include/inc)',
    '# 4.0 denied every other call for q.A+x:',
    'q.A +x @anyvm @anyvm deny',
    'q.A +x @anyvm @adminvm deny',
    '# q.A (from /l/q.A)',
    'q.A * work vault allow',
    '# q.B (from /l/q.B)',
    '# b',
    'q.B * @anyvm @anyvm ask default_target=@dispvm',
  ]);
  assert.deepEqual(c.files, ['/l/q.A+x', '/l/q.A', '/l/q.B']);
  assert.equal(c.rules, 5);
  const only = convertLegacy(src, { legacyDir: '/l', only: ['q.B'], comments: false });
  assert.ok(!only.text.includes('q.A'));
  assert.ok(!only.text.includes('# b'));
  assert.throws(() => convertLegacy(src, { legacyDir: '/l', only: ['q.C.rpmnew'] }), /not a 4\.0 policy file/);
});

test('a broken 4.0 file is reported at its line', () => {
  const src = memorySource(new Map([['/l/q.A', 'work vault allow\nwork vault permit\n']]));
  assert.throws(() => convertLegacy(src, { legacyDir: '/l' }), (e: unknown) => {
    assert.ok(e instanceof PolicySyntaxError);
    assert.equal(e.message, '/l/q.A:2: invalid action: permit');
    return true;
  });
});

test('CLI: stdout, --output, named files, errors', () => {
  const bin = path.join(ROOT, 'bin/qrexec-legacy-convert');
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'legacy-cli-'));
  try {
    let r = spawnSync(bin, ['--legacy-dir', path.join(ROOT, 'examples/legacy')], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^qubes\.StartApp +\+firefox +@anyvm +@adminvm +deny$/m);
    const out = path.join(tmp, '35-compat.policy');
    r = spawnSync(bin, ['--output', out, path.join(ROOT, 'examples/legacy/qubes.Gpg')], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const text = fs.readFileSync(out, 'utf8');
    assert.match(text, /^qubes\.Gpg +\* +@tag:work +vault +ask default_target=vault$/m);
    assert.ok(!text.includes('StartApp'));
    const bad = path.join(tmp, 'legacy');
    fs.mkdirSync(bad);
    fs.writeFileSync(path.join(bad, 'q.Bad'), 'work\n');
    r = spawnSync(bin, ['--legacy-dir', bad], { encoding: 'utf8' });
    assert.equal(r.status, 1);
    assert.equal(r.stderr, `qrexec-legacy-convert: ${path.join(bad, 'q.Bad')}:1: wrong number of fields\n`);
    r = spawnSync(bin, ['--legacy-dir', path.join(tmp, 'nope')], { encoding: 'utf8' });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /nope does not exist/);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test('CLI: the comments name the 4.0 files as given (relative stays relative)', () => {
  const bin = path.join(ROOT, 'bin/qrexec-legacy-convert');
  for (const args of [['--legacy-dir', 'examples/legacy'], ['examples/legacy/qubes.Gpg']]) {
    const r = spawnSync(bin, args, { encoding: 'utf8', cwd: ROOT });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^# Converted by qrexec-legacy-convert from the Qubes 4\.0 policy in examples\/legacy\.$/m);
    assert.match(r.stdout, /^# qubes\.Gpg {2}\(from examples\/legacy\/qubes\.Gpg\)$/m);
    assert.ok(!r.stdout.includes(ROOT), r.stdout);
  }
});
