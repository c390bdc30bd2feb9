/**
 * Terminals into qubes: xterm.js (bundled, no other origin) on a pty in the
 * qube, through the GUI domain's `gui.Terminal` qrexec call. Output comes
 * over the page's event stream (`term` events), typing goes in POSTs.
 */
import { Terminal } from '@xterm/xterm';
import { useEffect, useRef, useState } from 'preact/hooks';
import { get, post } from './api.js';
import type { QubeRow } from './types.js';

type TermEvent = { id: string; data?: string; offset?: number; exit?: number };

/** The term events of the page, handed to the open windows. */
const sinks = new Map<string, (e: TermEvent) => void>();
export function onTermEvent(e: TermEvent): void {
  sinks.get(e.id)?.(e);
}

function decode(b64: string): Uint8Array {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

interface Win {
  readonly id: string;
  readonly qube: string;
}

export function TerminalView({ rows, onStatus }: { rows: readonly QubeRow[]; onStatus: (m: string, e?: boolean) => void }) {
  const usable = rows.filter((r) => r.klass !== 'TemplateVM' || r.state === 'Running');
  const [qube, setQube] = useState('');
  const [wins, setWins] = useState<readonly Win[]>([]);
  const [active, setActive] = useState<string | null>(null);
  const pick = qube || usable.find((r) => r.state === 'Running')?.name || usable[0]?.name || '';
  const open = async (): Promise<void> => {
    try {
      const r = await post<{ id: string }>('/api/terms', { qube: pick, cols: 100, rows: 28 });
      setWins((w) => [...w, { id: r.id, qube: pick }]);
      setActive(r.id);
    } catch (e) {
      onStatus(`Terminal in ${pick}: ${(e as Error).message}`, true);
    }
  };
  return (
    <section class="panel" aria-labelledby="term-title">
      <div class="panel-head">
        <h2 id="term-title">Terminals</h2>
        <div class="filters">
          <select aria-label="Qube" value={pick} onChange={(e) => setQube((e.currentTarget as HTMLSelectElement).value)}>
            {usable.map((r) => (
              <option key={r.name} value={r.name}>
                {r.name} ({r.state})
              </option>
            ))}
          </select>
          <button type="button" class="button primary" disabled={!pick} onClick={() => void open()}>
            Open terminal
          </button>
        </div>
      </div>
      {wins.length === 0 ? (
        <p class="empty">Open a terminal in one of your qubes: a shell on a new pty there, as the qube's user.</p>
      ) : (
        <>
          <div class="term-tabs" role="tablist" aria-label="Open terminals">
            {wins.map((w) => (
              <button key={w.id} type="button" role="tab" aria-selected={active === w.id} class={`tab-light ${active === w.id ? 'active' : ''}`} onClick={() => setActive(w.id)}>
                {w.qube}
              </button>
            ))}
          </div>
          {wins.map((w) => (
            <TermWindow
              key={w.id}
              win={w}
              hidden={active !== w.id}
              onClose={() => {
                void post(`/api/terms/${w.id}/close`, {}).catch(() => undefined);
                setWins((x) => x.filter((y) => y.id !== w.id));
                setActive((a) => (a === w.id ? null : a));
              }}
            />
          ))}
        </>
      )}
    </section>
  );
}

const FONT = { family: '"DejaVu Sans Mono", monospace', size: 13 };
const SCROLLBAR_PX = 14;

/** The columns and rows of `FONT` cells that fit in `box` (xterm's own cell size once drawn). */
function fit(box: HTMLElement): { cols: number; rows: number } | null {
  const row = box.querySelector<HTMLElement>('.xterm-rows > div');
  const ctx = document.createElement('canvas').getContext('2d');
  if (!row || !ctx || box.clientWidth === 0) return null;
  ctx.font = `${FONT.size}px ${FONT.family}`;
  const cellW = ctx.measureText('W').width;
  const cellH = row.getBoundingClientRect().height;
  if (!(cellW > 0) || !(cellH > 0)) return null;
  // the scrollbar's width is not for text
  const cols = Math.max(20, Math.min(1000, Math.floor((box.clientWidth - SCROLLBAR_PX) / cellW)));
  const rows = Math.max(5, Math.min(1000, Math.floor(box.clientHeight / cellH)));
  return { cols, rows };
}

function TermWindow({ win, hidden, onClose }: { win: Win; hidden: boolean; onClose: () => void }) {
  const box = useRef<HTMLDivElement>(null);
  const [exit, setExit] = useState<number | null>(null);
  const [size, setSize] = useState({ cols: 100, rows: 28 });
  useEffect(() => {
    const term = new Terminal({ cols: 100, rows: 28, fontFamily: FONT.family, fontSize: FONT.size, screenReaderMode: false, cursorBlink: true, theme: { background: '#101722', foreground: '#e6edf5' } });
    if (box.current) term.open(box.current);
    term.focus();
    // the window follows its box, and the pty in the qube follows the window (the last size wins)
    let sent = '100x28';
    let pending: number | undefined;
    const onResize = term.onResize(({ cols, rows }) => {
      setSize({ cols, rows });
      window.clearTimeout(pending);
      pending = window.setTimeout(() => {
        const want = `${cols}x${rows}`;
        if (want === sent) return;
        sent = want;
        void post(`/api/terms/${win.id}/resize`, { cols, rows }).catch(() => undefined);
      }, 150);
    });
    const refit = (): void => {
      const b = box.current;
      const f = b && !b.closest('[hidden]') ? fit(b) : null;
      if (f && (f.cols !== term.cols || f.rows !== term.rows)) term.resize(f.cols, f.rows);
    };
    const ro = new ResizeObserver(refit);
    if (box.current) ro.observe(box.current);
    // typed keys go in order, one request at a time
    let queue = Promise.resolve();
    const sub = term.onData((d) => {
      queue = queue.then(() => post(`/api/terms/${win.id}/input`, { data: d }).then(() => undefined, () => undefined));
    });
    // events that come before the backlog wait for it; then only output past it is written
    let upTo: number | null = null;
    const early: TermEvent[] = [];
    const take = (e: TermEvent): void => {
      if (e.data !== undefined && e.offset !== undefined && upTo !== null && e.offset >= upTo) {
        term.write(decode(e.data));
        upTo = e.offset + decode(e.data).length;
      }
      if (e.exit !== undefined) setExit(e.exit);
    };
    sinks.set(win.id, (e) => (upTo === null ? early.push(e) : take(e)));
    void get<{ data: string; total: number; exit: number | null }>(`/api/terms/${win.id}`).then((b) => {
      term.write(decode(b.data));
      upTo = b.total;
      for (const e of early.splice(0)) take(e);
      if (b.exit !== null) setExit(b.exit);
    });
    return () => {
      ro.disconnect();
      window.clearTimeout(pending);
      onResize.dispose();
      sinks.delete(win.id);
      sub.dispose();
      term.dispose();
    };
  }, [win.id]);
  return (
    <div class="term-window" hidden={hidden} role="tabpanel" aria-label={`Terminal in ${win.qube}`}>
      <div class="term-head">
        <span>
          {win.qube}
          <span class="muted term-size" aria-label={`Size of the terminal in ${win.qube}`} data-cols={size.cols} data-rows={size.rows}>
            {' '}
            {size.cols}×{size.rows}
          </span>
          {exit !== null && <span class="muted"> — ended (exit status {exit})</span>}
        </span>
        <button type="button" class="button small" aria-label={`Close terminal in ${win.qube}`} onClick={onClose}>
          Close
        </button>
      </div>
      <div class="term-box" ref={box} />
    </div>
  );
}
