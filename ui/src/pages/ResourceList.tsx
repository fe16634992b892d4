import type { ComponentChildren } from 'preact';
import { useMemo, useState } from 'preact/hooks';
import { useResource, type K8sObject } from '../store';
import { href, useNamespace } from '../router';
import { kindById, ageColumn, type Kind } from '../kinds';
import { Table, type TableColumn } from '../components/Table';
import { DeleteDialog } from '../components/DeleteDialog';

/** The link to an object's page. */
export function objectHref(kind: Kind, o: K8sObject): string {
  if (kind.id === 'virtualmachines') return href('vms', o.metadata.namespace, o.metadata.name);
  return href('r', kind.id, kind.namespaced ? o.metadata.namespace : '_', o.metadata.name);
}

/** The Age column: youngest first when ascending. */
export function ageCol(): TableColumn<K8sObject> {
  return {
    title: 'Age',
    text: (o) => ageColumn.value(o) as string,
    sort: (o) => -(Date.parse(o.metadata.creationTimestamp ?? '') || 0),
    cell: (o) => ageColumn.value(o),
  };
}

export function columnsFor(kind: Kind): TableColumn<K8sObject>[] {
  const cols: TableColumn<K8sObject>[] = [
    {
      title: 'Name',
      class: 'words',
      text: (o) => o.metadata.name,
      cell: (o) => <a href={objectHref(kind, o)}>{o.metadata.name}</a>,
    },
  ];
  if (kind.namespaced) cols.push({ title: 'Namespace', text: (o) => o.metadata.namespace ?? '', cell: (o) => o.metadata.namespace });
  for (const c of kind.columns) {
    cols.push({ title: c.title, text: (o) => String(c.value(o) ?? ''), cell: (o) => String(c.value(o) ?? '') });
  }
  cols.push(ageCol());
  return cols;
}

interface KindTableProps {
  kind: Kind;
  heading?: 'h1' | 'h2';
  /** Row buttons before Delete. */
  actions?: (o: K8sObject) => ComponentChildren;
  /** Columns instead of the kind's own (the Name column stays first). */
  columns?: TableColumn<K8sObject>[];
  /** Said in the delete dialog. */
  deleteNote?: (o: K8sObject) => ComponentChildren;
  /** Dialogs of the actions. */
  children?: ComponentChildren;
}

/** A live list of one kind, with a link to create one from YAML. */
export function KindTable({ kind, heading = 'h1', actions, columns: own, deleteNote, children }: KindTableProps) {
  const [ns] = useNamespace();
  const state = useResource(kind.groupVersion, kind.plural, kind.namespaced ? ns : undefined);
  const [deleting, setDeleting] = useState<K8sObject | null>(null);
  const columns = useMemo(
    () => [
      ...(own ?? columnsFor(kind)),
      {
        title: 'Actions',
        class: 'actions',
        cell: (o: K8sObject) => (
          <div class="row-actions">
            {actions?.(o)}
            <button type="button" class="small danger" aria-label={`Delete ${o.metadata.name}`} onClick={() => setDeleting(o)}>
              Delete
            </button>
          </div>
        ),
      },
    ],
    [kind, own, actions],
  );
  const H = heading;
  return (
    <section class="kind-section" aria-labelledby={`h-${kind.id}`}>
      <div class="page-head">
        <H id={`h-${kind.id}`}>{kind.title}</H>
        {kind.example && (
          <a class="button" href={href('r', kind.id, 'create')}>
            Create {kind.kind}
          </a>
        )}
      </div>
      {state.error && (
        <p class="error" role="alert">
          {state.error}
        </p>
      )}
      <Table label={kind.title} testid={`table-${kind.id}`} items={state.items} columns={columns} loaded={state.loaded} />
      <DeleteDialog
        kind={kind}
        target={deleting}
        onClose={() => setDeleting(null)}
        note={deleting && deleteNote ? deleteNote(deleting) : null}
      />
      {children}
    </section>
  );
}

export function ResourceList({ kindId }: { kindId: string }) {
  const kind = kindById(kindId);
  if (!kind) return <p class="error">Unknown kind {kindId}.</p>;
  return <KindTable kind={kind} />;
}

/** Several kinds on one page (Volumes, Backups, Networks...). */
export function ResourceGroup({ title, ids }: { title: string; ids: string[] }) {
  return (
    <section>
      <h1>{title}</h1>
      {ids.map((id) => {
        const k = kindById(id);
        return k ? <KindTable key={id} kind={k} heading="h2" /> : null;
      })}
    </section>
  );
}
