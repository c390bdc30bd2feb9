/**
 * `npm start`'s own host (bin/qubes-host, a child process, the demo system
 * with sys-gui; bwrap sandboxes as root): the tour's file copy from work to
 * personal, run exactly as printed, raises an ask that the browser answers
 * on the printed URL. Allow does nothing before the 1 s arm; after it, the
 * copy goes through and the file is in personal.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Browser } from 'playwright-core';
import { waitFor } from '../e2e/harness.js';
import { ARTIFACTS, CHROMIUM, launchChromium, ROOT } from './harness.js';

const skip = !fs.existsSync(CHROMIUM) && !process.env['CI'] ? `no ${CHROMIUM} (apt-get install chromium)` : false;

/** A shell command run from the repository's root, as a user of the tour would. */
function sh(command: string): { done: Promise<{ code: number | null; out: string }>; settled: () => boolean } {
  const p = spawn('/bin/sh', ['-c', command], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, QREXEC_HOST_DIR: '' } });
  let out = '';
  let settled = false;
  p.stdout.on('data', (d: Buffer) => (out += d.toString()));
  p.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const done = new Promise<{ code: number | null; out: string }>((r) =>
    p.on('close', (code) => {
      settled = true;
      r({ code, out });
    }),
  );
  return { done, settled: () => settled };
}

/** The command printed under the tour's comment matching `what`. */
function tourCommand(out: string, what: RegExp): string {
  const lines = out.split('\n');
  const i = lines.findIndex((l) => /^\s+# /.test(l) && what.test(l));
  const cmd = lines[i + 1]?.trim();
  assert.ok(i >= 0 && cmd, `no tour step ${what} in:\n${out}`);
  return cmd;
}

void test("npm start's demo: the ask of the tour's file copy is answered in the browser; Allow does nothing before the 1 s arm", { skip, timeout: 240_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qgui-demo-'));
  fs.chmodSync(dir, 0o755);
  const host = spawn(process.execPath, [path.join(ROOT, 'bin', 'qubes-host'), '--data-dir', path.join(dir, 'data')], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, QREXEC_HOST_DIR: '' } });
  let out = '';
  host.stdout.on('data', (d: Buffer) => (out += d.toString()));
  host.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => host.once('exit', (c) => r(c)));
  let browser: Browser | null = null;
  try {
    await waitFor(() => Promise.resolve(/Ctrl-C stops every qube/.test(out) || host.exitCode !== null), 120_000, 'the host up');
    const url = /^qubes-host: sys-gui: open (http:\/\/127\.0\.0\.1:\d+\/\?token=\w+)$/m.exec(out)?.[1];
    const exportLine = out.split('\n').find((l) => l.trim().startsWith('export QREXEC_HOST_DIR='))?.trim();
    assert.ok(url && exportLine, out);
    const copy = tourCommand(out, /copy a file from work to personal: the policy asks, answer in the browser/);
    const read = tourCommand(out, /the file in personal/);

    browser = await launchChromium();
    const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
    await page.goto(url);
    await page.getByRole('navigation', { name: 'Main' }).waitFor();

    // the early answers are tried in the page the moment the prompt appears (a MutationObserver), so
    // they come before the 1 s arm however slow this machine is: pick the target, click Allow, press Enter
    await page.evaluate(() => {
      const w = window as unknown as { early: Promise<{ disabled: boolean; afterMs: number }> };
      w.early = new Promise((resolve) => {
        const mo = new MutationObserver(() => {
          const d = document.querySelector('.dialog.ask');
          if (!d) return;
          mo.disconnect();
          const shown = performance.now();
          const select = d.querySelector('select');
          if (select) {
            select.value = 'personal';
            select.dispatchEvent(new Event('change', { bubbles: true }));
          }
          setTimeout(() => {
            const allow = [...d.querySelectorAll('button')].find((b) => b.textContent === 'Allow');
            const disabled = allow?.disabled ?? false;
            allow?.click();
            document.dispatchEvent(new KeyboardEvent('keydown', { key: 'Enter', bubbles: true }));
            resolve({ disabled, afterMs: performance.now() - shown });
          }, 100);
        });
        mo.observe(document.body, { childList: true, subtree: true });
      });
    });
    const call = sh(`${exportLine}; ${copy}`);
    const dialog = page.getByRole('dialog', { name: 'Operation execution' });
    await dialog.waitFor({ timeout: 30_000 });
    assert.match((await dialog.textContent()) ?? '', /work \(blue label\) wants to call qubes\.Filecopy/);
    const early = await page.evaluate(() => (window as unknown as { early: Promise<{ disabled: boolean; afterMs: number }> }).early);
    assert.ok(early.afterMs < 1000, `the early click came ${early.afterMs} ms after the prompt`);
    assert.equal(early.disabled, true, 'Allow is disabled before the arm');
    await page.waitForTimeout(300);
    assert.equal(await dialog.isVisible(), true, 'the prompt is still there');
    assert.equal(call.settled(), false, 'the copy still waits for the answer');
    // no default_target in the rule: nothing was preselected; the user picks among the targets the policy offers (as the reference)
    const target = dialog.getByRole('combobox', { name: 'Target' });
    assert.ok((await target.locator('option:not([disabled])').allTextContents()).includes('personal'));
    assert.equal(await dialog.locator('option[value=""]').count(), 1, 'a "Choose a qube" placeholder: no default target');
    await target.selectOption('personal');
    // the chosen target's dot has its own label colour (yellow), not the source's (blue)
    const colour = (css: string): Promise<string> => page.locator(css).first().evaluate((e) => getComputedStyle(e).backgroundColor);
    assert.equal(await colour('.dialog .select-wrap .dot'), await colour('.qube.label-yellow > .dot'));
    assert.notEqual(await colour('.dialog .select-wrap .dot'), await colour('.dialog .qube.label-blue > .dot'));
    await page.screenshot({ path: path.join(ARTIFACTS, '20-demo-ask.png') });
    const allow = dialog.getByRole('button', { name: 'Allow' });
    await waitFor(() => allow.isEnabled(), 5000, 'Allow armed');
    await page.screenshot({ path: path.join(ARTIFACTS, '21-demo-ask-armed.png') });
    await allow.click();
    const r = await call.done;
    assert.equal(r.code, 0, r.out);
    await dialog.waitFor({ state: 'detached', timeout: 5000 });
    const got = await sh(`${exportLine}; ${read}`).done;
    assert.equal(got.code, 0, got.out);
    assert.match(got.out, /^hello from work$/m);
  } finally {
    await browser?.close().catch(() => undefined);
    host.kill('SIGTERM');
    assert.equal(await exited, 0, out);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
