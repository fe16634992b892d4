import type { ComponentChildren } from 'preact';
import { useEffect, useMemo, useState } from 'preact/hooks';
import type { K8sObject } from '../store';

export interface TableColumn<T> {
  title: string;
  cell: (o: T) => ComponentChildren;
  /** Text the filter matches and, without `sort`, the column sorts by. */
  text?: (o: T) => string;
  /** What the column sorts by, when not its text (sizes, times). */
  sort?: (o: T) => string | number;
  class?: string;
}

interface Props<T extends K8sObject> {
  label: string;
  items: T[];
  columns: TableColumn<T>[];
  loaded: boolean;
  empty?: string;
  testid?: string;
  /** Rows per page (default 100). */
  pageSize?: number;
}

type Direction = 'ascending' | 'descending';

const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' });

function compare(a: string | number, b: string | number): number {
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  return collator.compare(String(a), String(b));
}

/** Whether a column can be sorted by. */
const sortable = <T,>(c: TableColumn<T>) => !!(c.sort || c.text);

/**
 * A table of objects, one row per object: a filter, columns sorted by a
 * click on their heading (or the "Sort by" menu of narrow windows), and
 * pages of `pageSize` rows so that a list of thousands stays quick.
 */
export function Table<T extends K8sObject>({ label, items, columns, loaded, empty, testid, pageSize = 100 }: Props<T>) {
  const [filter, setFilter] = useState('');
  const [sortBy, setSortBy] = useState<string | null>(null);
  const [direction, setDirection] = useState<Direction>('ascending');
  const [page, setPage] = useState(0);

  const filtered = useMemo(() => {
    const f = filter.trim().toLowerCase();
    if (!f) return items;
    return items.filter(
      (o) => columns.some((c) => (c.text ? c.text(o) : '').toLowerCase().includes(f)) || o.metadata.name.toLowerCase().includes(f),
    );
  }, [items, filter, columns]);

  const sorted = useMemo(() => {
    const col = columns.find((c) => c.title === sortBy);
    if (!col || !sortable(col)) return filtered;
    const key = col.sort ?? col.text!;
    const sign = direction === 'ascending' ? 1 : -1;
    // Keys computed once per row; ties keep the store's namespace/name order.
    return filtered
      .map((o, i) => ({ o, i, k: key(o) ?? '' }))
      .sort((a, b) => sign * compare(a.k, b.k) || a.i - b.i)
      .map((x) => x.o);
  }, [filtered, columns, sortBy, direction]);

  const pages = Math.max(1, Math.ceil(sorted.length / pageSize));
  const current = Math.min(page, pages - 1);
  useEffect(() => setPage(0), [filter, sortBy, direction]);
  const rows = sorted.length > pageSize ? sorted.slice(current * pageSize, (current + 1) * pageSize) : sorted;
  const first = sorted.length ? current * pageSize + 1 : 0;
  const last = current * pageSize + rows.length;

  const sortOn = (title: string) => {
    if (sortBy === title) setDirection(direction === 'ascending' ? 'descending' : 'ascending');
    else {
      setSortBy(title);
      setDirection('ascending');
    }
  };

  return (
    <div class="table-wrap">
      <div class="table-tools">
        <label>
          <span>Filter</span>
          <input type="search" value={filter} onInput={(e) => setFilter(e.currentTarget.value)} aria-label={`Filter ${label}`} />
        </label>
        <label class="narrow-only">
          <span>Sort by</span>
          <select
            aria-label={`Sort ${label} by`}
            value={sortBy ? `${sortBy}|${direction}` : ''}
            onChange={(e) => {
              const [t, d] = e.currentTarget.value.split('|');
              setSortBy(t || null);
              setDirection((d as Direction) || 'ascending');
            }}
          >
            <option value="">As listed</option>
            {columns.filter(sortable).map((c) => (
              <>
                <option value={`${c.title}|ascending`}>{c.title} (ascending)</option>
                <option value={`${c.title}|descending`}>{c.title} (descending)</option>
              </>
            ))}
          </select>
        </label>
        <span class="muted" aria-live="polite" data-testid="table-count">
          {!loaded
            ? 'Loading…'
            : sorted.length > pageSize
              ? `${first}–${last} of ${sorted.length}${sorted.length !== items.length ? ` (${items.length} in all)` : ''}`
              : `${sorted.length} of ${items.length}`}
        </span>
      </div>
      <div class="scroll-x">
        <table aria-label={label} data-testid={testid} data-total={loaded ? sorted.length : undefined}>
          <thead>
            <tr>
              {columns.map((c) => {
                const active = sortBy === c.title;
                return (
                  <th scope="col" class={c.class} aria-sort={sortable(c) ? (active ? direction : 'none') : undefined}>
                    {sortable(c) ? (
                      <button
                        type="button"
                        class="sort"
                        onClick={() => sortOn(c.title)}
                        title={`Sort by ${c.title}${active && direction === 'ascending' ? ', descending' : ''}`}
                      >
                        {c.title}
                        <span aria-hidden="true" class="sort-mark">
                          {active ? (direction === 'ascending' ? ' ▲' : ' ▼') : ' ↕'}
                        </span>
                      </button>
                    ) : (
                      c.title
                    )}
                  </th>
                );
              })}
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
      {pages > 1 && (
        <nav class="pager" aria-label={`Pages of ${label}`}>
          <button type="button" class="small" onClick={() => setPage(0)} disabled={current === 0}>
            First
          </button>
          <button type="button" class="small" onClick={() => setPage(current - 1)} disabled={current === 0}>
            Previous
          </button>
          <span aria-live="polite">
            Page {current + 1} of {pages}
          </span>
          <button type="button" class="small" onClick={() => setPage(current + 1)} disabled={current >= pages - 1}>
            Next
          </button>
          <button type="button" class="small" onClick={() => setPage(pages - 1)} disabled={current >= pages - 1}>
            Last
          </button>
        </nav>
      )}
      {loaded && items.length === 0 && <p class="muted">{empty ?? 'None yet.'}</p>}
    </div>
  );
}
