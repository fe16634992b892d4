import { useEffect, useState } from 'preact/hooks';
import { getJSON, resourcePath, sendJSON } from '../api';
import { kindById, type Kind } from '../kinds';
import { navigate, href } from '../router';
import { YamlEditor, toYaml } from '../components/YamlEditor';
import { ErrorBox } from '../components/ErrorBox';
import { Dialog } from '../components/Dialog';
import { notify } from '../components/Toasts';
import type { K8sObject } from '../store';

/** What the YAML view shows: the object without its managed fields. */
export function forDisplay(o: K8sObject): K8sObject {
  const copy = { ...o, metadata: { ...o.metadata } };
  delete copy.metadata.managedFields;
  return copy;
}

/** GET as JSON, edit as YAML, PUT back. */
export function ObjectYaml({ kind, namespace, name, onDeleted }: { kind: Kind; namespace: string; name: string; onDeleted?: () => void }) {
  const path = resourcePath(kind.groupVersion, kind.plural, kind.namespaced ? namespace : undefined, name);
  const [obj, setObj] = useState<K8sObject | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [version, setVersion] = useState(0);
  const [confirm, setConfirm] = useState(false);
  const [delError, setDelError] = useState<unknown>(null);

  useEffect(() => {
    setError(null);
    getJSON<K8sObject>(path)
      .then((o) => setObj(forDisplay(o)))
      .catch(setError);
  }, [path, version]);

  const remove = async () => {
    setDelError(null);
    try {
      await sendJSON('DELETE', path);
      notify(`Deleted ${kind.kind} ${name}`);
      setConfirm(false);
      if (onDeleted) onDeleted();
      else navigate(href('r', kind.id).slice(1));
    } catch (e) {
      setDelError(e);
    }
  };

  if (error) return <ErrorBox error={error} />;
  if (!obj) return <p class="muted">Loading…</p>;
  return (
    <>
      <YamlEditor
        key={obj.metadata.resourceVersion}
        label={`${kind.kind} ${name} (YAML)`}
        initial={toYaml(obj)}
        submitLabel="Save"
        onSubmit={async (o) => {
          const saved = await sendJSON<K8sObject>('PUT', path, o);
          notify(`Saved ${kind.kind} ${name}`);
          setObj(forDisplay(saved));
        }}
        extraButtons={
          <>
            <button type="button" onClick={() => setVersion(version + 1)}>
              Reload
            </button>
            <button type="button" class="danger" onClick={() => setConfirm(true)}>
              Delete
            </button>
          </>
        }
      />
      <Dialog title={`Delete ${kind.kind} ${name}?`} open={confirm} onClose={() => setConfirm(false)}>
        <ErrorBox error={delError} />
        <div class="buttons">
          <button type="button" class="danger" onClick={remove}>
            Delete
          </button>
          <button type="button" onClick={() => setConfirm(false)}>
            Cancel
          </button>
        </div>
      </Dialog>
    </>
  );
}

export function ResourceDetail({ kindId, namespace, name }: { kindId: string; namespace: string; name: string }) {
  const kind = kindById(kindId);
  if (!kind) return <p class="error">Unknown kind {kindId}.</p>;
  return (
    <section>
      <nav aria-label="Breadcrumb" class="crumbs">
        <a href={href('r', kind.id)}>{kind.title}</a> / {namespace ? `${namespace} / ` : ''}
        {name}
      </nav>
      <h1>
        {kind.kind} {name}
      </h1>
      {kind.id === 'nodes' && <NodeActionsSlot name={name} />}
      <ObjectYaml kind={kind} namespace={namespace} name={name} />
    </section>
  );
}

// Filled in by the Nodes page module (keeps this module free of node logic).
let nodeActions: ((p: { name: string }) => preact.JSX.Element) | null = null;
export function registerNodeActions(c: (p: { name: string }) => preact.JSX.Element) {
  nodeActions = c;
}
function NodeActionsSlot({ name }: { name: string }) {
  const C = nodeActions;
  return C ? <C name={name} /> : null;
}
