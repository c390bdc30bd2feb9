/**
 * The audio domain (issue #13 §3): qubes play and record only through
 * qrexec services into their audiovm, under the shipped policy
 * (examples/policy.d/50-audio.policy). Real qubesd, policy daemon, qubes
 * (process backend), espeak-ng speaking in `work`, and sox checking what
 * arrived in sys-audio's file sink: its duration, and that it is not
 * silence. A qube whose audiovm is another cannot reach sys-audio;
 * recording is asked (so refused with no one to answer); volume and mute
 * come from the GUI domain only; a stream that is not audio is refused and
 * leaves no file.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT, run, startQrexecSystem, type QrexecSystem } from '../qubesd/qrexec-system.js';

const have = (cmd: string): boolean => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
const skip = !have('sox') || !have('espeak-ng') ? 'needs sox and espeak-ng (apt-get install sox espeak-ng)' : false;

/** Length in seconds and RMS amplitude of a WAV file, by sox. */
function stat(file: string): { seconds: number; rms: number } {
  const out = spawnSync('sox', [file, '-n', 'stat'], { encoding: 'utf8' }).stderr;
  const num = (label: string): number => Number(new RegExp(`${label}:\\s+([0-9.]+)`).exec(out)?.[1] ?? 'NaN');
  return { seconds: num('Length \\(seconds\\)'), rms: num('RMS\\s+amplitude') };
}

function sinkFiles(sys: QrexecSystem, source: string): string[] {
  const dir = path.join(sys.dir, 'data', 'qubes', 'sys-audio', 'home', 'QubesAudio', source);
  return fs.existsSync(dir) ? fs.readdirSync(dir).map((f) => path.join(dir, f)) : [];
}

test('audio: a qube speaks into its audiovm; others cannot; recording is asked; volume from the GUI domain', { skip, timeout: 120000 }, async () => {
  const shipped = fs.readFileSync(path.join(ROOT, 'examples/policy.d/50-audio.policy'), 'utf8');
  const sys = await startQrexecSystem(new Map([['50-audio.policy', shipped]]));
  try {
    assert.equal(await sys.admin('admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black'), '0\0');
    for (const name of ['sys-audio', 'sys-audio-2', 'sys-gui', 'work', 'other']) {
      assert.equal(await sys.admin('admin.vm.Create.AppVM', 'dom0', 'tpl', `name=${name} label=red`), '0\0');
    }
    assert.equal(await sys.admin('admin.vm.property.Set', 'work', 'audiovm', 'sys-audio'), '0\0');
    assert.equal(await sys.admin('admin.vm.property.Set', 'other', 'audiovm', 'sys-audio-2'), '0\0');
    await sys.enter('sys-audio');
    const work = await sys.enter('work');
    const other = await sys.enter('other');
    const gui = await sys.enter('sys-gui');
    const speak = (env: NodeJS.ProcessEnv, words: string, target = '@default'): ReturnType<typeof run> =>
      run('/bin/sh', ['-c', `espeak-ng --stdout '${words}' | "$QREXEC_CLIENT_VM" ${target} audio.Play`], env);

    // work plays through qrexec into its audiovm: one WAV file per stream, from the source qrexec names
    const played = await speak(work, 'hello from the work qube');
    assert.equal(played.code, 0, played.err);
    const files = sinkFiles(sys, 'work');
    assert.equal(files.length, 1);
    assert.match(path.basename(files[0] as string), /^\d{8}T\d{6}-\d+\.wav$/);
    const heard = stat(files[0] as string);
    assert.ok(heard.seconds > 0.8 && heard.seconds < 10, `duration ${heard.seconds}`);
    assert.ok(heard.rms > 0.01, `silence? rms ${heard.rms}`);

    // a qube whose audiovm is another reaches no sys-audio, by @default or by name
    assert.equal((await speak(other, 'not heard')).code, 126);
    assert.equal((await speak(other, 'not heard', 'sys-audio')).code, 126);
    assert.equal(sinkFiles(sys, 'other').length, 0);

    // volume and mute: from the GUI domain, not from the qube itself
    assert.equal((await sys.call(work, 'sys-audio', 'audio.Volume+work', 'mute\n')).code, 126);
    const muted = await sys.call(gui, 'sys-audio', 'audio.Volume+work', 'mute\n');
    assert.equal(muted.out.toString(), 'volume=100 muted=1\n');
    assert.equal((await speak(work, 'you cannot hear me')).code, 0);
    const quiet = sinkFiles(sys, 'work').filter((f) => !files.includes(f));
    assert.equal(quiet.length, 1);
    assert.equal(stat(quiet[0] as string).rms, 0);
    assert.equal((await sys.call(gui, 'sys-audio', 'audio.Volume+work', '50\n')).out.toString(), 'volume=50 muted=1\n');
    assert.equal((await sys.call(gui, 'sys-audio', 'audio.Volume+work', 'unmute\n')).out.toString(), 'volume=50 muted=0\n');
    assert.notEqual((await sys.call(gui, 'sys-audio', 'audio.Volume+work', '151\n')).code, 0);

    // a stream that is not audio: refused, and nothing half-written is left
    const before = sinkFiles(sys, 'work').length;
    const junk = await sys.call(work, '@default', 'audio.Play', 'RIFF but not really a wave file');
    assert.notEqual(junk.code, 0);
    assert.match(junk.err, /audio\.Play: not a stream this qube can play/);
    assert.equal(sinkFiles(sys, 'work').length, before);
    assert.ok(!fs.readdirSync(path.dirname(files[0] as string)).some((f) => f.endsWith('.part')));

    // the microphone: asked by default, so refused with no one to answer
    const home = path.join(sys.dir, 'data', 'qubes', 'sys-audio', 'home');
    execFileSync('sox', ['-n', path.join(home, 'QubesAudio', 'microphone.wav'), 'synth', '3', 'sine', '440']);
    const asked = await sys.call(work, '@default', 'audio.Record+1');
    assert.equal(asked.code, 126);
    assert.equal(asked.out.length, 0);
    // once the user's policy allows it, work records from its audiovm only
    fs.writeFileSync(path.join(sys.policyDir, '40-mic.policy'), 'audio.Record  *  work  @default  allow target=sys-audio\n');
    let rec = asked;
    for (let i = 0; i < 100 && rec.code === 126; i++) {
      await new Promise((r) => setTimeout(r, 50));
      rec = await sys.call(work, '@default', 'audio.Record+1');
    }
    assert.equal(rec.code, 0, rec.err);
    const recFile = path.join(sys.dir, 'rec.wav');
    fs.writeFileSync(recFile, rec.bytes);
    const got = stat(recFile);
    assert.ok(Math.abs(got.seconds - 1) < 0.05, `recorded ${got.seconds} s`);
    assert.ok(got.rms > 0.5, `recorded rms ${got.rms}`);
    assert.equal((await sys.call(other, '@default', 'audio.Record+1')).code, 126);
    assert.notEqual((await sys.call(work, '@default', 'audio.Record+601')).code, 0);
  } finally {
    await sys.close();
  }
});
