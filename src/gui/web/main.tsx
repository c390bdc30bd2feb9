/** The GUI domain's web desktop. */
import { render } from 'preact';
import { useCallback, useEffect, useState } from 'preact/hooks';
import { events, GUI_NAME, post } from './api.js';
import { AskDialog } from './ask.js';
import { NoticeHistory, Toasts } from './notices.js';
import type { Ask, AsksEvent, Notice, QubeRow, QubesEvent } from './types.js';
import { QubeManagerView } from './qubes.js';
import { AuditView, PolicyView } from './policy.js';
import { onTermEvent, TerminalView } from './terminal.js';
import { rpcName } from './types.js';
import { QubeName } from './qube.js';

type View = 'qubes' | 'terminals' | 'prompts' | 'notifications' | 'policy' | 'audit';
const TOAST_MS = 8000;

interface AskState {
  readonly asks: readonly Ask[];
  readonly now: number;
  readonly receivedAt: number;
}

function App() {
  const [view, setView] = useState<View>('qubes');
  const [qubes, setQubes] = useState<QubesEvent>({ loaded: false, error: null, rows: [] });
  const [status, setStatus] = useState<{ msg: string; error: boolean }>({ msg: '', error: false });
  const [asks, setAsks] = useState<AskState>({ asks: [], now: 0, receivedAt: 0 });
  const [history, setHistory] = useState<readonly Notice[]>([]);
  const [toasts, setToasts] = useState<readonly Notice[]>([]);
  const [connected, setConnected] = useState(true);

  useEffect(
    () =>
      events(
        {
          asks: (d) => {
            const e = d as AsksEvent;
            setAsks({ asks: e.asks, now: e.now, receivedAt: performance.now() });
          },
          history: (d) => setHistory(d as Notice[]),
          qubes: (d) => setQubes(d as QubesEvent),
          term: (d) => onTermEvent(d as { id: string }),
          qube: (d) => {
            const c = d as { row?: QubeRow; rows?: QubeRow[]; removed?: string };
            setQubes((q) => {
              if (c.removed !== undefined) return { ...q, rows: q.rows.filter((r) => r.name !== c.removed) };
              const changed = c.rows ?? (c.row ? [c.row] : []);
              if (changed.length === 0) return q;
              const byName = new Map(changed.map((r) => [r.name, r]));
              const rows = q.rows.map((r) => byName.get(r.name) ?? r);
              const known = new Set(q.rows.map((r) => r.name));
              const added = changed.filter((r) => !known.has(r.name));
              return { ...q, rows: added.length === 0 ? rows : [...rows, ...added].sort((a, b) => a.name.localeCompare(b.name)) };
            });
          },
          notice: (d) => {
            const n = d as Notice;
            setHistory((h) => [...h, n].slice(-500));
            setToasts((t) => [...t, n].slice(-4));
            setTimeout(() => setToasts((t) => t.filter((x) => x.id !== n.id)), TOAST_MS);
          },
        },
        setConnected,
      ),
    [],
  );

  const answer = useCallback(async (id: string, target: string | null) => {
    await post(`/api/asks/${encodeURIComponent(id)}`, { target });
  }, []);

  const current = asks.asks[0];
  const nav: { id: View; label: string; badge?: number }[] = [
    { id: 'qubes', label: 'Qubes' },
    { id: 'terminals', label: 'Terminals' },
    { id: 'prompts', label: 'Requests', badge: asks.asks.length },
    { id: 'notifications', label: 'Notifications', badge: history.length },
    { id: 'policy', label: 'Policy' },
    { id: 'audit', label: 'Audit log' },
  ];
  return (
    <div class="shell">
      <header class="topbar">
        <div class="brand">
          <span class="logo" aria-hidden="true" />
          <span class="brand-name">{GUI_NAME}</span>
          <span class="brand-sub">GUI domain</span>
        </div>
        <nav aria-label="Main">
          {nav.map((n) => (
            <button key={n.id} type="button" class={`tab ${view === n.id ? 'active' : ''}`} aria-current={view === n.id ? 'page' : undefined} onClick={() => setView(n.id)}>
              {n.label}
              {n.badge ? <span class="badge">{n.badge}</span> : null}
            </button>
          ))}
        </nav>
        <span class={`conn ${connected ? 'on' : 'off'}`} role="status">
          {connected ? 'Connected' : 'Disconnected'}
        </span>
      </header>
      <main class="content">
        <p class={`status-line ${status.error ? 'error' : ''}`} role="status" aria-live="polite">
          {status.msg}
        </p>
        {view === 'qubes' && <QubeManagerView data={qubes} onStatus={(msg, error) => setStatus({ msg, error: error === true })} />}
        {view === 'prompts' && (
          <section class="panel" aria-labelledby="req-title">
            <div class="panel-head">
              <h2 id="req-title">Requests</h2>
            </div>
            {asks.asks.length === 0 ? (
              <div class="empty big">
                <span class="shield" aria-hidden="true" />
                <p>No pending requests.</p>
                <p class="muted">When a qube asks for something your policy leaves to you, the question appears here.</p>
              </div>
            ) : (
              <ul class="queue" aria-label="Pending requests">
                {asks.asks.map((a) => (
                  <li key={a.id}>
                    <QubeName name={a.source} label={a.sourceLabel} /> wants <code class="rpc">{rpcName(a.service, a.argument)}</code>
                    <span class="targets">{a.targets.length === 1 ? '1 possible target' : `${a.targets.length} possible targets`}</span>
                  </li>
                ))}
              </ul>
            )}
          </section>
        )}
        {view === 'notifications' && <NoticeHistory history={history} />}
        {view === 'policy' && <PolicyView qubes={qubes.rows.map((r) => r.name)} onStatus={(msg, error) => setStatus({ msg, error: error === true })} />}
        {view === 'audit' && <AuditView />}
        <div hidden={view !== 'terminals'}>
          <TerminalView rows={qubes.rows} onStatus={(msg, error) => setStatus({ msg, error: error === true })} />
        </div>
      </main>
      {current && (
        <AskDialog
          key={current.id}
          ask={current}
          remainingMs={current.deadline - asks.now}
          receivedAt={asks.receivedAt}
          queued={asks.asks.length - 1}
          onAnswer={answer}
        />
      )}
      <Toasts toasts={toasts} onDismiss={(id) => setToasts((t) => t.filter((x) => x.id !== id))} />
    </div>
  );
}

const root = document.getElementById('app');
if (root) render(<App />, root);
