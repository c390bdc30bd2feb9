/**
 * The policy editor (Policy API through sys-gui): a file list, an editor
 * with syntax highlighting and live checking by dom0 (validation errors
 * with file:line, and the impact diff: which decisions change), save with
 * the token read (a concurrent change is a conflict, never overwritten),
 * and "Explain a call" (policy.Eval). The audit log view (audit.Query):
 * filters and a live tail.
 */
import { useEffect, useLayoutEffect, useRef, useState } from 'preact/hooks';
import { complete, type Completion, type Vocabulary } from './complete.js';
import { get, post } from './api.js';
import { TableHead } from './table.js';
import { ServiceView } from './policy-service.js';
import { CheckResult, errText, usePolicyFile, type Diagnostic } from './policy-file.js';

const ACTIONS = new Set(['allow', 'deny', 'ask']);

/** One line of policy text as highlighted spans (comments, directives, @tokens, actions, options). */
function highlight(line: string): preact.ComponentChildren {
  if (/^\s*#/.test(line)) return <span class="hl-comment">{line}</span>;
  if (/^\s*!/.test(line)) return <span class="hl-directive">{line}</span>;
  const out: preact.ComponentChildren[] = [];
  let col = 0;
  for (const m of line.matchAll(/\S+|\s+/g)) {
    const t = m[0];
    if (/^\s/.test(t)) out.push(t);
    else {
      const cls = ACTIONS.has(t) ? `hl-action hl-${t}` : t.startsWith('@') ? 'hl-token' : t.includes('=') ? 'hl-option' : col === 0 ? 'hl-service' : t === '*' ? 'hl-any' : '';
      out.push(cls ? <span class={cls}>{t}</span> : t);
      col++;
    }
  }
  return out;
}

/** The text column of `pos` on its line (tabs to the next multiple of 8), and the line's index. */
function caretCell(text: string, pos: number): { line: number; col: number } {
  const lineStart = text.lastIndexOf('\n', pos - 1) + 1;
  let col = 0;
  for (const ch of text.slice(lineStart, pos)) col = ch === '\t' ? (Math.floor(col / 8) + 1) * 8 : col + 1;
  return { line: text.slice(0, lineStart).split('\n').length - 1, col };
}

/** ARIA 1.2 lets a multi-line text field be a combobox; Preact's types know only `textbox` for a textarea. */
const COMBOBOX = { role: 'combobox' } as Record<string, string>;
const LINE_PX = 20;
const PAD_TOP = 10;
const PAD_LEFT = 52;

/**
 * The policy text: a textarea over its highlighted copy. Completion follows
 * the ARIA combobox pattern: the textarea is the combobox, the suggestions a
 * listbox next to the caret; typing opens it, Ctrl+Space asks for it,
 * ArrowUp/ArrowDown choose, Enter or Tab accepts, Escape closes.
 */
function Editor({ value, onChange, diagnostics, vocabulary }: { value: string; onChange: (v: string) => void; diagnostics: readonly Diagnostic[]; vocabulary: Vocabulary }) {
  const pre = useRef<HTMLPreElement>(null);
  const area = useRef<HTMLTextAreaElement>(null);
  const caret = useRef<number | null>(null);
  const [menu, setMenu] = useState<(Completion & { active: number; top: number; left: number }) | null>(null);
  const bad = new Set(diagnostics.map((d) => d.line));
  const lines = value.split('\n');

  useLayoutEffect(() => {
    const t = area.current;
    if (t && caret.current !== null) {
      t.setSelectionRange(caret.current, caret.current);
      caret.current = null;
    }
  });

  const charPx = (): number => {
    const t = area.current;
    const ctx = document.createElement('canvas').getContext('2d');
    if (!t || !ctx) return 8;
    ctx.font = getComputedStyle(t).font;
    return ctx.measureText('0').width || 8;
  };

  /** Open (or refresh) the suggestions for the cursor; `force`: even before any letter. */
  const suggest = (text: string, pos: number, force: boolean): void => {
    const c = complete(text, pos, vocabulary);
    if (c.items.length === 0 || (!force && pos === c.from)) {
      setMenu(null);
      return;
    }
    const t = area.current;
    const cell = caretCell(text, c.from);
    const top = PAD_TOP + (cell.line + 1) * LINE_PX - (t?.scrollTop ?? 0) + 2;
    const left = Math.max(0, PAD_LEFT + cell.col * charPx() - (t?.scrollLeft ?? 0) - 4);
    setMenu({ ...c, active: 0, top, left });
  };

  const accept = (item: string): void => {
    const t = area.current;
    if (!t || !menu) return;
    const pos = t.selectionStart;
    const text = value.slice(0, menu.from) + item + value.slice(pos);
    const at = menu.from + item.length;
    caret.current = at;
    onChange(text);
    // a prefix (@tag:, target=) goes on to its values
    if (/[:=]$/.test(item)) suggest(text, at, true);
    else setMenu(null);
  };

  const onKey = (e: KeyboardEvent): void => {
    const t = e.currentTarget as HTMLTextAreaElement;
    if (e.key === ' ' && e.ctrlKey) {
      e.preventDefault();
      suggest(value, t.selectionStart, true);
      return;
    }
    if (!menu) return;
    const n = menu.items.length;
    if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
      e.preventDefault();
      setMenu({ ...menu, active: (menu.active + (e.key === 'ArrowDown' ? 1 : n - 1)) % n });
    } else if (e.key === 'Enter' || e.key === 'Tab') {
      e.preventDefault();
      accept(menu.items[menu.active] as string);
    } else if (e.key === 'Escape') {
      e.preventDefault();
      e.stopPropagation();
      setMenu(null);
    } else if (e.key === 'ArrowLeft' || e.key === 'ArrowRight' || e.key === 'Home' || e.key === 'End' || e.key === 'PageUp' || e.key === 'PageDown') setMenu(null);
  };

  return (
    <div class="editor">
      <pre class="editor-hl" ref={pre} aria-hidden="true">
        {lines.map((l, i) => (
          <div key={i} class={bad.has(i + 1) ? 'hl-line bad' : 'hl-line'}>
            <span class="ln">{i + 1}</span>
            {highlight(l)}
            {'\n'}
          </div>
        ))}
      </pre>
      <textarea
        ref={area}
        class="editor-text"
        {...COMBOBOX}
        aria-label="Policy text"
        aria-multiline="true"
        aria-autocomplete="list"
        aria-haspopup="listbox"
        aria-expanded={menu !== null}
        aria-controls="policy-completions"
        aria-activedescendant={menu ? `policy-completion-${menu.active}` : undefined}
        spellcheck={false}
        value={value}
        onKeyDown={onKey}
        onBlur={() => setMenu(null)}
        onClick={() => setMenu(null)}
        onInput={(e) => {
          const t = e.currentTarget as HTMLTextAreaElement;
          onChange(t.value);
          const typed = (e as InputEvent).inputType === 'insertText' && (e as InputEvent).data !== ' ';
          if (typed || (menu && (e as InputEvent).inputType.startsWith('delete'))) suggest(t.value, t.selectionStart, false);
          else setMenu(null);
        }}
        onScroll={(e) => {
          setMenu(null);
          if (pre.current) {
            pre.current.scrollTop = (e.currentTarget as HTMLTextAreaElement).scrollTop;
            pre.current.scrollLeft = (e.currentTarget as HTMLTextAreaElement).scrollLeft;
          }
        }}
      />
      <ul id="policy-completions" class="completions" role="listbox" aria-label="Completions" hidden={menu === null} style={menu ? { top: `${menu.top}px`, left: `${menu.left}px` } : undefined}>
        {menu?.items.map((it, i) => (
          <li
            key={it}
            id={`policy-completion-${i}`}
            role="option"
            aria-selected={i === menu.active}
            class={i === menu.active ? 'active' : ''}
            onMouseDown={(e) => {
              e.preventDefault();
              accept(it);
            }}
          >
            {it}
          </li>
        ))}
      </ul>
    </div>
  );
}

/** What the editor completes (the server's /api/policy/vocabulary), the qube list until it came. */
function useVocabulary(qubes: readonly string[]): Vocabulary {
  const [v, setV] = useState<Vocabulary | null>(null);
  useEffect(() => {
    get<Vocabulary>('/api/policy/vocabulary').then(setV, () => undefined);
  }, []);
  return v ?? { qubes, tags: [], dispvmTemplates: [], services: [] };
}

type PolicyMode = 'files' | 'service';

export function PolicyView({ onStatus, qubes }: { onStatus: (m: string, e?: boolean) => void; qubes: readonly string[] }) {
  const [files, setFiles] = useState<string[]>([]);
  const [listError, setListError] = useState('');
  const [mode, setMode] = useState<PolicyMode>('files');
  const ed = usePolicyFile(onStatus);
  const vocabulary = useVocabulary(qubes);
  const { file, text } = ed;

  const loadList = (): void => {
    get<{ files: string[] }>('/api/policy').then(
      (r) => setFiles(r.files),
      (e) => setListError(errText(e)),
    );
  };
  useEffect(loadList, []);

  const tab = (m: PolicyMode, label: string) => (
    <button type="button" role="tab" id={`pol-tab-${m}`} aria-selected={mode === m} aria-controls={`pol-panel-${m}`} class={`seg ${mode === m ? 'active' : ''}`} onClick={() => setMode(m)}>
      {label}
    </button>
  );
  return (
    <section class="panel policy" aria-labelledby="pol-title">
      <div class="panel-head">
        <h2 id="pol-title">Policy</h2>
        <div class="segmented" role="tablist" aria-label="Policy views">
          {tab('files', 'Files')}
          {tab('service', 'By service')}
        </div>
      </div>
      {listError && (
        <p class="empty error" role="alert">
          {listError}
        </p>
      )}
      {mode === 'service' ? (
        <div role="tabpanel" id="pol-panel-service" aria-labelledby="pol-tab-service">
          <ServiceView
            vocabulary={vocabulary}
            onStatus={onStatus}
            onSaved={loadList}
            onRawEdit={(name) => {
              setMode('files');
              void ed.open(name);
            }}
          />
        </div>
      ) : (
        <div class="policy-body" role="tabpanel" id="pol-panel-files" aria-labelledby="pol-tab-files">
          <ul class="file-list" aria-label="Policy files">
            {files.map((f) => (
              <li key={f}>
                <button type="button" class={`file ${file?.name === f ? 'active' : ''}`} aria-current={file?.name === f ? 'true' : undefined} onClick={() => void ed.open(f)}>
                  {f}
                </button>
              </li>
            ))}
          </ul>
          <div class="policy-main">
            {!file ? (
              <p class="empty">Choose a file.</p>
            ) : (
              <>
                <div class="editor-head">
                  <strong>{file.name}</strong>
                  <span class="muted">{ed.state}</span>
                  <button type="button" class="button" onClick={() => void ed.open(file.name)}>
                    Reload
                  </button>
                  <button type="button" class="button primary" disabled={!ed.canSave} onClick={() => void ed.save()}>
                    Save
                  </button>
                </div>
                <Editor value={text} onChange={ed.setText} vocabulary={vocabulary} diagnostics={ed.check.diagnostics.filter((d) => d.file.endsWith(`${file.name}.policy`) || d.file.endsWith(file.name))} />
                <CheckResult check={ed.check} conflict={ed.conflict} />
              </>
            )}
            <Explain qubes={qubes} />
          </div>
        </div>
      )}
    </section>
  );
}

function Explain({ qubes }: { qubes: readonly string[] }) {
  const [q, setQ] = useState({ service: '', source: '', target: '' });
  const [out, setOut] = useState<{ text: string; error: boolean } | null>(null);
  const run = async (e: Event): Promise<void> => {
    e.preventDefault();
    try {
      const r = await post<Record<string, unknown>>('/api/policy/eval', q);
      const d = (r['decision'] ?? r) as Record<string, unknown>;
      const rule = (r['rule'] ?? d['rule']) as Record<string, unknown> | string | undefined;
      const where = typeof rule === 'string' ? rule : rule ? `${String(rule['file'] ?? '')}:${String(rule['line'] ?? '')} ${String(rule['text'] ?? '')}` : '';
      setOut({ text: `${String(d['result'] ?? r['result'] ?? '?')}${d['target'] ? ` → ${String(d['target'])}` : ''}${where ? ` (${where})` : ''}`, error: false });
    } catch (x) {
      setOut({ text: errText(x), error: true });
    }
  };
  const set = (k: keyof typeof q) => (e: Event) => setQ({ ...q, [k]: (e.currentTarget as HTMLInputElement).value });
  return (
    <form class="explain" aria-label="Explain a call" onSubmit={(e) => void run(e)}>
      <h3>Explain a call</h3>
      <datalist id="qube-names">
        {['@adminvm', '@default', '@dispvm', ...qubes].map((n) => (
          <option key={n} value={n} />
        ))}
      </datalist>
      <input type="text" aria-label="Service" placeholder="qubes.Filecopy" value={q.service} onInput={set('service')} required />
      <input type="text" aria-label="Source" placeholder="source" list="qube-names" value={q.source} onInput={set('source')} required />
      <input type="text" aria-label="Target" placeholder="target" list="qube-names" value={q.target} onInput={set('target')} required />
      <button type="submit" class="button">
        Explain
      </button>
      {out && (
        <p class={out.error ? 'error' : 'explained'} role="status">
          {out.text}
        </p>
      )}
    </form>
  );
}

interface AuditRow {
  readonly id: number;
  readonly time_ms: number;
  readonly source: string;
  readonly intended_target: string;
  readonly target: string | null;
  readonly service: string;
  readonly argument: string;
  readonly result: string;
  readonly rule: string | null;
  readonly ask_answer: string | null;
}

const SINCE: Record<string, number | null> = { 'Last 5 minutes': 5 * 60_000, 'Last hour': 3_600_000, 'Last day': 86_400_000, 'All time': null };

export function AuditView() {
  const [f, setF] = useState({ source: '', target: '', service: '', result: '' });
  const [since, setSince] = useState('All time');
  const [live, setLive] = useState(true);
  const [rows, setRows] = useState<readonly AuditRow[]>([]);
  const [error, setError] = useState('');
  useEffect(() => {
    let stop = false;
    let t: number | undefined;
    const load = async (): Promise<void> => {
      const s = SINCE[since];
      try {
        const r = await post<{ rows: AuditRow[] }>('/api/audit', { ...f, ...(s ? { sinceMs: Date.now() - s } : {}), limit: 200 });
        if (!stop) {
          setRows(r.rows);
          setError('');
        }
      } catch (e) {
        if (!stop) setError(errText(e));
      }
      if (!stop && live) t = window.setTimeout(() => void load(), 1000);
    };
    const d = window.setTimeout(() => void load(), 200);
    return () => {
      stop = true;
      window.clearTimeout(d);
      window.clearTimeout(t);
    };
  }, [f, since, live]);
  const set = (k: keyof typeof f) => (e: Event) => setF({ ...f, [k]: (e.currentTarget as HTMLInputElement).value });
  return (
    <section class="panel" aria-labelledby="audit-title">
      <div class="panel-head">
        <h2 id="audit-title">Audit log</h2>
        <div class="filters">
          <input type="search" aria-label="Source" placeholder="source" value={f.source} onInput={set('source')} />
          <input type="search" aria-label="Target" placeholder="target" value={f.target} onInput={set('target')} />
          <input type="search" aria-label="Service" placeholder="service" value={f.service} onInput={set('service')} />
          <select aria-label="Result" value={f.result} onChange={set('result')}>
            <option value="">All results</option>
            <option value="allow">Allowed</option>
            <option value="deny">Denied</option>
          </select>
          <select aria-label="Time" value={since} onChange={(e) => setSince((e.currentTarget as HTMLSelectElement).value)}>
            {Object.keys(SINCE).map((k) => (
              <option key={k}>{k}</option>
            ))}
          </select>
          <label class="check">
            <input type="checkbox" checked={live} onChange={(e) => setLive((e.currentTarget as HTMLInputElement).checked)} /> Live
          </label>
        </div>
      </div>
      {error && (
        <p class="empty error" role="alert">
          {error}
        </p>
      )}
      {rows.length === 0 && !error ? (
        <p class="empty">No decision matches.</p>
      ) : (
        <div class="scroller tall">
          <table class="table" aria-label="Audit log">
            <TableHead columns={['Time', 'Result', 'Service', 'Source', 'Target', 'Rule']} />
            <tbody>
              {rows
                .slice()
                .reverse()
                .map((r) => (
                  <tr key={r.id}>
                    <td>{new Date(r.time_ms).toLocaleTimeString()}</td>
                    <td>
                      <span class={`pill ${r.result === 'allow' ? 'allow' : 'deny'}`}>{r.result === 'allow' ? 'Allowed' : 'Denied'}</span>
                    </td>
                    <td>
                      <code>{r.argument && r.argument !== '+' ? `${r.service}${r.argument.startsWith('+') ? '' : '+'}${r.argument}` : r.service}</code>
                    </td>
                    <td>{r.source}</td>
                    <td>{r.target ?? r.intended_target}</td>
                    <td class="muted">
                      {r.rule ?? ''}
                      {r.ask_answer ? ` (${r.ask_answer})` : ''}
                    </td>
                  </tr>
                ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
