/**
 * Answer a stream of lines as they arrive: one answer line per non-empty
 * input line, written as soon as the input chunk holding it has been read
 * (one write per chunk, not per line), so that a program can drive us as a
 * coprocess: write a line, read its answer, write the next.
 */
import type { Readable, Writable } from 'node:stream';

/**
 * Calls `answer(line, lineno)` for each non-empty line of `input` and writes
 * its result (one line) to `output`. Resolves when `input` ends and every
 * answer is written. Backpressure: input is paused while output is full.
 */
export function answerLines(input: Readable, output: Writable, answer: (line: string, lineno: number) => string): Promise<void> {
  return new Promise((resolve, reject) => {
    let rest = '';
    let lineno = 0;
    const take = (text: string, final: boolean): void => {
      const parts = (rest + text).split('\n');
      rest = final ? '' : (parts.pop() as string);
      const out: string[] = [];
      for (const line of parts) {
        lineno++;
        if (line.trim() === '') continue;
        out.push(answer(line, lineno));
      }
      if (out.length === 0) return;
      if (!output.write(out.join('\n') + '\n')) {
        input.pause();
        output.once('drain', () => input.resume());
      }
    };
    input.setEncoding('utf8');
    input.on('data', (chunk: string) => take(chunk, false));
    input.on('end', () => {
      take('', true);
      resolve();
    });
    input.on('error', reject);
    output.on('error', reject);
  });
}
