/** Notifications: toasts for new ones, and a filterable history. */
import { useState } from 'preact/hooks';
import type { Notice } from './types.js';
import { noticeText, rpcName } from './types.js';
import { TableHead } from './table.js';

export function Toasts({ toasts, onDismiss }: { toasts: readonly Notice[]; onDismiss: (id: number) => void }) {
  return (
    <div class="toasts" role="region" aria-label="Notifications">
      {toasts.map((n) => (
        <div key={n.id} class={`toast ${n.resolution}`} role="status">
          <span class="toast-icon" aria-hidden="true">
            {n.resolution === 'allow' ? '✓' : '!'}
          </span>
          <span class="toast-text">{noticeText(n)}</span>
          <button type="button" class="icon-button" aria-label="Dismiss notification" onClick={() => onDismiss(n.id)}>
            ×
          </button>
        </div>
      ))}
    </div>
  );
}

const time = (t: number): string => new Date(t).toLocaleTimeString();

export function NoticeHistory({ history }: { history: readonly Notice[] }) {
  const [filter, setFilter] = useState('');
  const [result, setResult] = useState<'all' | Notice['resolution']>('all');
  const f = filter.trim().toLowerCase();
  const rows = history
    .filter((n) => (result === 'all' || n.resolution === result) && (f === '' || noticeText(n).toLowerCase().includes(f)))
    .slice()
    .reverse();
  return (
    <section class="panel" aria-labelledby="hist-title">
      <div class="panel-head">
        <h2 id="hist-title">Notifications</h2>
        <div class="filters">
          <input type="search" placeholder="Filter by qube or service" aria-label="Filter notifications" value={filter} onInput={(e) => setFilter((e.currentTarget as HTMLInputElement).value)} />
          <select aria-label="Result" value={result} onChange={(e) => setResult((e.currentTarget as HTMLSelectElement).value as typeof result)}>
            <option value="all">All results</option>
            <option value="deny">Denied</option>
            <option value="allow">Allowed</option>
            <option value="fail">Failed</option>
          </select>
        </div>
      </div>
      {rows.length === 0 ? (
        <p class="empty">{history.length === 0 ? 'No notifications yet.' : 'No notification matches the filter.'}</p>
      ) : (
        <table class="table" aria-label="Notification history">
          <TableHead columns={['Time', 'Result', 'Service', 'From', 'To']} />
          <tbody>
            {rows.map((n) => (
              <tr key={n.id}>
                <td>{time(n.time)}</td>
                <td>
                  <span class={`pill ${n.resolution}`}>{n.resolution === 'allow' ? 'Allowed' : n.resolution === 'deny' ? 'Denied' : 'Failed'}</span>
                </td>
                <td>
                  <code>{rpcName(n.service, n.argument)}</code>
                </td>
                <td>{n.source}</td>
                <td>{n.target}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
