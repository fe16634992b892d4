import type { ComponentChildren } from 'preact';
import { useMemo, useState } from 'preact/hooks';
import type { K8sObject } from '../store';

export interface TableColumn<T> {
  title: string;
  cell: (o: T) => ComponentChildren;
  /** Text the filter matches and the column sorts by. */
  text?: (o: T) => string;
  class?: string;
}

interface Props<T extends K8sObject> {
  label: string;
  items: T[];
  columns: TableColumn<T>[];
  loaded: boolean;
  empty?: string;
  testid?: string;
}

/** A filterable table of objects, one row per object. */
export function Table<T extends K8sObject>({ label, items, columns, loaded, empty, testid }: Props<T>) {
  const [filter, setFilter] = useState('');
  const rows = useMemo(() => {
    const f = filter.trim().toLowerCase();
    if (!f) return items;
    return items.filter(
      (o) => columns.some((c) => (c.text ? c.text(o) : '').toLowerCase().includes(f)) || o.metadata.name.toLowerCase().includes(f),
    );
  }, [items, filter, columns]);
  return (
    <div class="table-wrap">
      <div class="table-tools">
        <label>
          <span>Filter</span>
          <input type="search" value={filter} onInput={(e) => setFilter(e.currentTarget.value)} aria-label={`Filter ${label}`} />
        </label>
        <span class="muted" aria-live="polite">
          {loaded ? `${rows.length} of ${items.length}` : 'Loading…'}
        </span>
      </div>
      <div class="scroll-x">
        <table aria-label={label} data-testid={testid}>
          <thead>
            <tr>
              {columns.map((c) => (
                <th scope="col" class={c.class}>
                  {c.title}
                </th>
              ))}
            </tr>
          </thead>
          <tbody>
            {rows.map((o) => (
              <tr key={o.metadata.uid ?? `${o.metadata.namespace}/${o.metadata.name}`} data-name={o.metadata.name}>
                {columns.map((c) => (
                  <td class={c.class} data-label={c.title}>
                    {c.cell(o)}
                  </td>
                ))}
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {loaded && items.length === 0 && <p class="muted">{empty ?? 'None yet.'}</p>}
    </div>
  );
}
