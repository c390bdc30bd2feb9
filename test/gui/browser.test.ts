/**
 * The GUI domain in a real browser: Debian's Chromium, headless, driven by
 * playwright-core. Every request the page makes goes through
 * qrexec-gui-proxy, a qrexec call from dom0 to gui.Http in sys-gui (decided
 * by the policy daemon, audited), to qrexec-gui-server; the ask prompts come
 * from real qrexec-client-vm calls in work, through the policy daemon and
 * policy.Ask in sys-gui. Screenshots of each step go to test-artifacts/gui/.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as http from 'node:http';
import { spawnSync } from 'node:child_process';
import type { Page } from 'playwright-core';
import { CHROMIUM, GuiWorld, ROOT } from './harness.js';

const haveChromium = fs.existsSync(CHROMIUM);
// in CI the browser is installed by .ci/run: its absence is a failure there
const skip = !haveChromium && !process.env['CI'] ? `no ${CHROMIUM} (apt-get install chromium)` : false;

/** The session cookie a login with `token` sets (through the proxy, with Node's fetch). */
async function login(w: GuiWorld): Promise<string> {
  const r = await fetch(`${w.url}/?token=${w.token}`, { redirect: 'manual' });
  assert.equal(r.status, 303);
  const c = r.headers.get('set-cookie') ?? '';
  return c.split(';')[0] as string;
}

async function pendingAsks(w: GuiWorld, cookie: string): Promise<{ id: string; source: string }[]> {
  const r = await fetch(`${w.url}/api/state`, { headers: { cookie } });
  assert.equal(r.status, 200);
  return ((await r.json()) as { asks: { id: string; source: string }[] }).asks;
}

async function waitAsks(w: GuiWorld, cookie: string, n: number): Promise<{ id: string; source: string }[]> {
  const end = Date.now() + 10_000;
  for (;;) {
    const a = await pendingAsks(w, cookie);
    if (a.length === n) return a;
    if (Date.now() > end) throw new Error(`expected ${n} pending asks, have ${a.length}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('GUI domain in Chromium', { skip, timeout: 110_000 }, () => {
  let w: GuiWorld;
  let page: Page;

  before(async () => {
    w = await GuiWorld.start();
    page = await w.page();
  });
  after(async () => {
    await w?.close();
  });

  test('answer an ask: a click before the 1 s arm does nothing; the call goes to the chosen target', async () => {
    const call = w.call('work', '@default', 'test.Echo', 'hello');
    const dialog = page.getByRole('dialog', { name: 'Operation execution' });
    await dialog.waitFor({ timeout: 10_000 });
    const shownAt = Date.now();
    await w.shot(page, '01-ask-shown');
    // the source with its label colour, the service as text
    const source = dialog.locator('.qube', { hasText: 'work' });
    assert.match((await source.getAttribute('class')) ?? '', /label-blue/);
    assert.match(await dialog.textContent() ?? '', /work \(blue label\) wants to call test\.Echo/);
    // only the offered targets, the default preselected
    const target = dialog.getByRole('combobox', { name: 'Target' });
    assert.equal(await target.inputValue(), 'vault');
    const options = (await target.locator('option').allTextContents()).sort();
    assert.deepEqual(options, ['personal', 'sys-gui', 'vault']);
    // before the arm: Allow is disabled, a click and Enter do nothing
    const allow = dialog.getByRole('button', { name: 'Allow' });
    assert.equal(await allow.isDisabled(), true);
    await allow.click({ force: true, timeout: 2000 });
    await page.keyboard.press('Enter');
    await page.keyboard.press('Escape');
    assert.equal(await dialog.isVisible(), true, 'the prompt is still there');
    // a focus loss restarts the second
    await page.waitForTimeout(600);
    await page.evaluate(() => window.dispatchEvent(new Event('blur')));
    await page.waitForTimeout(600);
    assert.equal(await allow.isDisabled(), true, 'still disarmed 1.2 s after showing, 0.6 s after a blur');
    await target.selectOption('personal');
    await allow.waitFor({ state: 'visible' });
    await page.waitForFunction(() => {
      const b = [...document.querySelectorAll('button')].find((x) => x.textContent === 'Allow');
      return b !== undefined && !b.disabled;
    }, undefined, { timeout: 5000 });
    assert.ok(Date.now() - shownAt >= 1000, 'armed only after a second');
    await w.shot(page, '02-ask-armed');
    await allow.click();
    const r = await call;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'personal got: hello\n');
    await dialog.waitFor({ state: 'detached', timeout: 5000 });
    // the browser's requests were qrexec calls dom0 -> sys-gui, in the audit log
    const audit = spawnSync(`${ROOT}/bin/qrexec-audit`, ['--db', w.auditDb, '--json'], { encoding: 'utf8' });
    const rows = audit.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.ok(rows.some((x) => x['service'] === 'gui.Http' && x['source'] === 'dom0' && x['result'] === 'allow'), audit.stdout);
    assert.ok(rows.some((x) => x['service'] === 'test.Echo' && x['ask_answer'] === 'allow:personal'), audit.stdout);
  });

  test('deny by closing; prompts queue and keep their order', async () => {
    const first = w.call('work', '@default', 'test.Echo', 'one');
    const dialog = page.getByRole('dialog', { name: 'Operation execution' });
    await dialog.waitFor({ timeout: 10_000 });
    const second = w.call('work', '@default', 'test.Echo', 'two');
    await dialog.getByText('1 more request waiting').waitFor({ timeout: 10_000 });
    await w.shot(page, '03-ask-queued');
    await dialog.getByRole('button', { name: 'Close' }).click();
    const r1 = await first;
    assert.equal(r1.code, 126, 'closing denies');
    assert.equal(r1.stdout, '');
    // the second is shown now, with a fresh arm
    await dialog.waitFor({ timeout: 5000 });
    assert.equal(await dialog.getByText('more request').count(), 0);
    await page.waitForFunction(() => [...document.querySelectorAll('button')].some((x) => x.textContent === 'Deny' && !x.disabled), undefined, { timeout: 5000 });
    await dialog.getByRole('button', { name: 'Deny' }).click();
    assert.equal((await second).code, 126);
  });

  test('a notification appears as a toast and stays in the history', async () => {
    const r = await w.call('work', 'vault', 'test.Denied');
    assert.equal(r.code, 126);
    const toast = page.getByRole('status').filter({ hasText: 'Denied: test.Denied from work to vault' });
    await toast.waitFor({ timeout: 5000 });
    await w.shot(page, '04-notification');
    await page.getByRole('button', { name: /^Notifications/ }).click();
    const table = page.getByRole('table', { name: 'Notification history' });
    await table.waitFor();
    assert.equal(await table.getByRole('row').filter({ hasText: 'test.Denied' }).count(), 1);
    await page.getByRole('searchbox', { name: 'Filter notifications' }).fill('nothing-like-this');
    await page.getByText('No notification matches the filter.').waitFor();
    await page.getByRole('searchbox', { name: 'Filter notifications' }).fill('vault');
    await table.waitFor();
    await w.shot(page, '05-history');
    await page.getByRole('button', { name: /^Requests/ }).click();
  });

  test('the page cannot be used without the token', async () => {
    const ctx = await w.context();
    const p = await ctx.newPage();
    const res = await p.goto(`${w.url}/`);
    assert.equal(res?.status(), 401);
    await p.getByRole('textbox', { name: 'Token' }).waitFor();
    assert.equal(await p.getByRole('navigation', { name: 'Main' }).count(), 0);
    await w.shot(p, '06-login');
    const api = await p.evaluate(async () => (await fetch('/api/state')).status);
    assert.equal(api, 401);
    const bad = await p.goto(`${w.url}/?token=${'0'.repeat(w.token.length)}`);
    assert.equal(bad?.status(), 403);
    // the login form with the right token gets in
    await p.getByRole('textbox', { name: 'Token' }).fill(w.token);
    await p.getByRole('button', { name: 'Log in' }).click();
    await p.getByRole('navigation', { name: 'Main' }).waitFor({ timeout: 5000 });
    await ctx.close();
    // and without a session the API refuses everything
    for (const [method, path] of [['GET', '/api/state'], ['GET', '/api/events'], ['POST', '/api/asks/x']] as const) {
      const r = await fetch(`${w.url}${path}`, { method, headers: { 'content-type': 'application/json' }, body: method === 'POST' ? '{}' : null });
      assert.equal(r.status, 401, `${method} ${path}`);
    }
  });

  test('a request from another origin is refused', async () => {
    const cookie = await login(w);
    const call = w.call('work', '@default', 'test.Echo', 'evil');
    const [ask] = await waitAsks(w, cookie, 1);
    const id = (ask as { id: string }).id;
    const csrf = /name="qgui-csrf" content="([^"]+)"/.exec(await (await fetch(`${w.url}/`, { headers: { cookie } })).text())?.[1] ?? '';
    assert.ok(csrf.length > 10);
    const post = (headers: Record<string, string>): Promise<Response> =>
      fetch(`${w.url}/api/asks/${id}`, { method: 'POST', headers: { cookie, 'content-type': 'application/json', 'x-qgui-csrf': csrf, ...headers }, body: JSON.stringify({ target: 'vault' }) });
    assert.equal((await post({ origin: 'http://evil.example' })).status, 403, 'foreign Origin');
    assert.equal((await post({ 'sec-fetch-site': 'cross-site' })).status, 403, 'cross-site fetch');
    assert.equal((await post({ 'x-qgui-csrf': 'wrong' })).status, 403, 'wrong CSRF token');
    // DNS rebinding: a foreign Host (fetch cannot set Host: a raw request)
    const rebound = await new Promise<number>((resolve, reject) => {
      const u = new URL(w.url);
      const q = http.request({ host: u.hostname, port: u.port, path: `/api/asks/${id}`, method: 'POST', headers: { host: 'evil.example', cookie, 'content-type': 'application/json', 'x-qgui-csrf': csrf } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      q.on('error', reject);
      q.end(JSON.stringify({ target: 'vault' }));
    });
    assert.equal(rebound, 421, 'DNS rebinding: a foreign Host');
    // a page of another origin in the same browser, where the user is logged in
    const evil = http.createServer((_q, s) => {
      s.writeHead(200, { 'content-type': 'text/html' });
      s.end(`<script>fetch(${JSON.stringify(`${w.url}/api/asks/${id}`)}, {method: 'POST', mode: 'no-cors', credentials: 'include', headers: {'content-type': 'text/plain'}, body: '{"target":"vault"}'}).catch(() => {}).finally(() => document.title = 'sent');</script>`);
    });
    await new Promise<void>((r) => evil.listen(0, '127.0.0.1', () => r()));
    const evilPort = (evil.address() as { port: number }).port;
    const p2 = await page.context().newPage();
    await p2.goto(`http://localhost:${evilPort}/`);
    await p2.waitForFunction(() => document.title === 'sent', undefined, { timeout: 5000 });
    await p2.close();
    evil.close();
    assert.equal((await pendingAsks(w, cookie)).length, 1, 'the ask is still pending');
    // the right request (same origin, CSRF token, after the arm) answers it
    await new Promise((r) => setTimeout(r, 1000));
    const ok = await post({ origin: w.url });
    assert.equal(ok.status, 200, await ok.text());
    const r = await call;
    assert.equal(r.stdout, 'vault got: evil\n');
  });
});
