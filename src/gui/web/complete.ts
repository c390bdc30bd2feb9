/**
 * Completion in the policy editor: what may be typed at the cursor, from
 * what the GUI domain may see (its qubes and their tags, the disposable
 * templates among them, the services named in the policy files) and the
 * policy's own keywords. The column of the rule decides the kind: service,
 * argument, source, target, action, then options (docs/POLICY.md's rule
 * format: SERVICE ARGUMENT SOURCE TARGET ACTION [OPTIONS]).
 */

export interface Vocabulary {
  readonly qubes: readonly string[];
  readonly tags: readonly string[];
  /** Disposable templates (template_for_dispvms) among the qubes. */
  readonly dispvmTemplates: readonly string[];
  readonly services: readonly string[];
}

export interface Completion {
  /** Where the replaced word starts in the text (it ends at the cursor). */
  readonly from: number;
  readonly items: readonly string[];
}

const TYPES = ['AppVM', 'TemplateVM', 'DispVM', 'StandaloneVM', 'AdminVM', 'RemoteVM'];
const ACTIONS = ['allow', 'deny', 'ask'];
const OPTIONS: Readonly<Record<string, readonly string[]>> = {
  allow: ['target=', 'user=', 'autostart=', 'notify='],
  ask: ['default_target=', 'target=', 'user=', 'autostart=', 'notify='],
  deny: ['notify='],
};
const DIRECTIVES = ['!include', '!include-dir', '!include-service'];
const MAX = 50;

/** Source or target choices: @-tokens (with their tag, type and template forms) and qube names. */
export function qubeChoices(v: Vocabulary, where: 'source' | 'target' | 'option'): string[] {
  const tokens = where === 'source' ? ['@anyvm', '@adminvm'] : where === 'target' ? ['@anyvm', '@adminvm', '@default', '@dispvm'] : ['@adminvm', '@dispvm'];
  const out = [...tokens];
  if (where !== 'option') {
    out.push(...v.tags.map((t) => `@tag:${t}`), ...TYPES.map((t) => `@type:${t}`));
    out.push(...v.tags.map((t) => `@dispvm:@tag:${t}`));
  }
  out.push(...v.dispvmTemplates.map((t) => `@dispvm:${t}`), ...v.qubes);
  return out;
}

/** Matches first by prefix, then anywhere (case-insensitive), without repeats. */
function rank(choices: readonly string[], word: string): string[] {
  const w = word.toLowerCase();
  const seen = new Set<string>();
  const pre: string[] = [];
  const mid: string[] = [];
  for (const c of choices) {
    if (seen.has(c) || c === word) continue;
    seen.add(c);
    const l = c.toLowerCase();
    if (l.startsWith(w)) pre.push(c);
    else if (w !== '' && l.includes(w)) mid.push(c);
  }
  return [...pre, ...mid].slice(0, MAX);
}

/** The completions at `cursor` in `text` (none in comments or past a word's end). */
export function complete(text: string, cursor: number, v: Vocabulary): Completion {
  const lineStart = text.lastIndexOf('\n', cursor - 1) + 1;
  const before = text.slice(lineStart, cursor);
  if (/^\s*#/.test(before)) return { from: cursor, items: [] };
  const after = text.slice(cursor, text.indexOf('\n', cursor) < 0 ? text.length : text.indexOf('\n', cursor));
  if (/^\S/.test(after)) return { from: cursor, items: [] };
  const m = /(\S*)$/.exec(before) as RegExpExecArray;
  const word = m[1] as string;
  const from = cursor - word.length;
  const cols = before.slice(0, before.length - word.length).trim().split(/\s+/).filter(Boolean);
  if (cols[0]?.startsWith('!')) {
    // !include FILE: no completion of paths
    return { from, items: cols.length === 0 ? rank(DIRECTIVES, word) : [] };
  }
  let choices: string[];
  switch (cols.length) {
    case 0:
      choices = word.startsWith('!') ? DIRECTIVES : ['*', ...v.services];
      break;
    case 1:
      choices = ['*', '+'];
      break;
    case 2:
      choices = qubeChoices(v, 'source');
      break;
    case 3:
      choices = qubeChoices(v, 'target');
      break;
    case 4:
      choices = ACTIONS;
      break;
    default: {
      const eq = word.indexOf('=');
      if (eq < 0) {
        choices = [...(OPTIONS[cols[4] as string] ?? [])].filter((o) => !cols.slice(5).some((c) => c.startsWith(o)));
        break;
      }
      // an option's value: completed after its `=`
      const key = word.slice(0, eq);
      const val = word.slice(eq + 1);
      const values = key === 'target' || key === 'default_target' ? qubeChoices(v, 'option') : key === 'autostart' || key === 'notify' ? ['yes', 'no'] : [];
      return { from: from + eq + 1, items: rank(values, val) };
    }
  }
  return { from, items: rank(choices, word) };
}
