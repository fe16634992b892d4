// The Backups page: VM backups (restore to the same VM or a new one,
// delete), VM restores, schedules, and volume backups (restore to a new
// volume, delete).

import { useCallback, useState } from 'preact/hooks';
import type { K8sObject } from '../store';
import { kindById } from '../kinds';
import { href } from '../router';
import { formatBytes, parseQuantity } from '../format';
import { KindTable } from './ResourceList';
import { FormDialog } from '../components/FormDialog';
import { notify } from '../components/Toasts';
import { SIZE_RE, backupMinSize, exactQuantity, restoreBackup, restoreVmBackup } from '../storage';

function RestoreVmDialog({ backup, onClose }: { backup: K8sObject | null; onClose: () => void }) {
  const [mode, setMode] = useState<'new' | 'replace'>('new');
  const [name, setName] = useState('');
  const [keepMac, setKeepMac] = useState(false);
  const [retain, setRetain] = useState(false);
  const b = backup;
  const source = b?.spec?.source?.name ?? '';
  const reset = () => {
    setMode('new');
    setName('');
    setKeepMac(false);
    setRetain(false);
  };
  return (
    <FormDialog
      title={`Restore VM backup ${b?.metadata.name ?? ''}`}
      open={!!b}
      onClose={() => {
        reset();
        onClose();
      }}
      submitLabel="Restore"
      danger={mode === 'replace'}
      testid="restore-vm-dialog"
      onSubmit={async () => {
        const target = mode === 'new' ? name || `${source}-restored` : source;
        const r = await restoreVmBackup(b!, { target, newVm: mode === 'new', keepMacAddress: keepMac, retainVolumes: retain });
        notify(`Restore ${r} of ${b!.metadata.name} into VM ${target} started; the VM restores list follows it`);
        reset();
      }}
    >
      <fieldset class="inner">
        <legend>Restore to</legend>
        <label class="check">
          <input type="radio" name="restore-mode" checked={mode === 'new'} onChange={() => setMode('new')} /> A new VM
        </label>
        <label class="check">
          <input type="radio" name="restore-mode" checked={mode === 'replace'} onChange={() => setMode('replace')} /> The same VM, {source}{' '}
          (replaced)
        </label>
      </fieldset>
      {mode === 'new' ? (
        <>
          <div class="field">
            <label for="restore-vm-name">New VM name</label>
            <input
              id="restore-vm-name"
              value={name}
              placeholder={`${source}-restored`}
              onInput={(e) => setName(e.currentTarget.value.trim())}
            />
          </div>
          <label class="check">
            <input type="checkbox" checked={keepMac} onChange={(e) => setKeepMac(e.currentTarget.checked)} /> Keep the MAC addresses (only
            once the original VM is gone, or they clash)
          </label>
          <p class="muted">New volumes filled from the backup; new MAC addresses and firmware UUID unless kept.</p>
        </>
      ) : (
        <>
          <p>
            VM {source} must be stopped (the restore waits for it). Its spec becomes the backed-up one, on new volumes filled from the
            backup.
          </p>
          <label class="check">
            <input type="checkbox" checked={retain} onChange={(e) => setRetain(e.currentTarget.checked)} /> Keep the volumes it uses now
            (otherwise they are deleted)
          </label>
        </>
      )}
    </FormDialog>
  );
}

function RestoreVolumeDialog({ backup, onClose }: { backup: K8sObject | null; onClose: () => void }) {
  const [name, setName] = useState('');
  const [size, setSize] = useState('');
  const [replicas, setReplicas] = useState('');
  const b = backup;
  const min = b ? backupMinSize(b) : 0;
  const reset = () => {
    setName('');
    setSize('');
    setReplicas('');
  };
  return (
    <FormDialog
      title={`Restore volume backup ${b?.metadata.name ?? ''}`}
      open={!!b}
      onClose={() => {
        reset();
        onClose();
      }}
      submitLabel="Restore"
      testid="restore-volume-dialog"
      onSubmit={async () => {
        const to = {
          name: name || `${b!.spec?.volumeName}-restored`,
          size: size || exactQuantity(min),
          replicas: replicas ? Number(replicas) : undefined,
        };
        if (!SIZE_RE.test(to.size)) throw new Error('Give a size such as 20Gi.');
        if (parseQuantity(to.size) < min) throw new Error(`At least ${exactQuantity(min)}: the backup is ${formatBytes(b!.status?.size)}.`);
        await restoreBackup(b!, to);
        notify(`Volume ${to.name} is being filled from backup ${b!.metadata.name}; the volume list shows its progress`);
        reset();
      }}
    >
      <p>
        A new volume with the data of volume {b?.spec?.volumeName} at the backup ({formatBytes(b?.status?.size)}). It can be attached once
        filled.
      </p>
      <div class="field">
        <label for="restore-vol-name">New volume name</label>
        <input
          id="restore-vol-name"
          value={name}
          placeholder={b ? `${b.spec?.volumeName}-restored` : ''}
          onInput={(e) => setName(e.currentTarget.value.trim())}
        />
      </div>
      <div class="field">
        <label for="restore-vol-size">Size (at least the backup's)</label>
        <input id="restore-vol-size" value={size} placeholder={exactQuantity(min)} onInput={(e) => setSize(e.currentTarget.value.trim())} />
      </div>
      <div class="field">
        <label for="restore-vol-replicas">Replicas (default 3)</label>
        <input
          id="restore-vol-replicas"
          type="number"
          min={1}
          max={16}
          value={replicas}
          onInput={(e) => setReplicas(e.currentTarget.value)}
        />
      </div>
    </FormDialog>
  );
}

function VmBackupsSection() {
  const [restore, setRestore] = useState<K8sObject | null>(null);
  const actions = useCallback(
    (o: K8sObject) => (
      <button
        type="button"
        class="small"
        aria-label={`Restore ${o.metadata.name}`}
        disabled={o.status?.readyToUse !== true}
        title={o.status?.readyToUse !== true ? 'Not ready yet' : undefined}
        onClick={() => setRestore(o)}
      >
        Restore
      </button>
    ),
    [],
  );
  return (
    <KindTable
      kind={kindById('vmbackups')!}
      heading="h2"
      actions={actions}
      deleteNote={() => 'Its volume backups are deleted with it (their data leaves the target); the VM does not change.'}
    >
      <RestoreVmDialog backup={restore} onClose={() => setRestore(null)} />
    </KindTable>
  );
}

function VolumeBackupsSection() {
  const [restore, setRestore] = useState<K8sObject | null>(null);
  const actions = useCallback(
    (o: K8sObject) => (
      <button
        type="button"
        class="small"
        aria-label={`Restore ${o.metadata.name}`}
        disabled={o.status?.phase !== 'Completed'}
        title={o.status?.phase !== 'Completed' ? 'Only a completed backup can be restored' : undefined}
        onClick={() => setRestore(o)}
      >
        Restore
      </button>
    ),
    [],
  );
  return (
    <KindTable
      kind={kindById('backups')!}
      heading="h2"
      actions={actions}
      deleteNote={() => 'Its manifest leaves the target; its chunks go at the next garbage collection unless other backups share them.'}
    >
      <RestoreVolumeDialog backup={restore} onClose={() => setRestore(null)} />
    </KindTable>
  );
}

export function Backups() {
  return (
    <section>
      <h1>Backups</h1>
      <p class="muted">
        Back a VM up with <a href={href('r', 'vmbackups', 'create')}>Create VirtualMachineBackup</a>; targets are under{' '}
        <a href="#/settings">Settings</a>.
      </p>
      <VmBackupsSection />
      <KindTable kind={kindById('vmrestores')!} heading="h2" />
      <KindTable kind={kindById('schedulevmbackups')!} heading="h2" />
      <VolumeBackupsSection />
    </section>
  );
}
