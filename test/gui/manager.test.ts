/**
 * The qube manager in Chromium, on the real host: each GUI domain's web
 * app runs in its qube and reaches dom0 only through qrexec (the Admin API
 * under the shipped policy, 50-gui.policy); the browser reaches it only
 * through dom0's proxy. Two GUI domains see disjoint sets of qubes, and one
 * cannot see or change the other's, neither through its web app nor with
 * Admin API calls of its own (forged requests).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Page } from 'playwright-core';
import { GUI_QUBES, HostWorld } from './host-world.js';
import { ARTIFACTS, ROOT } from './harness.js';

let w: HostWorld;

before(async () => {
  w = await HostWorld.start();
});
after(async () => {
  await w?.close();
});

const rowNames = (page: Page): Promise<string[]> => page.locator('table[aria-label="Qubes"] tbody tr[data-qube]').evaluateAll((rs) => rs.map((r) => r.getAttribute('data-qube') ?? ''));
const stateOf = (page: Page, q: string) => page.getByLabel(`State of ${q}`, { exact: true });
const shot = async (page: Page, name: string): Promise<void> => {
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) });
};

async function until(ok: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`timeout: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A call from inside qube `from` with qrexec-client-vm; its exit status and output. */
function callFrom(from: string, target: string, service: string, input = ''): Promise<{ code: number | null; out: string }> {
  const { env, agentSocket } = w.inside(from);
  return new Promise((resolve) => {
    const p = spawn(path.join(ROOT, 'bin', 'qrexec-client-vm'), [`--agent-socket=${agentSocket}`, target, service], { env, stdio: ['pipe', 'pipe', 'ignore'] });
    let out = '';
    p.stdout.on('data', (c: Buffer) => (out += c.toString('latin1')));
    p.stdin.end(input);
    p.on('close', (code) => resolve({ code, out }));
  });
}

void test('qube manager: the GUI domain lists its qubes live, starts and shuts one down, sees a change made elsewhere, creates a qube and changes its settings', { timeout: 120_000 }, async () => {
  const page = await w.page('sys-gui');
  await page.getByRole('button', { name: 'Qubes' }).click();
  await page.getByRole('table', { name: 'Qubes' }).waitFor();
  await until(async () => (await rowNames(page)).length === GUI_QUBES['sys-gui']?.length, 20_000, 'the rows');
  // its own qubes only: not itself, not dom0, not sys-gui-2's
  assert.deepEqual(await rowNames(page), GUI_QUBES['sys-gui']);
  const work = page.locator('tr[data-qube="work"]');
  assert.deepEqual(await work.locator('td').evaluateAll((tds) => tds.slice(0, 4).map((td) => td.textContent)), ['Halted', 'AppVM', 'tpl', '—']);
  // disk usage: what qubesd's volume.Info says of the private volume (the second pass)
  const usage = Number(/^usage=(\d+)$/m.exec(await w.admin('admin.vm.volume.Info', 'work', 'private'))?.[1]);
  assert.ok(Number.isInteger(usage));
  await until(async () => (await work.locator('td').nth(4).getAttribute('data-bytes')) === String(usage), 10_000, `work's disk usage ${usage}`);
  assert.match((await work.locator('td').nth(4).textContent()) ?? '', /^\d+(\.\d)? (B|KiB|MiB|GiB|TiB)$/);
  await shot(page, '10-qubes');

  // start: the Admin API call from sys-gui, then the state follows admin.Events
  await page.getByRole('button', { name: 'Start work', exact: true }).click();
  await until(async () => (await stateOf(page, 'work').textContent()) === 'Running', 30_000, 'work Running in the page');
  assert.equal(w.sys.qubesd.registry.byName('work')?.power, 'Running');
  await shot(page, '11-qube-started');
  await page.getByRole('button', { name: 'Shut down work', exact: true }).click();
  await until(async () => (await stateOf(page, 'work').textContent()) === 'Halted', 30_000, 'work Halted in the page');
  assert.equal(w.sys.qubesd.registry.byName('work')?.power, 'Halted');

  // a change made by dom0 (qvm-prefs) shows at once
  await w.admin('admin.vm.property.Set', 'personal', 'label', 'green');
  await page.locator('tr[data-qube="personal"] .qube.label-green').waitFor({ timeout: 10_000 });

  // create: the new qube is sys-gui's (set-created-guivm), with the label and netvm chosen
  await page.getByRole('button', { name: 'Create qube' }).click();
  const dlg = page.getByRole('dialog', { name: 'Create qube' });
  await dlg.getByRole('textbox', { name: 'Name' }).fill('banking');
  await dlg.getByRole('combobox', { name: 'Template' }).selectOption('tpl');
  await dlg.getByRole('combobox', { name: 'Label' }).selectOption('purple');
  await dlg.getByRole('combobox', { name: 'NetVM' }).selectOption('(none)');
  await shot(page, '12-create');
  await dlg.getByRole('button', { name: 'Create' }).click();
  await page.locator('tr[data-qube="banking"] .qube.label-purple').waitFor({ timeout: 10_000 });
  const banking = w.sys.qubesd.registry.byName('banking');
  assert.equal(banking?.get('guivm'), 'sys-gui');
  assert.equal(banking?.get('netvm'), null);
  assert.ok(banking?.tags.has('guivm-sys-gui'));

  // settings: a property, a tag, a feature
  await page.getByRole('button', { name: 'Settings of banking' }).click();
  const set = page.getByRole('dialog', { name: 'Settings of banking' });
  await set.getByRole('combobox', { name: 'label' }).selectOption('orange');
  await set.getByRole('button', { name: 'Save' }).click();
  await page.locator('tr[data-qube="banking"] .qube.label-orange').waitFor({ timeout: 10_000 });
  await set.getByRole('textbox', { name: 'New tag' }).fill('finance');
  await set.getByRole('button', { name: 'Add tag' }).click();
  await set.getByRole('list', { name: 'Tags' }).getByText('finance').waitFor();
  await set.getByRole('textbox', { name: 'Feature name' }).fill('menu-items');
  await set.getByRole('textbox', { name: 'Feature value' }).fill('firefox.desktop');
  await set.getByRole('button', { name: 'Set feature' }).click();
  await set.getByRole('table', { name: 'Features' }).getByText('firefox.desktop').waitFor();
  assert.ok(banking?.tags.has('finance'));
  assert.equal(banking?.features.get('menu-items'), 'firefox.desktop');
  await shot(page, '13-settings');
  // remove (confirmed): gone from the registry and the page
  page.once('dialog', (d) => void d.accept());
  await set.getByRole('button', { name: 'Remove qube' }).click();
  await until(async () => !(await rowNames(page)).includes('banking'), 10_000, 'banking gone from the page');
  assert.equal(w.sys.qubesd.registry.byName('banking'), undefined);
  await page.context().close();
});

void test('two GUI domains: each sees and changes only its own qubes; forged requests and direct Admin API calls are refused', { timeout: 120_000 }, async () => {
  const a = w.gui('sys-gui');
  const b = w.gui('sys-gui-2');
  assert.notEqual(a.base, b.base, 'own port');
  assert.notEqual(a.token, b.token, 'own token');
  const page = await w.page('sys-gui-2');
  await page.getByRole('table', { name: 'Qubes' }).waitFor();
  await until(async () => (await rowNames(page)).length === 2, 20_000, "sys-gui-2's rows");
  assert.deepEqual(await rowNames(page), GUI_QUBES['sys-gui-2']);
  await shot(page, '14-second-gui');

  // sys-gui's token does not open sys-gui-2 (nor the other way round)
  assert.equal((await fetch(`${b.base}/?token=${a.token}`, { redirect: 'manual' })).status, 403);
  assert.equal((await fetch(`${a.base}/?token=${b.token}`, { redirect: 'manual' })).status, 403);

  // forged requests from sys-gui-2's own page (valid session and CSRF token) about sys-gui's qubes
  const forged = await page.evaluate(async () => {
    const csrf = document.querySelector<HTMLMetaElement>('meta[name="qgui-csrf"]')?.content ?? '';
    const post = (p: string, body: unknown) => fetch(p, { method: 'POST', headers: { 'content-type': 'application/json', 'x-qgui-csrf': csrf }, body: JSON.stringify(body) }).then((r) => r.status);
    return {
      details: (await fetch('/api/qubes/work')).status,
      start: await post('/api/qubes/work/start', {}),
      prop: await post('/api/qubes/work/property', { name: 'netvm', value: '' }),
      remove: await post('/api/qubes/personal/remove', {}),
      list: ((await (await fetch('/api/qubes')).json()) as { rows: { name: string }[] }).rows.map((r) => r.name),
    };
  });
  assert.deepEqual(forged, { details: 404, start: 404, prop: 404, remove: 404, list: GUI_QUBES['sys-gui-2'] });

  // the policy holds even for calls the web app would never make: straight from inside sys-gui-2
  // (the full list: dom0, as for any management qube, and its own qubes)
  const list = await callFrom('sys-gui-2', 'dom0', 'admin.vm.List');
  assert.equal(list.code, 0);
  assert.deepEqual(
    list.out.slice(2).split('\n').filter(Boolean).map((l) => l.split(' ')[0]),
    ['dom0', ...(GUI_QUBES['sys-gui-2'] ?? [])],
  );
  for (const [svc, input] of [['admin.vm.Start', ''], ['admin.vm.property.Set+netvm', ''], ['admin.vm.Remove', ''], ['admin.vm.property.Get+label', '']] as const) {
    assert.equal((await callFrom('sys-gui-2', 'work', svc, input)).code, 126, `${svc} on work refused`);
  }
  // and its own qubes it may manage that way too
  const own = await callFrom('sys-gui-2', 'alice', 'admin.vm.property.Get+label');
  assert.equal(own.out, '0\0default=False type=label green');
  assert.equal(w.sys.qubesd.registry.byName('work')?.power, 'Halted');
  assert.ok(w.sys.qubesd.registry.byName('personal'));

  // a change to sys-gui's qube is not sent to sys-gui-2's page; one to its own is
  await w.admin('admin.vm.property.Set', 'work', 'label', 'red');
  await w.admin('admin.vm.property.Set', 'alice', 'label', 'orange');
  await page.locator('tr[data-qube="alice"] .qube.label-orange').waitFor({ timeout: 10_000 });
  assert.deepEqual(await rowNames(page), GUI_QUBES['sys-gui-2']);
  await page.context().close();
});

void test('policy editor: live check with file:line errors and the impact diff, save with the token; the next call is decided by it; a concurrent edit conflicts; explain a call', { timeout: 120_000 }, async () => {
  await w.admin('admin.vm.Start', 'work');
  const before = await callFrom('work', 'personal', 'qubes.VMExec+cat', 'hi\n');
  assert.equal(before.code, 126, 'denied by the default policy');
  const page = await w.page('sys-gui');
  await page.getByRole('button', { name: 'Policy' }).click();
  await page.getByRole('list', { name: 'Policy files' }).getByRole('button', { name: '30-user', exact: true }).click();
  const editor = page.getByRole('combobox', { name: 'Policy text' });
  await until(async () => (await editor.inputValue()).includes('vault'), 10_000, 'the file loaded');
  const original = await editor.inputValue();

  // a line dom0 cannot load: its file:line, and no saving
  await editor.fill(`${original}qubes.VMExec  +cat  work  personal  allwo\n`);
  const problems = page.getByRole('region', { name: 'Problems' });
  const badLine = original.split('\n').length;
  await problems.locator('code', { hasText: `30-user.policy:${badLine}` }).waitFor({ timeout: 10_000 });
  // and the line is marked in the editor
  assert.equal(await page.locator('.editor-hl .hl-line.bad .ln').textContent(), String(badLine));
  assert.match((await problems.textContent()) ?? '', /Policy change validation failed/);
  assert.equal(await page.getByRole('button', { name: 'Save', exact: true }).isDisabled(), true);
  await shot(page, '15-policy-error');

  // a good line: the decisions it changes, then save
  await editor.fill(`qubes.VMExec  +cat  work  personal  allow\n${original}`);
  const impact = page.getByRole('region', { name: 'Impact of the change' });
  await impact.getByRole('table', { name: 'Decisions that change' }).waitFor({ timeout: 10_000 });
  const row = impact.getByRole('row').filter({ hasText: 'qubes.VMExec+cat' }).filter({ hasText: 'personal' }).first();
  assert.match((await row.textContent()) ?? '', /work.*personal.*deny.*allow/);
  await shot(page, '16-policy-impact');
  await page.getByRole('button', { name: 'Save', exact: true }).click();
  await page.getByRole('status').filter({ hasText: 'Saved 30-user' }).waitFor({ timeout: 10_000 });
  assert.match(fs.readFileSync(path.join(w.sys.info.policyDir, '30-user.policy'), 'utf8'), /^qubes\.VMExec {2}\+cat {2}work {2}personal {2}allow$/m);
  const after = await callFrom('work', 'personal', 'qubes.VMExec+cat', 'hi\n');
  assert.equal(after.code, 0);
  assert.equal(after.out, 'hi\n');

  // explain: policy.Eval names the rule
  const explain = page.getByRole('form', { name: 'Explain a call' });
  await explain.getByRole('textbox', { name: 'Service' }).fill('qubes.VMExec+cat');
  await explain.getByRole('combobox', { name: 'Source' }).fill('work');
  await explain.getByRole('combobox', { name: 'Target' }).fill('personal');
  await explain.getByRole('button', { name: 'Explain' }).click();
  await explain.getByRole('status').filter({ hasText: /allow.*30-user\.policy:1/ }).waitFor({ timeout: 10_000 });

  // someone else changes the file meanwhile: saving is a conflict, and their change stays
  const file = path.join(w.sys.info.policyDir, '30-user.policy');
  const theirs = `# changed by dom0 meanwhile\n${fs.readFileSync(file, 'utf8')}`;
  fs.writeFileSync(file, theirs);
  await editor.fill(`${await editor.inputValue()}# mine\n`);
  await until(async () => !(await page.getByRole('button', { name: 'Save', exact: true }).isDisabled()), 10_000, 'save enabled');
  await page.getByRole('button', { name: 'Save', exact: true }).click();
  await page.getByRole('alert').filter({ hasText: /Conflict: 30-user was changed meanwhile \(.*Token mismatch\)/ }).waitFor({ timeout: 10_000 });
  assert.equal(fs.readFileSync(file, 'utf8'), theirs, 'not overwritten');
  assert.match(await editor.inputValue(), /# mine\n$/, 'the edited text is kept');
  await shot(page, '17-policy-conflict');
  await page.context().close();
});

void test('policy editor: completion of services, qube names, @tokens with tags, actions and options, from what this GUI domain may see; keyboard-driven (ARIA combobox and listbox)', { timeout: 60_000 }, async () => {
  const page = await w.page('sys-gui');
  await page.getByRole('button', { name: 'Policy' }).click();
  await page.getByRole('list', { name: 'Policy files' }).getByRole('button', { name: '30-user', exact: true }).click();
  const editor = page.getByRole('combobox', { name: 'Policy text' });
  await until(async () => (await editor.inputValue()) !== '', 10_000, 'the file loaded');
  const original = await editor.inputValue();
  const list = page.getByRole('listbox', { name: 'Completions' });
  const options = (): Promise<string[]> => list.getByRole('option').allTextContents();
  const active = async (): Promise<string> => {
    const id = (await editor.getAttribute('aria-activedescendant')) ?? '';
    return (await page.locator(`#${id}`).getAttribute('aria-selected')) === 'true' ? ((await page.locator(`#${id}`).textContent()) ?? '') : '';
  };
  await editor.focus();
  await page.keyboard.press('Control+End');
  if (!original.endsWith('\n')) await page.keyboard.press('Enter');

  // a service named in the policy files
  await page.keyboard.type('qubes.Fil');
  await list.waitFor({ timeout: 5000 });
  assert.equal(await editor.getAttribute('aria-expanded'), 'true');
  assert.ok((await options()).includes('qubes.Filecopy'), 'qubes.Filecopy offered');
  while ((await active()) !== 'qubes.Filecopy') await page.keyboard.press('ArrowDown');
  await page.keyboard.press('Enter');
  await until(async () => (await editor.getAttribute('aria-expanded')) === 'false', 5000, 'closed after the choice');
  // the argument, then the source: this GUI domain's qubes and the source @tokens, not another's qubes
  await page.keyboard.type(' * ');
  await page.keyboard.press('Control+Space');
  await list.waitFor({ timeout: 5000 });
  const sources = await options();
  for (const o of ['@anyvm', '@adminvm', 'personal', 'work', 'tpl', '@type:AppVM', '@tag:guivm-sys-gui']) assert.ok(sources.includes(o), `${o} offered as a source`);
  assert.ok(!sources.includes('@default') && !sources.includes('@dispvm'), 'no target-only token as a source');
  assert.ok(!sources.some((o) => /alice|sys-gui-2|vault/.test(o)), `only sys-gui's qubes and tags: ${sources.join(' ')}`);
  await page.keyboard.type('wo');
  assert.deepEqual(await options(), ['work']);
  await page.keyboard.press('Tab');
  // the target: @tag: goes on to the tags
  await page.keyboard.type(' @ta');
  await list.getByRole('option', { name: '@tag:guivm-sys-gui', exact: true }).waitFor({ timeout: 5000 });
  await page.keyboard.type('g:guivm');
  // prefix matches first, then the others containing the word
  assert.deepEqual(await options(), ['@tag:guivm-sys-gui', '@dispvm:@tag:guivm-sys-gui']);
  await shot(page, '24-policy-completion');
  await page.keyboard.press('Enter');
  // the action, then its options
  await page.keyboard.type(' a');
  assert.deepEqual(await options(), ['allow', 'ask']);
  await page.keyboard.press('ArrowDown');
  assert.equal(await active(), 'ask');
  await page.keyboard.press('Enter');
  await page.keyboard.type(' def');
  assert.deepEqual(await options(), ['default_target=']);
  await page.keyboard.press('Enter');
  await list.getByRole('option', { name: 'personal', exact: true }).waitFor({ timeout: 5000 });
  await page.keyboard.type('pe');
  await page.keyboard.press('Enter');
  // Escape closes without a change
  await page.keyboard.type(' no');
  await list.waitFor({ timeout: 5000 });
  await page.keyboard.press('Escape');
  assert.equal(await editor.getAttribute('aria-expanded'), 'false');
  assert.ok(await list.isHidden());
  const last = (await editor.inputValue()).split('\n').filter(Boolean).pop();
  assert.equal(last, 'qubes.Filecopy * work @tag:guivm-sys-gui ask default_target=personal no');
  // and the line completed that way is one dom0 accepts (the impact of the change is shown)
  await page.keyboard.press('Backspace');
  await page.keyboard.press('Backspace');
  await page.keyboard.press('Backspace');
  await page.getByRole('region', { name: 'Impact of the change' }).waitFor({ timeout: 10_000 });
  await page.context().close();
});

void test('policy by service (as Global Config): rows source/action/target written to its own 50-config file through the Policy API, with the impact before saving; the next call is decided by it; remove; a conflict; a file it cannot show goes to the text editor', { timeout: 120_000 }, async () => {
  await w.admin('admin.vm.Start', 'work');
  await w.admin('admin.vm.Start', 'personal');
  const own = path.join(w.sys.info.policyDir, '50-config-vmexec.policy');
  assert.ok(!fs.existsSync(own));
  assert.equal((await callFrom('personal', 'work', 'qubes.VMExec+cat', 'hi\n')).code, 126, 'denied by the default policy');
  const page = await w.page('sys-gui');
  await page.getByRole('button', { name: 'Policy' }).click();
  await page.getByRole('tab', { name: 'By service' }).click();
  const pick = page.getByRole('form', { name: 'Choose a service' });
  await pick.getByRole('combobox', { name: 'Service' }).fill('qubes.VMExec');
  await pick.getByRole('button', { name: 'Show rules' }).click();
  const view = page.getByRole('region', { name: 'Rules for qubes.VMExec' });
  await view.getByText('in 50-config-vmexec (new file)').waitFor({ timeout: 10_000 });
  // the files read before it, whose rules come first (here 30-user's `* * @anyvm vault ask`)
  await view.getByRole('note').filter({ hasText: /Read before this file.*30-user/ }).waitFor({ timeout: 10_000 });

  await view.getByRole('button', { name: 'Add rule' }).click();
  await view.getByRole('combobox', { name: 'Source of rule 1' }).fill('personal');
  await view.getByRole('combobox', { name: 'Action of rule 1' }).selectOption('allow');
  await view.getByRole('combobox', { name: 'Target of rule 1' }).fill('work');
  // the impact before saving: dom0's policy.Diff of the file to be written
  const impact = view.getByRole('region', { name: 'Impact of the change' });
  await impact.getByRole('row').filter({ hasText: 'personal' }).filter({ hasText: /deny.*allow/ }).first().waitFor({ timeout: 10_000 });
  await shot(page, '25-policy-by-service');
  await view.getByRole('button', { name: 'Save', exact: true }).click();
  await page.getByRole('status').filter({ hasText: 'Saved 50-config-vmexec' }).waitFor({ timeout: 10_000 });
  assert.match(fs.readFileSync(own, 'utf8'), /^# Written by the GUI domain's per-service policy view[^]*\nqubes\.VMExec {2}\* {2}personal {2}work {2}allow\n$/);
  const allowed = await callFrom('personal', 'work', 'qubes.VMExec+cat', 'hi\n');
  assert.deepEqual(allowed, { code: 0, out: 'hi\n' });

  // a second row, moved up; then the first removed
  await view.getByRole('button', { name: 'Add rule' }).click();
  await view.getByRole('combobox', { name: 'Source of rule 2' }).fill('@anyvm');
  await view.getByRole('combobox', { name: 'Action of rule 2' }).selectOption('deny');
  await view.getByRole('combobox', { name: 'Target of rule 2' }).fill('@anyvm');
  await view.getByRole('button', { name: 'Move rule 2 up' }).click();
  assert.equal(await view.getByRole('combobox', { name: 'Source of rule 1' }).inputValue(), '@anyvm');
  await view.getByRole('button', { name: 'Remove rule 2' }).click();
  await impact.getByRole('row').filter({ hasText: 'personal' }).filter({ hasText: /allow.*deny/ }).first().waitFor({ timeout: 10_000 });
  await view.getByRole('button', { name: 'Save', exact: true }).click();
  await until(() => /\nqubes\.VMExec {2}\* {2}@anyvm {2}@anyvm {2}deny\n$/.test(fs.readFileSync(own, 'utf8')), 10_000, 'the file saved');
  assert.equal((await callFrom('personal', 'work', 'qubes.VMExec+cat', 'hi\n')).code, 126);

  // a change made meanwhile: a conflict, and theirs stays
  const theirs = `${fs.readFileSync(own, 'utf8')}# changed by dom0 meanwhile\n`;
  fs.writeFileSync(own, theirs);
  await view.getByRole('combobox', { name: 'Action of rule 1' }).selectOption('ask');
  const conflictShown = (): Promise<boolean> => view.getByRole('alert').filter({ hasText: /Conflict/ }).isVisible();
  await until(async () => (await conflictShown()) || !(await view.getByRole('button', { name: 'Save', exact: true }).isDisabled()), 10_000, 'checked');
  if (!(await conflictShown())) await view.getByRole('button', { name: 'Save', exact: true }).click();
  await view.getByRole('alert').filter({ hasText: /Conflict: 50-config-vmexec was changed meanwhile/ }).waitFor({ timeout: 10_000 });
  assert.equal(fs.readFileSync(own, 'utf8'), theirs, 'not overwritten');

  // a line the view cannot show: no rows to change, the text editor instead
  fs.writeFileSync(own, `${theirs}qubes.VMExec  +cat  personal  work  allow\n`);
  await view.getByRole('button', { name: 'Reload' }).click();
  const cannot = view.getByRole('alert').filter({ hasText: 'has lines this view cannot show' });
  await cannot.waitFor({ timeout: 10_000 });
  assert.match((await cannot.textContent()) ?? '', /50-config-vmexec\.policy:\d+\s*qubes\.VMExec {2}\+cat/);
  assert.equal(await view.getByRole('button', { name: 'Add rule' }).count(), 0);
  assert.equal(await view.getByRole('button', { name: 'Save', exact: true }).isDisabled(), true);
  await cannot.getByRole('button', { name: 'Edit 50-config-vmexec as text' }).click();
  const editor = page.getByRole('combobox', { name: 'Policy text' });
  await until(async () => (await editor.inputValue()).includes('+cat  personal  work  allow'), 10_000, 'the file in the text editor');
  assert.equal(await page.getByRole('tab', { name: 'Files' }).getAttribute('aria-selected'), 'true');
  await page.context().close();
  fs.rmSync(own);
});

void test('audit log view: the decisions, filtered, with a live tail; only the administrator GUI domain may read it', { timeout: 120_000 }, async () => {
  await w.admin('admin.vm.Start', 'work');
  const page = await w.page('sys-gui');
  await page.getByRole('button', { name: 'Audit log' }).click();
  await page.getByRole('searchbox', { name: 'Source' }).fill('work');
  await page.getByRole('searchbox', { name: 'Service' }).fill('test.Audit');
  const table = page.getByRole('table', { name: 'Audit log' });
  await page.getByText('No decision matches.').waitFor({ timeout: 10_000 });
  // live: a call made now appears without reloading
  assert.equal((await callFrom('work', 'personal', 'test.Audit', '')).code, 126);
  await table.getByRole('row').filter({ hasText: 'test.Audit' }).filter({ hasText: 'Denied' }).waitFor({ timeout: 10_000 });
  assert.equal(await table.getByRole('row').count(), 2, 'the header and the one decision');
  await page.getByRole('combobox', { name: 'Result' }).selectOption('allow');
  await page.getByText('No decision matches.').waitFor({ timeout: 10_000 });
  await page.getByRole('combobox', { name: 'Result' }).selectOption('');
  await page.getByRole('searchbox', { name: 'Service' }).fill('');
  await table.getByRole('row').filter({ hasText: 'qubes.VMExec' }).first().waitFor({ timeout: 10_000 });
  await shot(page, '18-audit');
  await page.context().close();
  // a GUI domain for another user reads neither the audit log nor the policy
  assert.equal((await callFrom('sys-gui-2', 'dom0', 'audit.Query+', '{}')).code, 126);
  assert.equal((await callFrom('sys-gui-2', 'dom0', 'policy.Get+30-user')).code, 126);
  assert.equal((await callFrom('work', 'dom0', 'audit.Query+', '{}')).code, 126);
});

void test('a terminal into a qube (xterm.js on a pty there, through qrexec) echoes a command run in the qube; a qube of another GUI domain is refused', { timeout: 120_000 }, async () => {
  await w.admin('admin.vm.Start', 'work');
  const page = await w.page('sys-gui');
  // the strict CSP stays: xterm.js's run-time styles must not be refused (they are constructable stylesheets)
  const refusedByCsp: string[] = [];
  page.on('console', (m) => {
    if (/Content Security Policy/i.test(m.text())) refusedByCsp.push(m.text());
  });
  await page.getByRole('button', { name: 'Terminals' }).click();
  await page.getByRole('combobox', { name: 'Qube' }).selectOption('work');
  await page.getByRole('button', { name: 'Open terminal' }).click();
  const win = page.getByRole('tabpanel', { name: 'Terminal in work' });
  await win.locator('.xterm-rows').waitFor();
  await until(async () => /\S/.test((await win.locator('.xterm-rows').textContent()) ?? ''), 10_000, 'the prompt');
  // typed into xterm.js, run by the shell in work: $HOME is the qube's, and the arithmetic is done there
  await page.keyboard.type('echo "in $(basename $HOME): $((6*7))"\n');
  await until(async () => /in home: 42/.test((await win.locator('.xterm-rows').textContent()) ?? ''), 10_000, 'the command output');
  // a 24-bit colour (a cell style) and the theme (xterm's computed stylesheet) are applied
  await page.keyboard.type("printf '\\033[38;2;255;128;0mORANGE\\033[0m\\n'\n");
  const orange = win.locator('.xterm-rows span', { hasText: /^ORANGE$/ }).first();
  await orange.waitFor({ timeout: 10_000 });
  assert.equal(await orange.evaluate((e) => getComputedStyle(e).color), 'rgb(255, 128, 0)');
  assert.equal(await win.locator('.xterm-rows').evaluate((e) => getComputedStyle(e).color), 'rgb(230, 237, 245)');
  const row = await win.locator('.xterm-rows > div').first().evaluate((e) => ({ h: e.getBoundingClientRect().height, overflow: getComputedStyle(e).overflow }));
  assert.ok(row.h > 8 && row.overflow === 'hidden', `rows sized by xterm's dimension rules: ${JSON.stringify(row)}`);
  await shot(page, '19-terminal');

  // the window fits its box, and the pty in work follows the window's size (gui.TerminalResize)
  const sizeLabel = win.getByLabel('Size of the terminal in work');
  const shown = async (): Promise<string> => `${await sizeLabel.getAttribute('data-rows')} ${await sizeLabel.getAttribute('data-cols')}`;
  let probe = 0;
  const ptySize = async (): Promise<string> => {
    probe++;
    await page.keyboard.type(`echo "pty${probe}: $(stty size)"\n`);
    const re = new RegExp(`pty${probe}: (\\d+ \\d+)`);
    let m: RegExpExecArray | null = null;
    await until(async () => (m = re.exec((await win.locator('.xterm-rows').textContent()) ?? '')) !== null, 10_000, `the size printed (${probe})`);
    return (m as unknown as RegExpExecArray)[1] as string;
  };
  await until(async () => (await shown()) !== '28 100', 10_000, 'the window fitted to its box');
  const wide = await shown();
  await until(async () => (await ptySize()) === wide, 15_000, `the pty at ${wide}`);
  await page.setViewportSize({ width: 900, height: 800 });
  await until(async () => (await shown()) !== wide, 10_000, 'the window narrower');
  const narrow = await shown();
  assert.ok(Number(narrow.split(' ')[1]) < Number(wide.split(' ')[1]), `${narrow} narrower than ${wide}`);
  await until(async () => (await ptySize()) === narrow, 15_000, `the pty at ${narrow}`);
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.keyboard.type('exit\n');
  await win.getByText(/ended \(exit status 0\)/).waitFor({ timeout: 10_000 });
  await page.getByRole('button', { name: 'Close terminal in work' }).click();

  // not one of sys-gui's qubes: the policy refuses the call (the web app offers only its own anyway)
  const refused = await page.evaluate(async () => {
    const csrf = document.querySelector<HTMLMetaElement>('meta[name="qgui-csrf"]')?.content ?? '';
    const r = await fetch('/api/terms', { method: 'POST', headers: { 'content-type': 'application/json', 'x-qgui-csrf': csrf }, body: JSON.stringify({ qube: 'alice', cols: 80, rows: 24 }) });
    const { id } = (await r.json()) as { id: string };
    for (let i = 0; i < 100; i++) {
      const b = (await (await fetch(`/api/terms/${id}`)).json()) as { exit: number | null; data: string };
      if (b.exit !== null) return b;
      await new Promise((res) => setTimeout(res, 50));
    }
    return null;
  });
  assert.deepEqual(refused, { exit: 126, data: '', qube: 'alice', total: 0 });
  assert.deepEqual(refusedByCsp, []);
  await page.context().close();
});

void test("sound: per-qube volume and mute in the settings, each an audio.Volume call to the qube's audiovm (sys-audio) under the policy; another GUI domain is refused", { timeout: 60_000 }, async () => {
  const volumes = path.join(w.dir, 'data', 'qubes', 'sys-audio', 'home', 'QubesAudio', '.volume');
  const stored = (q: string): string => (fs.existsSync(path.join(volumes, q)) ? fs.readFileSync(path.join(volumes, q), 'utf8') : '');
  const page = await w.page('sys-gui');
  await page.getByRole('button', { name: 'Settings of work' }).click();
  const sound = page.getByRole('region', { name: 'Sound of work' });
  const volume = sound.getByRole('slider', { name: 'Volume of work' });
  await volume.waitFor();
  await sound.getByText('through sys-audio').waitFor();
  assert.equal(await volume.inputValue(), '100');
  await volume.fill('40');
  await until(() => stored('work') === 'volume=40 muted=0\n', 10_000, 'volume 40 kept in sys-audio');
  const mute = sound.getByRole('button', { name: 'Mute work' });
  await mute.click();
  await until(() => stored('work') === 'volume=40 muted=1\n', 10_000, 'work muted in sys-audio');
  await until(async () => (await mute.getAttribute('aria-pressed')) === 'true' && (await volume.isDisabled()), 5000, 'the widget shows it muted');
  await shot(page, '22-sound');
  // what sys-audio answers sys-gui is what the widget shows
  assert.match((await callFrom('sys-gui', 'sys-audio', 'audio.Volume+work')).out, /^volume=40 muted=1$/m);
  await mute.click();
  await until(() => stored('work') === 'volume=40 muted=0\n', 10_000, 'work unmuted');
  await page.context().close();

  // the policy lets only sys-gui set volumes: sys-gui-2's page shows the refusal, and nothing is kept
  const page2 = await w.page('sys-gui-2');
  await page2.getByRole('button', { name: 'Settings of alice', exact: true }).click();
  await page2.getByRole('region', { name: 'Sound of alice' }).getByRole('alert').filter({ hasText: /refused by the policy/ }).waitFor({ timeout: 10_000 });
  assert.equal((await callFrom('sys-gui-2', 'sys-audio', 'audio.Volume+alice', '0\n')).code, 126);
  assert.equal(stored('alice'), '');
  await page2.context().close();
});

void test('qube manager: a disposable of a disposable template of ours is started (CreateDisposable then Start, as the reference), listed live and dropped when killed; another GUI domain cannot; a qube given to another GUI domain leaves the list; template_for_dispvms and audiovm are edited in the settings', { timeout: 120_000 }, async () => {
  await w.admin('admin.vm.Create.AppVM', 'dom0', '', 'name=web-dvm label=red');
  await w.admin('admin.vm.Create.AppVM', 'dom0', '', 'name=alice-dvm label=green');
  await w.admin('admin.vm.property.Set', 'alice-dvm', 'guivm', 'sys-gui-2');
  await w.admin('admin.vm.property.Set', 'alice-dvm', 'template_for_dispvms', 'True');
  const page = await w.page('sys-gui');
  await page.locator('tr[data-qube="web-dvm"]').waitFor({ timeout: 10_000 });
  const startDisp = page.getByRole('button', { name: 'Start a disposable of web-dvm', exact: true });
  assert.equal(await startDisp.count(), 0, 'not a disposable template yet');

  // the settings make it one, and change its audio domain
  await page.getByRole('button', { name: 'Settings of web-dvm', exact: true }).click();
  const dlg = page.getByRole('dialog', { name: 'Settings of web-dvm' });
  await dlg.getByRole('combobox', { name: 'template_for_dispvms' }).selectOption('True');
  await dlg.getByRole('textbox', { name: 'audiovm' }).fill('');
  await dlg.getByRole('button', { name: 'Save' }).click();
  const reg = w.sys.qubesd.registry;
  await until(() => reg.byName('web-dvm')?.get('template_for_dispvms') === true && (reg.byName('web-dvm')?.get('audiovm') ?? null) === null, 10_000, 'template_for_dispvms and audiovm set');
  await dlg.getByText('web-dvm has no audio domain').waitFor({ timeout: 10_000 });
  await dlg.getByRole('textbox', { name: 'audiovm' }).fill('sys-audio');
  await dlg.getByRole('button', { name: 'Save' }).click();
  await until(() => reg.byName('web-dvm')?.get('audiovm') === 'sys-audio', 10_000, 'audiovm sys-audio again');
  await dlg.getByRole('button', { name: 'Close' }).click();

  // start a disposable: a new row, running, sys-gui's (its set-created-guivm)
  const before = new Set(await rowNames(page));
  await startDisp.click();
  await page.getByRole('status').filter({ hasText: /^Started disp\d+, a disposable of web-dvm$/ }).waitFor({ timeout: 30_000 });
  const disp = (/^Started (disp\d+)/.exec((await page.getByRole('status').filter({ hasText: /^Started disp/ }).textContent()) ?? '') as RegExpExecArray)[1] as string;
  assert.ok(!before.has(disp));
  await until(async () => (await stateOf(page, disp).textContent().catch(() => '')) === 'Running', 30_000, `${disp} Running in the page`);
  const q = reg.byName(disp);
  assert.equal(q?.klass, 'DispVM');
  assert.equal(q?.get('template'), 'web-dvm');
  assert.equal(q?.get('guivm'), 'sys-gui');
  assert.equal(q?.power, 'Running');
  await shot(page, '23-disposable');

  // not for another GUI domain's template: not through the web app, not directly
  const forged = await page.evaluate(async () => {
    const csrf = document.querySelector<HTMLMetaElement>('meta[name="qgui-csrf"]')?.content ?? '';
    const post = (p: string) => fetch(p, { method: 'POST', headers: { 'content-type': 'application/json', 'x-qgui-csrf': csrf }, body: '{}' }).then((r) => r.status);
    return { other: await post('/api/qubes/alice-dvm/dispvm'), notTemplate: await post('/api/qubes/work/dispvm') };
  });
  assert.deepEqual(forged, { other: 404, notTemplate: 400 });
  assert.equal((await callFrom('sys-gui', 'alice-dvm', 'admin.vm.CreateDisposable')).code, 126);
  assert.equal((await callFrom('sys-gui-2', 'web-dvm', 'admin.vm.CreateDisposable')).code, 126);
  const page2 = await w.page('sys-gui-2');
  await page2.locator('tr[data-qube="alice-dvm"]').waitFor({ timeout: 10_000 });
  assert.ok(!(await rowNames(page2)).includes(disp));
  assert.equal(reg.list().filter((x) => x.klass === 'DispVM').length, 1, 'one disposable only');

  // killed: the disposable is removed (auto_cleanup) and its row goes (domain-delete)
  await page.getByRole('button', { name: `Kill ${disp}`, exact: true }).click();
  await until(async () => !(await rowNames(page)).includes(disp), 30_000, `${disp} gone from the page`);
  await until(() => reg.byName(disp) === undefined, 10_000, `${disp} removed`);

  // a qube given to another GUI domain (its guivm-sys-gui tag removed) leaves the list, and joins the other's
  await w.admin('admin.vm.property.Set', 'web-dvm', 'guivm', 'sys-gui-2');
  await until(async () => !(await rowNames(page)).includes('web-dvm'), 10_000, 'web-dvm gone from sys-gui');
  await page2.locator('tr[data-qube="web-dvm"]').waitFor({ timeout: 10_000 });
  await page.context().close();
  await page2.context().close();
  for (const n of ['web-dvm', 'alice-dvm']) await w.admin('admin.vm.Remove', n);
});

// last in this file: it leaves the RemoteVM in the world
void test('qube manager: a RemoteVM (Qubes Air) tagged for this GUI domain after its creation is listed, with no power actions (qubes-issues#10121)', { timeout: 60_000 }, async () => {
  const page = await w.page('sys-gui');
  await page.getByRole('button', { name: 'Qubes' }).click();
  await page.getByRole('table', { name: 'Qubes' }).waitFor();
  await w.admin('admin.vm.Create.RemoteVM', 'dom0', '', 'name=far label=gray');
  await w.admin('admin.vm.tag.Set', 'far', 'guivm-sys-gui'); // a RemoteVM has no guivm property: the tag the policy uses
  const far = page.locator('tr[data-qube="far"]');
  await far.waitFor({ timeout: 10_000 });
  assert.equal(await far.locator('td').nth(1).textContent(), 'RemoteVM');
  assert.deepEqual(await far.locator('td.row-actions button').evaluateAll((bs) => bs.map((b) => b.getAttribute('aria-label'))), ['Settings of far']);
  // a local qube in the same list keeps its power actions
  assert.ok((await page.locator('tr[data-qube="work"] td.row-actions button').count()) > 1);
  // the tag removed: no longer this GUI domain's, its row goes at once
  await w.admin('admin.vm.tag.Remove', 'far', 'guivm-sys-gui');
  await until(async () => !(await rowNames(page)).includes('far'), 10_000, 'far gone from the list');
  await page.context().close();
});
