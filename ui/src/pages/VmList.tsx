import { useMemo, useState } from 'preact/hooks';
import { useResource, type K8sObject } from '../store';
import { href, useNamespace } from '../router';
import { Table, type TableColumn } from '../components/Table';
import { Dialog } from '../components/Dialog';
import { notify } from '../components/Toasts';
import { ErrorBox } from '../components/ErrorBox';
import { ACTION_LABELS, actionsFor, deleteVm, separateClaims, vmAction, vmiKey, type VmAction } from '../vm';
import { errorMessage } from '../api';
import { ageCol } from './ResourceList';

export function statusBadge(status: string | undefined) {
  const s = status ?? 'Unknown';
  return (
    <span class={`badge s-${s.toLowerCase()}`} data-testid="vm-status">
      {s}
    </span>
  );
}

export async function runAction(vm: K8sObject, action: VmAction) {
  try {
    await vmAction(vm.metadata.namespace!, vm.metadata.name, action);
    notify(`${ACTION_LABELS[action]}: ${vm.metadata.name}`);
  } catch (e) {
    notify(`${ACTION_LABELS[action]} ${vm.metadata.name}: ${errorMessage(e)}`, true);
  }
}

/** Asks which of the VM's disks go with it, then deletes it. */
export function DeleteVmDialog({ vm, onClose, onDeleted }: { vm: K8sObject | null; onClose: () => void; onDeleted?: () => void }) {
  const claims = vm ? separateClaims(vm) : [];
  const [remove, setRemove] = useState<Set<string>>(new Set());
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const own = (vm?.spec?.dataVolumeTemplates ?? []).map((d: any) => d.metadata?.name as string);
  const submit = async (e: Event) => {
    e.preventDefault();
    if (!vm) return;
    setBusy(true);
    setError(null);
    try {
      await deleteVm(vm, [...remove]);
      notify(`Deleted VM ${vm.metadata.name}`);
      setRemove(new Set());
      onClose();
      onDeleted?.();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <Dialog title={`Delete VM ${vm?.metadata.name ?? ''}?`} open={!!vm} onClose={onClose}>
      <form onSubmit={submit} data-testid="delete-vm-dialog">
        {own.length > 0 && <p>Its own disks are deleted with it: {own.join(', ')}.</p>}
        {claims.length > 0 && (
          <fieldset>
            <legend>Also delete these disks</legend>
            {claims.map((c) => (
              <label class="check">
                <input
                  type="checkbox"
                  checked={remove.has(c)}
                  onChange={(e) => {
                    const s = new Set(remove);
                    if (e.currentTarget.checked) s.add(c);
                    else s.delete(c);
                    setRemove(s);
                  }}
                />
                {c}
              </label>
            ))}
          </fieldset>
        )}
        <ErrorBox error={error} />
        <div class="buttons">
          <button type="submit" class="danger" disabled={busy}>
            Delete
          </button>
          <button type="button" onClick={onClose}>
            Cancel
          </button>
        </div>
      </form>
    </Dialog>
  );
}

export function VmList() {
  const [ns] = useNamespace();
  const vms = useResource('kubevirt.io/v1', 'virtualmachines', ns);
  const vmis = useResource('kubevirt.io/v1', 'virtualmachineinstances', ns);
  const [deleting, setDeleting] = useState<K8sObject | null>(null);

  const vmiBy = useMemo(() => {
    const m = new Map<string, K8sObject>();
    for (const i of vmis.items) m.set(vmiKey(i.metadata.namespace, i.metadata.name), i);
    return m;
  }, [vmis.items]);

  const columns = useMemo<TableColumn<K8sObject>[]>(
    () => [
      {
        title: 'Name',
        text: (o) => o.metadata.name,
        cell: (o) => <a href={href('vms', o.metadata.namespace, o.metadata.name)}>{o.metadata.name}</a>,
      },
      { title: 'Namespace', text: (o) => o.metadata.namespace ?? '', cell: (o) => o.metadata.namespace },
      { title: 'Status', text: (o) => o.status?.printableStatus ?? '', cell: (o) => statusBadge(o.status?.printableStatus) },
      {
        title: 'Node',
        text: (o) => vmiBy.get(vmiKey(o.metadata.namespace, o.metadata.name))?.status?.nodeName ?? '',
        cell: (o) => vmiBy.get(vmiKey(o.metadata.namespace, o.metadata.name))?.status?.nodeName ?? '',
      },
      {
        title: 'IP',
        text: (o) => vmiBy.get(vmiKey(o.metadata.namespace, o.metadata.name))?.status?.interfaces?.[0]?.ipAddress ?? '',
        cell: (o) => (
          <span data-testid="vm-ip">
            {vmiBy.get(vmiKey(o.metadata.namespace, o.metadata.name))?.status?.interfaces?.[0]?.ipAddress ?? ''}
          </span>
        ),
      },
      ageCol(),
      {
        title: 'Actions',
        class: 'actions',
        cell: (o) => (
          <div class="row-actions">
            {actionsFor(o.status?.printableStatus).map((a) => (
              <button type="button" class="small" aria-label={`${ACTION_LABELS[a]} ${o.metadata.name}`} onClick={() => runAction(o, a)}>
                {ACTION_LABELS[a]}
              </button>
            ))}
            <button type="button" class="small danger" aria-label={`Delete ${o.metadata.name}`} onClick={() => setDeleting(o)}>
              Delete
            </button>
          </div>
        ),
      },
    ],
    [vmiBy],
  );

  return (
    <section>
      <div class="page-head">
        <h1>Virtual machines</h1>
        <div class="buttons">
          <a class="button primary" href="#/vms/create">
            Create VM
          </a>
          <a class="button" href="#/r/virtualmachines/create">
            Create from YAML
          </a>
          <a class="button" href="#/r/virtualmachineinstances">
            Instances
          </a>
          <a class="button" href="#/r/migrations">
            Migrations
          </a>
        </div>
      </div>
      {vms.error && (
        <p class="error" role="alert">
          {vms.error}
        </p>
      )}
      <Table
        label="Virtual machines"
        testid="vm-table"
        items={vms.items}
        columns={columns}
        loaded={vms.loaded}
        empty="No virtual machines yet."
      />
      <DeleteVmDialog vm={deleting} onClose={() => setDeleting(null)} />
    </section>
  );
}
