/**
 * The qube manager: the GUI domain's qubes (live), their actions, a create
 * form and a settings dialog (properties, tags, features). Rows are
 * virtualised: only those in view are in the DOM, so 1,000 qubes stay fast.
 */
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { ApiError, get, post } from './api.js';
import { QubeName } from './qube.js';
import type { Label, QubeDetails, QubeRow, QubesEvent } from './types.js';

const ROW_H = 44;
const VIEW_H = 560;

const labelOf = (l: string): Label | null => (['red', 'orange', 'yellow', 'green', 'gray', 'blue', 'purple', 'black'].includes(l) ? (l as Label) : null);

function bytes(n: number | null): string {
  if (n === null) return '—';
  if (n < 1024) return `${n} B`;
  const u = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${u[i]}`;
}

type Act = 'start' | 'shutdown' | 'kill' | 'pause' | 'unpause';
const ACT_LABEL: Record<Act, string> = { start: 'Start', shutdown: 'Shut down', kill: 'Kill', pause: 'Pause', unpause: 'Unpause' };

/** The power actions offered for a qube. A RemoteVM runs on another host, so it is listed but not managed from here (as in the reference's Qube Manager). */
function actionsFor(state: string, klass: string): Act[] {
  if (klass === 'RemoteVM') return [];
  if (state === 'Halted') return ['start'];
  if (state === 'Running') return ['shutdown', 'pause', 'kill'];
  if (state === 'Paused') return ['unpause', 'kill'];
  return ['kill'];
}

const message = (e: unknown): string => (e instanceof ApiError ? e.message : (e as Error).message);

export function QubeManagerView({ data, onStatus }: { data: QubesEvent; onStatus: (msg: string, error?: boolean) => void }) {
  const [filter, setFilter] = useState('');
  const [scroll, setScroll] = useState(0);
  const [busy, setBusy] = useState<Record<string, boolean>>({});
  const [settings, setSettings] = useState<string | null>(null);
  const [creating, setCreating] = useState(false);
  const f = filter.trim().toLowerCase();
  const rows = useMemo(() => (f === '' ? data.rows : data.rows.filter((r) => r.name.toLowerCase().includes(f) || r.klass.toLowerCase().includes(f) || r.state.toLowerCase().includes(f))), [data.rows, f]);
  const first = Math.max(0, Math.floor(scroll / ROW_H) - 5);
  const last = Math.min(rows.length, first + Math.ceil(VIEW_H / ROW_H) + 10);
  const shown = rows.slice(first, last);

  const act = async (name: string, a: Act): Promise<void> => {
    setBusy((b) => ({ ...b, [name]: true }));
    try {
      await post(`/api/qubes/${encodeURIComponent(name)}/${a}`, {});
      onStatus(`${ACT_LABEL[a]}: ${name}`);
    } catch (e) {
      onStatus(`${ACT_LABEL[a]} ${name} failed: ${message(e)}`, true);
    } finally {
      setBusy((b) => ({ ...b, [name]: false }));
    }
  };

  const startDisposable = async (template: string): Promise<void> => {
    setBusy((b) => ({ ...b, [template]: true }));
    try {
      const r = await post<{ name: string }>(`/api/qubes/${encodeURIComponent(template)}/dispvm`, {});
      onStatus(`Started ${r.name}, a disposable of ${template}`);
    } catch (e) {
      onStatus(`A disposable of ${template} failed: ${message(e)}`, true);
    } finally {
      setBusy((b) => ({ ...b, [template]: false }));
    }
  };

  return (
    <section class="panel" aria-labelledby="qubes-title">
      <div class="panel-head">
        <h2 id="qubes-title">Qubes</h2>
        <div class="filters">
          <input type="search" placeholder="Filter by name, class or state" aria-label="Filter qubes" value={filter} onInput={(e) => setFilter((e.currentTarget as HTMLInputElement).value)} />
          <button type="button" class="button primary" onClick={() => setCreating(true)}>
            Create qube
          </button>
        </div>
      </div>
      {data.error && (
        <p class="empty error" role="alert">
          {data.error}
        </p>
      )}
      {!data.loaded && !data.error && <p class="empty">Loading the qubes…</p>}
      {data.loaded && rows.length === 0 && !data.error && <p class="empty">{data.rows.length === 0 ? 'This GUI domain manages no qube.' : 'No qube matches the filter.'}</p>}
      {rows.length > 0 && (
        <div class="scroller" style={{ maxHeight: `${VIEW_H}px` }} onScroll={(e) => setScroll((e.currentTarget as HTMLDivElement).scrollTop)}>
          <table class="table qubes" aria-label="Qubes" aria-rowcount={rows.length + 1}>
            <thead>
              <tr aria-rowindex={1}>
                <th scope="col">Name</th>
                <th scope="col">State</th>
                <th scope="col">Class</th>
                <th scope="col">Template</th>
                <th scope="col">NetVM</th>
                <th scope="col">Disk</th>
                <th scope="col">
                  <span class="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {first > 0 && <tr class="spacer" aria-hidden="true" style={{ height: `${first * ROW_H}px` }} />}
              {shown.map((r, i) => (
                <tr key={r.name} aria-rowindex={first + i + 2} data-qube={r.name} style={{ height: `${ROW_H}px` }}>
                  <th scope="row">
                    <QubeName name={r.name} label={labelOf(r.label)} />
                  </th>
                  <td>
                    <span class={`state ${r.state.toLowerCase()}`} aria-label={`State of ${r.name}`}>
                      {r.state}
                    </span>
                  </td>
                  <td>{r.klass}</td>
                  <td>{r.template || '—'}</td>
                  <td>{r.netvm || '—'}</td>
                  <td data-bytes={r.diskBytes ?? undefined} title={r.diskBytes === null ? 'not known yet' : `${r.diskBytes} bytes`}>
                    {bytes(r.diskBytes)}
                  </td>
                  <td class="row-actions">
                    {actionsFor(r.state, r.klass).map((a) => (
                      <button key={a} type="button" class={`button small ${a === 'kill' ? 'danger' : ''}`} disabled={busy[r.name]} aria-label={`${ACT_LABEL[a]} ${r.name}`} onClick={() => void act(r.name, a)}>
                        {ACT_LABEL[a]}
                      </button>
                    ))}
                    {r.dispvmTemplate && r.klass !== 'RemoteVM' && (
                      <button type="button" class="button small" disabled={busy[r.name]} aria-label={`Start a disposable of ${r.name}`} title="A new disposable qube of this template, started" onClick={() => void startDisposable(r.name)}>
                        Disposable
                      </button>
                    )}
                    <button type="button" class="button small" aria-label={`Settings of ${r.name}`} onClick={() => setSettings(r.name)}>
                      Settings
                    </button>
                  </td>
                </tr>
              ))}
              {last < rows.length && <tr class="spacer" aria-hidden="true" style={{ height: `${(rows.length - last) * ROW_H}px` }} />}
            </tbody>
          </table>
        </div>
      )}
      {creating && <CreateDialog rows={data.rows} onClose={() => setCreating(false)} onStatus={onStatus} />}
      {settings && <SettingsDialog name={settings} rows={data.rows} onClose={() => setSettings(null)} onStatus={onStatus} />}
    </section>
  );
}

function Dialog({ title, onClose, children }: { title: string; onClose: () => void; children: preact.ComponentChildren }) {
  const ref = useRef<HTMLDivElement>(null);
  useEffect(() => {
    ref.current?.querySelector<HTMLElement>('input, select, button:not(.icon-button)')?.focus();
    const key = (e: KeyboardEvent): void => {
      if (e.key === 'Escape') onClose();
    };
    window.addEventListener('keydown', key);
    return () => window.removeEventListener('keydown', key);
  }, []);
  return (
    <div class="overlay">
      <div class="dialog" role="dialog" aria-modal="true" aria-label={title} ref={ref}>
        <div class="dialog-head">
          <h2>{title}</h2>
          <button type="button" class="icon-button" aria-label="Close" onClick={onClose}>
            ×
          </button>
        </div>
        {children}
      </div>
    </div>
  );
}

function useLabels(): string[] {
  const [labels, setLabels] = useState<string[]>(['red', 'orange', 'yellow', 'green', 'gray', 'blue', 'purple', 'black']);
  useEffect(() => {
    get<{ labels: string[] }>('/api/labels').then(
      (r) => r.labels.length > 0 && setLabels(r.labels),
      () => undefined,
    );
  }, []);
  return labels;
}

function CreateDialog({ rows, onClose, onStatus }: { rows: readonly QubeRow[]; onClose: () => void; onStatus: (m: string, e?: boolean) => void }) {
  const labels = useLabels();
  const templates = rows.filter((r) => r.klass === 'TemplateVM').map((r) => r.name);
  const netvms = rows.filter((r) => r.providesNetwork).map((r) => r.name);
  const [name, setName] = useState('');
  const [template, setTemplate] = useState('');
  const [label, setLabel] = useState('red');
  const [netvm, setNetvm] = useState<string>('(default)');
  const [error, setError] = useState('');
  const submit = async (e: Event): Promise<void> => {
    e.preventDefault();
    setError('');
    try {
      await post('/api/qubes', { name, template, label, netvm: netvm === '(default)' ? null : netvm === '(none)' ? '' : netvm });
      onStatus(`Created ${name}`);
      onClose();
    } catch (x) {
      setError(message(x));
    }
  };
  return (
    <Dialog title="Create qube" onClose={onClose}>
      <form class="dialog-body form" onSubmit={(e) => void submit(e)}>
        <label>
          <span>Name</span>
          <input type="text" required value={name} onInput={(e) => setName((e.currentTarget as HTMLInputElement).value)} />
        </label>
        <label>
          <span>Template</span>
          <select value={template} onChange={(e) => setTemplate((e.currentTarget as HTMLSelectElement).value)}>
            <option value="">(default template)</option>
            {templates.map((t) => (
              <option key={t} value={t}>
                {t}
              </option>
            ))}
          </select>
        </label>
        <label>
          <span>Label</span>
          <select value={label} onChange={(e) => setLabel((e.currentTarget as HTMLSelectElement).value)}>
            {labels.map((l) => (
              <option key={l} value={l}>
                {l}
              </option>
            ))}
          </select>
        </label>
        <label>
          <span>NetVM</span>
          <select value={netvm} onChange={(e) => setNetvm((e.currentTarget as HTMLSelectElement).value)}>
            <option value="(default)">(default)</option>
            <option value="(none)">(none)</option>
            {netvms.map((t) => (
              <option key={t} value={t}>
                {t}
              </option>
            ))}
          </select>
        </label>
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        <div class="dialog-foot">
          <button type="button" class="button" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" class="button primary">
            Create
          </button>
        </div>
      </form>
    </Dialog>
  );
}

/** The properties the settings form edits directly (others: the table below). */
const EDITED = ['label', 'template', 'netvm', 'audiovm', 'memory', 'vcpus', 'autostart', 'default_dispvm', 'template_for_dispvms'] as const;

interface AudioState {
  readonly audiovm: string | null;
  readonly volume: number;
  readonly muted: boolean;
}

/** The qube's volume and mute in its audio domain (audio.Volume there, through qrexec under the policy). */
function SoundControl({ name }: { name: string }) {
  const [a, setA] = useState<AudioState | null>(null);
  const [error, setError] = useState('');
  const [draft, setDraft] = useState<number | null>(null);
  useEffect(() => {
    get<AudioState>(`/api/qubes/${encodeURIComponent(name)}/audio`).then(setA, (e) => setError(message(e)));
  }, [name]);
  const change = async (body: { volume: number } | { muted: boolean }): Promise<void> => {
    setError('');
    try {
      setA(await post<AudioState>(`/api/qubes/${encodeURIComponent(name)}/audio`, body));
    } catch (e) {
      setError(message(e));
    }
    setDraft(null);
  };
  return (
    <section class="sound" aria-label={`Sound of ${name}`}>
      <h3>Sound{a?.audiovm ? <span class="muted"> — through {a.audiovm}</span> : null}</h3>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {!a && !error && <p class="muted">Loading…</p>}
      {a && a.audiovm === null && <p class="muted">{name} has no audio domain (audiovm is empty).</p>}
      {a?.audiovm && (
        <div class="sound-row">
          <button type="button" class={`button small ${a.muted ? 'danger' : ''}`} aria-pressed={a.muted} aria-label={`Mute ${name}`} onClick={() => void change({ muted: !a.muted })}>
            {a.muted ? 'Muted' : 'Mute'}
          </button>
          <input
            type="range"
            min={0}
            max={150}
            step={5}
            aria-label={`Volume of ${name}`}
            aria-valuetext={`${draft ?? a.volume} percent`}
            value={draft ?? a.volume}
            disabled={a.muted}
            onInput={(e) => setDraft(Number((e.currentTarget as HTMLInputElement).value))}
            onChange={(e) => void change({ volume: Number((e.currentTarget as HTMLInputElement).value) })}
          />
          <output class="sound-value">{draft ?? a.volume}%</output>
        </div>
      )}
    </section>
  );
}

function SettingsDialog({ name, rows, onClose, onStatus }: { name: string; rows: readonly QubeRow[]; onClose: () => void; onStatus: (m: string, e?: boolean) => void }) {
  const [d, setD] = useState<QubeDetails | null>(null);
  const [error, setError] = useState('');
  const [edits, setEdits] = useState<Record<string, string>>({});
  const [tag, setTag] = useState('');
  const [feat, setFeat] = useState({ name: '', value: '' });
  const labels = useLabels();
  const load = (): void => {
    get<QubeDetails>(`/api/qubes/${encodeURIComponent(name)}`).then(setD, (e) => setError(message(e)));
  };
  useEffect(load, [name]);
  const call = async (what: string, body: unknown, done: string): Promise<void> => {
    setError('');
    try {
      await post(`/api/qubes/${encodeURIComponent(name)}/${what}`, body);
      onStatus(done);
      load();
    } catch (e) {
      setError(message(e));
    }
  };
  const save = async (e: Event): Promise<void> => {
    e.preventDefault();
    for (const [prop, value] of Object.entries(edits)) await call('property', { name: prop, value }, `${name}: ${prop} set`);
    setEdits({});
  };
  const remove = async (): Promise<void> => {
    if (!window.confirm(`Remove ${name} and all its data?`)) return;
    try {
      await post(`/api/qubes/${encodeURIComponent(name)}/remove`, {});
      onStatus(`Removed ${name}`);
      onClose();
    } catch (e) {
      setError(message(e));
    }
  };
  const choices: Record<string, string[] | undefined> = {
    label: labels,
    template: rows.filter((r) => r.klass === 'TemplateVM').map((r) => r.name),
    netvm: ['', ...rows.filter((r) => r.providesNetwork && r.name !== name).map((r) => r.name)],
    autostart: ['False', 'True'],
    template_for_dispvms: ['False', 'True'],
  };
  const val = (p: string): string => edits[p] ?? d?.properties[p]?.value ?? '';
  return (
    <Dialog title={`Settings of ${name}`} onClose={onClose}>
      <div class="dialog-body settings">
        {!d && !error && <p class="muted">Loading…</p>}
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        {d && (
          <>
            <form class="form" aria-label="Properties" onSubmit={(e) => void save(e)}>
              {EDITED.filter((p) => d.properties[p] !== undefined).map((p) => {
                const c = choices[p];
                const set = (v: string): void => setEdits((x) => ({ ...x, [p]: v }));
                return (
                  <label key={p}>
                    <span>{p}</span>
                    {c ? (
                      <select value={val(p)} onChange={(e) => set((e.currentTarget as HTMLSelectElement).value)}>
                        {[...new Set([val(p), ...c])].map((o) => (
                          <option key={o} value={o}>
                            {o === '' ? '(none)' : o}
                          </option>
                        ))}
                      </select>
                    ) : (
                      <input type="text" value={val(p)} onInput={(e) => set((e.currentTarget as HTMLInputElement).value)} />
                    )}
                  </label>
                );
              })}
              <div class="dialog-foot">
                <button type="button" class="button danger" onClick={() => void remove()}>
                  Remove qube
                </button>
                <button type="submit" class="button primary" disabled={Object.keys(edits).length === 0}>
                  Save
                </button>
              </div>
            </form>
            <SoundControl key={d.properties['audiovm']?.value ?? ''} name={name} />
            <h3>Tags</h3>
            <ul class="chips" aria-label="Tags">
              {d.tags.map((t) => (
                <li key={t} class="chip">
                  {t}
                  {!t.startsWith('guivm-') && !t.startsWith('audiovm-') && (
                    <button type="button" class="icon-button" aria-label={`Remove tag ${t}`} onClick={() => void call('tag', { name: t, on: false }, `${name}: tag ${t} removed`)}>
                      ×
                    </button>
                  )}
                </li>
              ))}
            </ul>
            <form
              class="inline"
              onSubmit={(e) => {
                e.preventDefault();
                void call('tag', { name: tag, on: true }, `${name}: tag ${tag} added`).then(() => setTag(''));
              }}
            >
              <input type="text" aria-label="New tag" placeholder="tag" value={tag} onInput={(e) => setTag((e.currentTarget as HTMLInputElement).value)} />
              <button type="submit" class="button small">
                Add tag
              </button>
            </form>
            <h3>Features</h3>
            <table class="table compact" aria-label="Features">
              <tbody>
                {Object.entries(d.features).map(([k, v]) => (
                  <tr key={k}>
                    <th scope="row">{k}</th>
                    <td>{v}</td>
                    <td>
                      <button type="button" class="icon-button" aria-label={`Remove feature ${k}`} onClick={() => void call('feature', { name: k, value: null }, `${name}: feature ${k} removed`)}>
                        ×
                      </button>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
            <form
              class="inline"
              onSubmit={(e) => {
                e.preventDefault();
                void call('feature', { name: feat.name, value: feat.value }, `${name}: feature ${feat.name} set`).then(() => setFeat({ name: '', value: '' }));
              }}
            >
              <input type="text" aria-label="Feature name" placeholder="feature" value={feat.name} onInput={(e) => setFeat({ ...feat, name: (e.currentTarget as HTMLInputElement).value })} />
              <input type="text" aria-label="Feature value" placeholder="value" value={feat.value} onInput={(e) => setFeat({ ...feat, value: (e.currentTarget as HTMLInputElement).value })} />
              <button type="submit" class="button small">
                Set feature
              </button>
            </form>
          </>
        )}
      </div>
    </Dialog>
  );
}
