import type { ComponentChildren } from 'preact';
import { useState } from 'preact/hooks';
import { resourcePath, sendJSON } from '../api';
import type { K8sObject } from '../store';
import type { Kind } from '../kinds';
import { Dialog } from './Dialog';
import { ErrorBox } from './ErrorBox';
import { notify } from './Toasts';

/** Asks, then deletes one object; the server's refusal (409 with the reason) stays in the dialog. */
export function DeleteDialog({
  kind,
  target,
  onClose,
  note,
}: {
  kind: Kind;
  target: K8sObject | null;
  onClose: () => void;
  /** What deleting it does, when more than it goes. */
  note?: ComponentChildren;
}) {
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const close = () => {
    setError(null);
    onClose();
  };
  const remove = async () => {
    if (!target) return;
    setBusy(true);
    setError(null);
    try {
      const ns = kind.namespaced ? target.metadata.namespace : undefined;
      await sendJSON('DELETE', resourcePath(kind.groupVersion, kind.plural, ns, target.metadata.name));
      notify(`Deleted ${kind.kind} ${target.metadata.name}`);
      close();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return (
    <Dialog title={`Delete ${kind.kind} ${target?.metadata.name ?? ''}?`} open={!!target} onClose={close}>
      {note && <p>{note}</p>}
      <ErrorBox error={error} />
      <div class="buttons" data-testid="delete-dialog">
        <button type="button" class="danger" onClick={remove} disabled={busy}>
          Delete
        </button>
        <button type="button" onClick={close}>
          Cancel
        </button>
      </div>
    </Dialog>
  );
}
