/**
 * Command blocks of a Markdown page, and running them as a reader would,
 * from the root of the checkout.
 *
 * - ```sh / ```bash blocks are scripts: run with `bash -e -o pipefail`, they
 *   must exit 0.
 * - ```console blocks are sessions: `$ COMMAND` lines (a line ending in `\`
 *   continues on the next), each followed by the output it prints (stdout and
 *   stderr together). The commands run in one shell, in order; each one's
 *   output must be what the page shows, except that a line `...` stands for
 *   any number of lines.
 * - A block preceded (on the line just before its fence) by
 *   `<!-- doc-test: skip (REASON) -->` is not run: the reason is required.
 * - Blocks in other languages (text, json...) are not commands.
 */
import { spawn } from 'node:child_process';

export interface Block {
  /** 1-based line of the opening fence. */
  readonly line: number;
  readonly lang: string;
  readonly body: string;
  /** The reason given in a skip marker, or undefined when the block is to run. */
  readonly skip: string | undefined;
}

const RUNNABLE = new Set(['sh', 'bash', 'console']);
const MARKER = /^<!--\s*doc-test:\s*skip\s*\((.+)\)\s*-->\s*$/;

/** The command blocks (sh, bash, console) of a page, in order. */
export function commandBlocks(markdown: string): Block[] {
  const lines = markdown.split('\n');
  const out: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    const m = /^```(\S*)\s*$/.exec(lines[i] as string);
    if (!m) continue;
    const lang = m[1] as string;
    let j = i + 1;
    while (j < lines.length && !/^```\s*$/.test(lines[j] as string)) j++;
    if (RUNNABLE.has(lang)) {
      const marker = i > 0 ? MARKER.exec(lines[i - 1] as string) : null;
      out.push({ line: i + 1, lang, body: lines.slice(i + 1, j).join('\n'), skip: marker ? (marker[1] as string) : undefined });
    }
    i = j;
  }
  return out;
}

/** A skip marker that is not on the line just before a command block (a typo would silently run nothing, or everything). */
export function strayMarkers(markdown: string): number[] {
  const lines = markdown.split('\n');
  const bad: number[] = [];
  lines.forEach((l, i) => {
    if (!/doc-test/.test(l)) return;
    if (!MARKER.test(l) || !/^```(sh|bash|console)\s*$/.test(lines[i + 1] ?? '')) bad.push(i + 1);
  });
  return bad;
}

export interface SessionStep {
  readonly command: string;
  readonly expected: string[];
}

/** The commands of a console block and the output shown after each. */
export function sessionSteps(body: string): SessionStep[] {
  const steps: { command: string; expected: string[] }[] = [];
  const lines = body.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i] as string;
    if (l.startsWith('$ ')) {
      let cmd = l.slice(2);
      while (cmd.endsWith('\\') && i + 1 < lines.length) cmd += '\n' + (lines[++i] as string);
      steps.push({ command: cmd, expected: [] });
    } else if (steps.length > 0) {
      (steps[steps.length - 1] as { expected: string[] }).expected.push(l);
    } else if (l.trim() !== '') {
      throw new Error(`console block: output before the first "$ " command: ${l}`);
    }
  }
  for (const s of steps) while (s.expected.length > 0 && (s.expected[s.expected.length - 1] as string).trim() === '') s.expected.pop();
  return steps;
}

/** Does `actual` match `expected`, where an expected line `...` matches any run of lines? */
export function outputMatches(expected: readonly string[], actual: readonly string[]): boolean {
  const e = expected.map((l) => l.trimEnd());
  const a = actual.map((l) => l.trimEnd());
  const memo = new Map<string, boolean>();
  const m = (i: number, j: number): boolean => {
    const key = `${i},${j}`;
    const hit = memo.get(key);
    if (hit !== undefined) return hit;
    let r: boolean;
    if (i === e.length) r = j === a.length;
    else if (e[i] === '...') r = m(i + 1, j) || (j < a.length && m(i, j + 1));
    else r = j < a.length && e[i] === a[j] && m(i + 1, j + 1);
    memo.set(key, r);
    return r;
  };
  return m(0, 0);
}

export interface RunResult {
  readonly code: number | null;
  readonly output: string;
}

/** Run a bash script in `cwd`; stdout and stderr together. */
export function runBash(script: string, cwd: string, timeoutMs: number, flags: readonly string[] = []): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [...flags, '-c', script], { cwd, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const timer = setTimeout(() => {
      try {
        process.kill(-(child.pid as number), 'SIGKILL');
      } catch {
        /* gone */
      }
      reject(new Error(`still running after ${timeoutMs} ms:\n${script}\n--- output:\n${output}`));
    }, timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      // whatever a block left running in the background goes with it
      try {
        process.kill(-(child.pid as number), 'SIGKILL');
      } catch {
        /* none left */
      }
      resolve({ code, output });
    });
  });
}

const DELIM = '@@doc-test-step@@';

/** Run a console block's commands in one shell; each command's output (stderr merged). */
export async function runSession(steps: readonly SessionStep[], cwd: string, timeoutMs: number): Promise<{ outputs: string[][]; raw: string }> {
  const script = ['exec 2>&1', ...steps.map((s) => `printf '%s\\n' '${DELIM}'\n${s.command}`)].join('\n');
  const r = await runBash(script, cwd, timeoutMs);
  const parts = r.output.split(`${DELIM}\n`);
  parts.shift(); // before the first command
  const outputs = parts.map((p) => {
    const lines = p.split('\n');
    while (lines.length > 0 && (lines[lines.length - 1] as string).trim() === '') lines.pop();
    return lines;
  });
  return { outputs, raw: r.output };
}
