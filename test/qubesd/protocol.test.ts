/**
 * qubesd's socket protocol, byte for byte, and every bad-input case of
 * issue #10 §5 (reference behaviour: qubes-core-admin qubes/api/__init__.py
 * and qubes/api/admin.py).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { startTestQubesd, raw, req, call, ok, exc, type TestQubesd } from './helpers.js';

let t: TestQubesd;
before(async () => {
  t = await startTestQubesd();
  await ok(t, 'admin.vm.Create.TemplateVM', 'dom0', '', 'name=fedora label=black');
  await ok(t, 'admin.property.Set', 'dom0', 'default_template', 'fedora');
  await ok(t, 'admin.vm.Create.AppVM', 'dom0', '', 'name=work label=red');
  await ok(t, 'admin.vm.Create.AppVM', 'dom0', 'fedora', 'name=sys-net label=green');
  await ok(t, 'admin.vm.property.Set', 'sys-net', 'provides_network', 'True');
});
after(() => t.close());

test('admin.vm.List: one line per qube, dom0 first, exact format', async () => {
  const r = await call(t, 'admin.vm.List');
  const q = (n: string) => t.qd.registry.byName(n)?.uuid;
  assert.equal(
    r,
    '0\0dom0 class=AdminVM state=Running uuid=00000000-0000-0000-0000-000000000000\n' +
      `fedora class=TemplateVM state=Halted uuid=${q('fedora')}\n` +
      `sys-net class=AppVM state=Halted uuid=${q('sys-net')}\n` +
      `work class=AppVM state=Halted uuid=${q('work')}\n`,
  );
  assert.equal(await call(t, 'admin.vm.List', 'work'), `0\0work class=AppVM state=Halted uuid=${q('work')}\n`);
});

test('property Get/GetDefault/GetAll formats', async () => {
  assert.equal(await call(t, 'admin.vm.property.Get', 'work', 'label'), '0\0default=False type=label red');
  assert.equal(await call(t, 'admin.vm.property.Get', 'work', 'template'), '0\0default=False type=vm fedora');
  assert.equal(await call(t, 'admin.vm.property.Get', 'work', 'netvm'), '0\0default=True type=vm ');
  assert.equal(await call(t, 'admin.vm.property.Get', 'work', 'vcpus'), '0\0default=True type=int 2');
  assert.equal(await call(t, 'admin.vm.property.Get', 'work', 'autostart'), '0\0default=True type=bool False');
  assert.equal(await call(t, 'admin.vm.property.Get', 'work', 'name'), '0\0default=False type=str work');
  assert.equal(await call(t, 'admin.vm.property.GetDefault', 'work', 'autostart'), '0\0type=bool False');
  assert.equal(await call(t, 'admin.vm.property.GetDefault', 'work', 'label'), '0\0');
  assert.equal(await call(t, 'admin.property.Get', 'dom0', 'default_template'), '0\0default=False type=vm fedora');
  const all = await ok(t, 'admin.vm.property.GetAll', 'work');
  const lines = all.split('\n');
  assert.equal(lines.at(-1), '');
  assert.ok(lines.includes('label default=False type=label red'));
  assert.ok(lines.includes('netvm default=True type=vm '));
  // (load_stage, name) order: stage-2 properties before stage-4 ones (netvm, template)
  assert.ok(lines.findIndex((l) => l.startsWith('vcpus ')) < lines.findIndex((l) => l.startsWith('netvm ')));
});

test('inheritance: netvm follows default_netvm, memory follows the template', async () => {
  await ok(t, 'admin.property.Set', 'dom0', 'default_netvm', 'sys-net');
  assert.equal(await call(t, 'admin.vm.property.Get', 'work', 'netvm'), '0\0default=True type=vm sys-net');
  // a TemplateVM's netvm default is None, not the global
  assert.equal(await call(t, 'admin.vm.property.Get', 'fedora', 'netvm'), '0\0default=True type=vm ');
  await ok(t, 'admin.vm.property.Set', 'fedora', 'memory', '800');
  assert.equal(await call(t, 'admin.vm.property.Get', 'work', 'memory'), '0\0default=True type=int 800');
  await ok(t, 'admin.property.Reset', 'dom0', 'default_netvm');
  assert.equal(await call(t, 'admin.vm.property.Get', 'work', 'netvm'), '0\0default=True type=vm ');
});

test('labels', async () => {
  assert.equal(await call(t, 'admin.label.List'), '0\0red\norange\nyellow\ngreen\ngray\nblue\npurple\nblack\n');
  assert.equal(await call(t, 'admin.label.Get', 'dom0', 'red'), '0\x000xcc0000');
  assert.equal(await call(t, 'admin.label.Index', 'dom0', 'black'), '0\x008');
  assert.equal(await call(t, 'admin.label.Get', 'dom0', 'pink'), exc('QubesLabelNotFoundError', 'Label does not exist: pink'));
});

test('vmclass.List', async () => {
  assert.equal(await call(t, 'admin.vmclass.List'), '0\0AdminVM\nAppVM\nDispVM\nRemoteVM\nStandaloneVM\nTemplateVM\n');
});

// --- §5 bad input ---

test('no NUL: framing error, connection aborted without a reply', async () => {
  const r = await raw(t.sock, 'admin.vm.List+ dom0 name dom0');
  assert.equal(r.empty, true);
});

test('over 64 KiB: aborted without a reply; exactly 64 KiB is served', async () => {
  const big = await raw(t.sock, req('admin.vm.feature.Set', 'work', 'x', 'a'.repeat(70000)));
  assert.equal(big.empty, true);
  const head = req('admin.vm.feature.Set', 'work', 'big', '');
  const fits = await raw(t.sock, head + 'a'.repeat(65536 - head.length));
  assert.equal(fits.data.toString(), '0\0');
});

test('a header with 3 fields is a framing error; with 5 the dest is an invalid name', async () => {
  assert.equal((await raw(t.sock, 'admin.vm.List+ dom0 name\0')).empty, true);
  assert.equal((await raw(t.sock, 'admin.vm.List+ dom0 name dom0 extra\0')).data.toString(), exc('QubesValueError', 'VM name contains illegal characters'));
});

test('a bad dest_type is a framing error; keyword adminvm means dom0', async () => {
  assert.equal((await raw(t.sock, 'admin.vm.List+ dom0 keyword dom0\0')).empty, true);
  assert.equal((await raw(t.sock, 'admin.vm.List+ dom0 uuid dom0\0')).empty, true);
  const r = await raw(t.sock, 'admin.vm.List+ dom0 keyword adminvm\0');
  assert.match(r.data.toString(), /^0\0dom0 class=AdminVM/);
});

test('an unknown method: ProtocolError', async () => {
  assert.equal(await call(t, 'admin.vm.Nope'), exc('ProtocolError', "no such method: 'admin.vm.Nope'"));
});

test('an argument where none is wanted, or one missing; payload checks; dest checks', async () => {
  assert.equal(await call(t, 'admin.vm.List', 'dom0', 'x'), exc('ProtocolError', 'unexpected argument'));
  assert.equal(await call(t, 'admin.vm.property.Get', 'work'), exc('ProtocolError', 'expected an argument'));
  assert.equal(await call(t, 'admin.vm.List', 'dom0', '', 'x'), exc('ProtocolError', 'unexpected payload'));
  assert.equal(await call(t, 'admin.label.Create', 'dom0', 'pink'), exc('ProtocolError', 'expected payload'));
  assert.equal(await call(t, 'admin.property.Get', 'work', 'default_netvm'), exc('ProtocolError', 'expected destination to be AdminVM'));
});

test('bad names and uuids', async () => {
  assert.equal(await call(t, 'admin.vm.List', 'nosuch'), exc('QubesVMNotFoundError', "No such domain: 'nosuch'"));
  assert.equal(await call(t, 'admin.vm.List', '-bad'), exc('QubesValueError', 'VM name cannot start with hyphen, underscore, dot or numbers'));
  assert.equal(await call(t, 'admin.vm.List', 'a'.repeat(32)), exc('QubesValueError', 'VM name must be shorter than 32 characters'));
  assert.equal(await call(t, 'admin.vm.List', 'x-dm'), exc('QubesValueError', 'VM name cannot end with -dm'));
  assert.equal(await call(t, 'admin.vm.List', 'uuid:1234'), exc('QubesVMInvalidUUIDError', "VM UUID is not valid: '1234'"));
  assert.equal(await call(t, 'admin.vm.List', 'uuid:00000000-0000-0000-0000-00000000000G'), exc('QubesVMInvalidUUIDError', "VM UUID is not valid: '00000000-0000-0000-0000-00000000000G'"));
  assert.equal(await call(t, 'admin.vm.List', 'uuid:00000000-0000-0000-0000-000000000001'), exc('QubesVMNotFoundError', "No such domain: 'uuid:00000000-0000-0000-0000-000000000001'"));
  const u = t.qd.registry.byName('work')?.uuid as string;
  assert.match(await call(t, 'admin.vm.List', `uuid:${u}`), /^0\0work class=AppVM/);
  assert.equal(await call(t, 'admin.vm.List', 'dom0', '', '', 'nosuch'), exc('QubesVMNotFoundError', "No such domain: 'nosuch'"));
  // the create payload's name is validated too
  assert.equal(await call(t, 'admin.vm.Create.AppVM', 'dom0', '', 'name=none label=red'), exc('QubesValueError', "VM name cannot be 'none' nor 'default'"));
});

test('property Set: wrong type, non-printable value, unknown property, bad vm', async () => {
  assert.equal(await call(t, 'admin.vm.property.Set', 'work', 'vcpus', 'two'), exc('QubesValueError', 'Failed to parse property value as int'));
  assert.equal(await call(t, 'admin.vm.property.Set', 'work', 'vcpus', '0'), exc('QubesPropertyValueError', 'vcpus must be positive'));
  assert.equal(await call(t, 'admin.vm.property.Set', 'work', 'autostart', 'maybe'), exc('QubesValueError', "Invalid literal for boolean property: 'maybe'"));
  assert.equal(await call(t, 'admin.vm.property.Set', 'work', 'kernelopts', 'a\x01b'), exc('QubesValueError', 'Invalid characters in property value'));
  assert.equal(await call(t, 'admin.vm.property.Set', 'work', 'kernelopts', 'é'), exc('QubesValueError', 'Non-ASCII bytes in property value'));
  assert.equal(await call(t, 'admin.vm.property.Set', 'work', 'nope', 'x'), exc('QubesNoSuchPropertyError', "Invalid property 'nope' of work"));
  assert.equal(await call(t, 'admin.vm.property.Set', 'work', 'netvm', 'fedora'), exc('QubesValueError', 'The fedora qube does not provide network'));
  assert.equal(await call(t, 'admin.vm.property.Set', 'work', 'netvm', 'ghost'), exc('QubesPropertyValueError', "Can't set netvm to non-existing qube ghost"));
  assert.equal(await call(t, 'admin.vm.property.Set', 'work', 'template', 'sys-net'), exc('QubesPropertyValueError', "wrong VM class: domains['sys-net'] is of type AppVM and not TemplateVM"));
  assert.equal(await call(t, 'admin.vm.property.Set', 'work', 'name', 'other'), exc('QubesException', "property 'name' is write-once and already set"));
  assert.equal(await call(t, 'admin.vm.property.Set', 'work', 'label', 'pink'), exc('QubesLabelNotFoundError', 'Label does not exist: pink'));
  assert.equal(await call(t, 'admin.vm.property.Set', 'sys-net', 'netvm', 'sys-net'), exc('QubesValueError', 'Loops in network are unsupported'));
  // nothing of the refused values was stored
  assert.equal(await call(t, 'admin.vm.property.Get', 'work', 'vcpus'), '0\0default=True type=int 2');
  // accepted forms
  assert.equal(await call(t, 'admin.vm.property.Set', 'work', 'autostart', 'ON'), '0\0');
  assert.equal(await call(t, 'admin.vm.property.Get', 'work', 'autostart'), '0\0default=False type=bool True');
  await ok(t, 'admin.vm.property.Reset', 'work', 'autostart');
});

test('a % in a message is doubled for the Python client', async () => {
  assert.equal(await call(t, 'admin.vm.property.Set', 'work', 'autostart', '100%'), exc('QubesValueError', "Invalid literal for boolean property: '100%%'"));
});

test('tags and features with bad names', async () => {
  assert.equal(await call(t, 'admin.vm.tag.Set', 'work', 'bad.tag'), exc('QubesInvalidTagError', 'disallowed characters'));
  assert.equal(await call(t, 'admin.vm.tag.Get', 'work', 'a:b'), exc('QubesInvalidTagError', 'disallowed characters'));
  assert.equal(await call(t, 'admin.vm.tag.Set', 'work', ''), exc('ProtocolError', 'expected an argument'));
  assert.equal(await call(t, 'admin.vm.tag.Remove', 'work', 'absent'), exc('QubesTagNotFoundError', 'Tag not set for domain work: absent'));
  assert.equal(await call(t, 'admin.vm.feature.Set', 'work', 'bad/feature', 'x'), exc('ProtocolError', 'feature name contains illegal characters'));
  assert.equal(await call(t, 'admin.vm.feature.Set', 'work', 'f', 'a\nb'), exc('ProtocolError', 'f value contains illegal characters'));
  assert.equal(await call(t, 'admin.vm.feature.Get', 'work', 'absent'), exc('QubesFeatureNotFoundError', 'Feature not set for domain work: absent'));
  assert.equal(await call(t, 'admin.vm.feature.Set', 'work', 'preload-dispvm', '1'), exc('PermissionDenied', 'changing this feature is prohibited by qubes.ext.admin.AdminExtension'));
});

test('removing a qube in use; removing dom0', async () => {
  await ok(t, 'admin.vm.property.Set', 'work', 'netvm', 'sys-net');
  assert.equal(
    await call(t, 'admin.vm.Remove', 'sys-net'),
    exc('QubesVMInUseError', "Domain is in use: 'sys-net';  see 'journalctl -u qubesd -e' in dom0 for details"),
  );
  assert.equal(await call(t, 'admin.vm.Remove', 'fedora'), exc('QubesVMInUseError', "Domain is in use: 'fedora';  see 'journalctl -u qubesd -e' in dom0 for details"));
  assert.equal(await call(t, 'admin.vm.Remove', 'dom0'), exc('QubesVMInUseError', "'dom0' cannot be removed"));
  assert.ok(t.qd.registry.byName('sys-net'));
  await ok(t, 'admin.vm.property.Reset', 'work', 'netvm');
});

test('creating a qube that already exists; bad create payloads', async () => {
  assert.equal(await call(t, 'admin.vm.Create.AppVM', 'dom0', '', 'name=work label=red'), exc('QubesVMAlreadyExistsError', 'Qube already exists: work'));
  assert.equal(await call(t, 'admin.vm.Create.AppVM', 'dom0', '', 'name=x1 label=pink'), exc('QubesLabelNotFoundError', 'Label does not exist: untrusted label'));
  assert.equal(await call(t, 'admin.vm.Create.AppVM', 'dom0', 'ghost', 'name=x1 label=red'), exc('QubesVMNotFoundError', "No such domain: 'ghost'"));
  assert.equal(await call(t, 'admin.vm.Create.AppVM', 'dom0', '', 'name=x1'), exc('ProtocolError', 'Creation requested without key: label'));
  assert.equal(await call(t, 'admin.vm.Create.AppVM', 'dom0', '', 'name=x1 name=x2 label=red'), exc('ProtocolError', 'Options must be unique'));
  assert.equal(await call(t, 'admin.vm.Create.StandaloneVM', 'dom0', 'fedora', 'name=x1 label=red'), exc('ProtocolError', 'StandaloneVM cannot be based on template'));
  assert.equal(await call(t, 'admin.vm.Create.AppVM', 'dom0', '', 'name=x1 label=red pool=p'), exc('ProtocolError', "Pool option specified but 'allow_pool' is False"));
  assert.equal((await raw(t.sock, req('admin.vm.Create.AppVM', 'dom0', '', 'name=x1 nolabel'))).empty, true);
  assert.equal(t.qd.registry.byName('x1'), undefined);
});

test('created qubes carry created-by-<src>, guivm-/audiovm- tags, and tag-created-vm-with', async () => {
  await ok(t, 'admin.vm.feature.Set', 'dom0', 'tag-created-vm-with', 'extra1 extra2');
  await ok(t, 'admin.vm.Create.AppVM', 'dom0', '', 'name=tagged label=blue');
  assert.equal(await ok(t, 'admin.vm.tag.List', 'tagged'), 'audiovm-dom0\ncreated-by-dom0\nextra1\nextra2\nguivm-dom0\n');
  await ok(t, 'admin.vm.feature.Remove', 'dom0', 'tag-created-vm-with');
  await ok(t, 'admin.vm.property.Set', 'tagged', 'guivm', 'work');
  assert.equal(await ok(t, 'admin.vm.tag.List', 'tagged'), 'audiovm-dom0\ncreated-by-dom0\nextra1\nextra2\nguivm-work\n');
  await ok(t, 'admin.vm.property.Set', 'tagged', 'guivm', '');
  assert.equal(await ok(t, 'admin.vm.tag.List', 'tagged'), 'audiovm-dom0\ncreated-by-dom0\nextra1\nextra2\n');
  // only dom0 may change created-by- tags
  assert.equal(await call(t, 'admin.vm.tag.Remove', 'tagged', 'created-by-dom0', '', 'work'), exc('PermissionDenied', 'changing this tag is prohibited by qubes.ext.admin.AdminExtension'));
  await ok(t, 'admin.vm.Remove', 'tagged');
});

test('features: Check* inheritance', async () => {
  await ok(t, 'admin.vm.feature.Set', 'fedora', 'from-template', 'T');
  await ok(t, 'admin.vm.feature.Set', 'dom0', 'from-dom0', 'D');
  await ok(t, 'admin.vm.feature.Set', 'sys-net', 'from-net', 'N');
  await ok(t, 'admin.vm.property.Set', 'work', 'netvm', 'sys-net');
  assert.equal(await call(t, 'admin.vm.feature.CheckWithTemplate', 'work', 'from-template'), '0\0T');
  assert.equal(await call(t, 'admin.vm.feature.Get', 'work', 'from-template'), exc('QubesFeatureNotFoundError', 'Feature not set for domain work: from-template'));
  assert.equal(await call(t, 'admin.vm.feature.CheckWithNetvm', 'work', 'from-net'), '0\0N');
  assert.equal(await call(t, 'admin.vm.feature.CheckWithAdminVM', 'work', 'from-dom0'), '0\0D');
  assert.equal(await call(t, 'admin.vm.feature.CheckWithTemplateAndAdminVM', 'work', 'from-dom0'), '0\0D');
  assert.equal(await call(t, 'admin.vm.feature.CheckWithTemplateAndAdminVM', 'work', 'from-template'), '0\0T');
  assert.equal(await call(t, 'admin.vm.feature.CheckWithTemplate', 'work', 'from-dom0'), exc('QubesFeatureNotFoundError', 'Feature not set for domain work: from-dom0'));
  await ok(t, 'admin.vm.property.Reset', 'work', 'netvm');
});

test('admin.Events: first frame, property-set frames with kwargs, byte for byte', async () => {
  const s = net.connect({ path: t.sock, allowHalfOpen: true });
  let got = Buffer.alloc(0);
  const frames = new Promise<string>((resolve) => {
    s.on('data', (c: Buffer) => {
      got = Buffer.concat([got, c]);
      if (got.includes('property-set:vcpus')) resolve(got.toString('latin1'));
    });
  });
  s.write('admin.Events+ dom0 name dom0\0');
  s.end();
  await new Promise<void>((r) => {
    const poll = (): void => (got.length > 0 ? r() : void setTimeout(poll, 5));
    poll();
  });
  assert.equal(got.toString('latin1'), '1\0\0connection-established\0\0');
  await ok(t, 'admin.vm.property.Set', 'work', 'vcpus', '3');
  const all = await frames;
  s.destroy();
  assert.ok(all.includes('1\0work\0property-pre-set:vcpus\0name\0vcpus\0newvalue\x003\0oldvalue\x002\0\0'));
  assert.ok(all.includes('1\0work\0property-set:vcpus\0name\0vcpus\0newvalue\x003\0oldvalue\x002\0\0'));
  assert.ok(!all.includes('admin-permission'));
  await ok(t, 'admin.vm.property.Reset', 'work', 'vcpus');
});

test('internal.GetSystemInfo: the JSON the policy daemon reads; refreshed after changes', async () => {
  const r = await raw(t.internal, 'internal.GetSystemInfo+ dom0 name dom0\0');
  const text = r.data.toString();
  assert.ok(text.startsWith('0\0'));
  const info = JSON.parse(text.slice(2)) as { domains: Record<string, Record<string, unknown>> };
  assert.deepEqual(info.domains['dom0'], {
    internal: null,
    tags: [],
    type: 'AdminVM',
    template_for_dispvms: false,
    default_dispvm: null,
    icon: 'adminvm-black',
    label: '0x000000',
    guivm: null,
    relayvm: null,
    transport_rpc: null,
    power_state: 'Running',
    uuid: '00000000-0000-0000-0000-000000000000',
  });
  assert.equal(info.domains['work']?.['icon'], 'appvm-red');
  await ok(t, 'admin.vm.tag.Set', 'work', 'fresh');
  const again = JSON.parse((await raw(t.internal, 'internal.GetSystemInfo+ dom0 name dom0\0')).data.toString().slice(2)) as typeof info;
  assert.ok((again.domains['work']?.['tags'] as string[]).includes('fresh'));
  await ok(t, 'admin.vm.tag.Remove', 'work', 'fresh');
  // the Admin API socket does not serve internal methods
  assert.equal(await call(t, 'internal.GetSystemInfo'), exc('ProtocolError', "no such method: 'internal.GetSystemInfo'"));
});

test('qubes.FeaturesRequest on the misc socket: a template records what its tools support', async () => {
  const r = await raw(t.misc, 'qubes.FeaturesRequest+ fedora name dom0\0qrexec=1\nos=Linux\nsomething-else=1\n');
  assert.equal(r.data.toString(), '0\0');
  assert.equal(await ok(t, 'admin.vm.feature.Get', 'fedora', 'qrexec'), '1');
  assert.equal(await call(t, 'admin.vm.feature.Get', 'fedora', 'something-else'), exc('QubesFeatureNotFoundError', 'Feature not set for domain fedora: something-else'));
  // a template-based qube's requests are ignored
  await raw(t.misc, 'qubes.FeaturesRequest+ work name dom0\0qrexec=1\n');
  assert.equal(await call(t, 'admin.vm.feature.Get', 'work', 'qrexec'), exc('QubesFeatureNotFoundError', 'Feature not set for domain work: qrexec'));
  const bad = await raw(t.misc, 'qubes.NotifyTools+ fedora name dom0\0os=Lin ux\n');
  assert.match(bad.data.toString(), /^2\0ProtocolError\0\0Value outside safe set/);
});

test('the sockets are mode 0660', () => {
  for (const p of [t.sock, t.internal, t.misc]) assert.equal(fs.statSync(p).mode & 0o777, 0o660, p);
});

test('a client that sends half a request and stalls, and 1,000 concurrent connections: others are still served', async () => {
  const stalled: net.Socket[] = [];
  for (let i = 0; i < 1000; i++) {
    const s = net.connect(t.sock);
    s.on('error', () => undefined);
    s.write('admin.vm.property.Get+label dom0 na');
    stalled.push(s);
  }
  const connected = await Promise.all(
    stalled.map((s) => new Promise<boolean>((r) => (s.connecting ? (s.once('connect', () => r(true)), s.once('error', () => r(false))) : r(true)))),
  );
  assert.equal(connected.filter((x) => x).length, 1000);
  const t0 = process.hrtime.bigint();
  const r = await call(t, 'admin.vm.property.Get', 'work', 'label');
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  assert.equal(r, '0\0default=False type=label red');
  // not a timing assertion of performance: only that the stalled ones do not block (well under a second)
  assert.ok(ms < 1000, `served in ${ms} ms`);
  for (const s of stalled) s.destroy();
});
