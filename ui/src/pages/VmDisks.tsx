// A VM's disks on its page: what its template and its running instance
// use, the hotplug state of each, and disk hotplug (KubeVirt's
// addvolume/removevolume subresources).

import { useMemo, useState } from 'preact/hooks';
import { useResource, type K8sObject } from '../store';
import { FormDialog } from '../components/FormDialog';
import { notify } from '../components/Toasts';
import { addVolume, claimOf, hotplugged, removeVolume } from '../vm';
import { SIZE_RE, blankClaim, stampedName, trashed } from '../storage';
import { resourcePath, sendJSON } from '../api';

interface DiskRow {
  name: string;
  /** The VM volume (template's, else the instance's). */
  volume: any;
  /** In the VM's template (stays after a restart). */
  persisted: boolean;
  /** The running instance's volumeStatus entry. */
  status?: any;
}

function describe(v: any): string {
  if (v.persistentVolumeClaim) return `claim ${v.persistentVolumeClaim.claimName}`;
  if (v.dataVolume) return `claim ${v.dataVolume.name}`;
  if (v.containerDisk) return `container disk ${v.containerDisk.image}`;
  if (v.cloudInitNoCloud || v.cloudInitConfigDrive) return 'cloud-init';
  return Object.keys(v)
    .filter((k) => k !== 'name')
    .join(', ');
}

function AddDiskDialog({ vm, vmi, open, onClose }: { vm: K8sObject; vmi?: K8sObject; open: boolean; onClose: () => void }) {
  const ns = vm.metadata.namespace!;
  const name = vm.metadata.name;
  const running = vmi?.status?.phase === 'Running';
  const volumes = useResource(open ? 'sheaf.io/v1alpha1' : null, 'volumes', ns);
  const used = new Set<string>(
    [...(vm.spec?.template?.spec?.volumes ?? []), ...(vmi?.spec?.volumes ?? [])].map(claimOf).filter(Boolean) as string[],
  );
  const free = volumes.items.filter(
    (v) => !trashed(v) && !v.metadata.deletionTimestamp && !used.has(v.metadata.name) && !v.status?.attachedVmi,
  );
  const [source, setSource] = useState<'blank' | 'existing'>('blank');
  const [newName, setNewName] = useState('');
  const [size, setSize] = useState('10Gi');
  const [existing, setExisting] = useState('');
  const [bus, setBus] = useState<'scsi' | 'virtio'>('scsi');
  const [persist, setPersist] = useState(true);
  const [progress, setProgress] = useState('');
  const defaultName = `${name}-disk-${(vm.spec?.template?.spec?.volumes ?? []).length + 1}`;
  const reset = () => {
    setSource('blank');
    setNewName('');
    setSize('10Gi');
    setExisting('');
    setProgress('');
  };
  return (
    <FormDialog
      title={`Add a disk to ${name}`}
      open={open}
      onClose={() => {
        reset();
        onClose();
      }}
      submitLabel="Add disk"
      testid="add-disk-dialog"
      progress={progress}
      onSubmit={async () => {
        let claim = existing;
        if (source === 'blank') {
          claim = newName || defaultName;
          if (!SIZE_RE.test(size)) throw new Error('Give a size such as 10Gi.');
          if (volumes.items.some((v) => v.metadata.name === claim))
            throw new Error(`There is a volume named ${claim} already: give another name, or add it as an existing volume.`);
          setProgress(`Creating claim ${claim} (${size}) and waiting for it to be Bound…`);
          await blankClaim(ns, claim, size);
        } else if (!claim) throw new Error('Choose a volume.');
        setProgress(`Plugging ${claim} into ${name}…`);
        await addVolume(ns, name, claim, bus, persist || !running);
        notify(`Volume ${claim} added to ${name}${running ? '; the guest gets it when its state is Ready' : ''}`);
        reset();
      }}
    >
      {!running && <p>The VM is not running: the disk goes into its template and the VM gets it when it starts.</p>}
      <fieldset class="inner">
        <legend>Volume</legend>
        <label class="check">
          <input type="radio" name="disk-source" checked={source === 'blank'} onChange={() => setSource('blank')} /> A new blank volume
        </label>
        <label class="check">
          <input type="radio" name="disk-source" checked={source === 'existing'} onChange={() => setSource('existing')} /> An existing
          volume
        </label>
      </fieldset>
      {source === 'blank' ? (
        <div class="grid">
          <div class="field">
            <label for="add-disk-name">Name</label>
            <input id="add-disk-name" value={newName} placeholder={defaultName} onInput={(e) => setNewName(e.currentTarget.value.trim())} />
          </div>
          <div class="field">
            <label for="add-disk-size">Size</label>
            <input id="add-disk-size" value={size} onInput={(e) => setSize(e.currentTarget.value.trim())} />
          </div>
        </div>
      ) : (
        <div class="field">
          <label for="add-disk-existing">Volume</label>
          <select id="add-disk-existing" value={existing} onChange={(e) => setExisting(e.currentTarget.value)}>
            <option value="">Choose a volume…</option>
            {free.map((v) => (
              <option value={v.metadata.name}>
                {v.metadata.name} ({v.spec?.size})
              </option>
            ))}
          </select>
          {volumes.loaded && free.length === 0 && <p class="muted">No volume in {ns} is free.</p>}
        </div>
      )}
      <div class="field">
        <label for="add-disk-bus">Bus</label>
        <select id="add-disk-bus" value={bus} onChange={(e) => setBus(e.currentTarget.value as 'scsi' | 'virtio')}>
          <option value="scsi">scsi (no PCI slot needed)</option>
          <option value="virtio">virtio (takes one of the VM's hotplug ports)</option>
        </select>
      </div>
      {running && (
        <label class="check">
          <input type="checkbox" checked={persist} onChange={(e) => setPersist(e.currentTarget.checked)} /> Keep it after a restart (also in
          the VM's template)
        </label>
      )}
    </FormDialog>
  );
}

function RemoveDiskDialog({ vm, disk, onClose }: { vm: K8sObject; disk: DiskRow | null; onClose: () => void }) {
  return (
    <FormDialog
      title={`Remove disk ${disk?.name ?? ''} from ${vm.metadata.name}?`}
      open={!!disk}
      onClose={onClose}
      submitLabel="Remove disk"
      danger
      testid="remove-disk-dialog"
      onSubmit={async () => {
        await removeVolume(vm.metadata.namespace!, vm.metadata.name, disk!.name, disk!.persisted);
        notify(`Disk ${disk!.name} is being removed from ${vm.metadata.name}`);
      }}
    >
      <p>
        The guest is asked to let the disk go (a virtio disk takes about 5 seconds), then its volume is detached. The volume and its data
        stay{disk?.persisted ? '; it leaves the VM’s template too' : ''}.
      </p>
    </FormDialog>
  );
}

export function VmDisks({ vm, vmi }: { vm: K8sObject; vmi?: K8sObject }) {
  const [adding, setAdding] = useState(false);
  const [removing, setRemoving] = useState<DiskRow | null>(null);
  const running = vmi?.status?.phase === 'Running';
  const rows = useMemo<DiskRow[]>(() => {
    const status = new Map<string, any>(((running && vmi?.status?.volumeStatus) || []).map((s: any) => [s.name, s]));
    const out: DiskRow[] = (vm.spec?.template?.spec?.volumes ?? []).map((v: any) => ({
      name: v.name,
      volume: v,
      persisted: true,
      status: status.get(v.name),
    }));
    if (running) {
      for (const v of vmi?.spec?.volumes ?? []) {
        if (!out.some((r) => r.name === v.name)) out.push({ name: v.name, volume: v, persisted: false, status: status.get(v.name) });
      }
    }
    return out;
  }, [vm, vmi, running]);
  return (
    <>
      <div class="page-head">
        <h2>Disks</h2>
        <button type="button" onClick={() => setAdding(true)}>
          Add disk
        </button>
      </div>
      <ul class="disk-list" data-testid="vm-disks">
        {rows.map((r) => (
          <li data-disk={r.name}>
            <strong>{r.name}</strong>: {describe(r.volume)}
            {hotplugged(r.volume) && <span class="badge s-migrating">{r.persisted ? 'hotplugged' : 'hotplugged, this run only'}</span>}
            {r.status?.phase && (
              <span class={`badge s-${String(r.status.phase).toLowerCase()}`} data-testid="disk-phase">
                {r.status.phase}
              </span>
            )}
            {r.status?.target && <span class="muted"> {r.status.target}</span>}
            {r.status?.message && r.status.phase !== 'Ready' && <span class="muted"> {r.status.message}</span>}{' '}
            {hotplugged(r.volume) && (
              <button type="button" class="small danger" aria-label={`Remove disk ${r.name}`} onClick={() => setRemoving(r)}>
                Remove
              </button>
            )}
          </li>
        ))}
      </ul>
      <AddDiskDialog vm={vm} vmi={vmi} open={adding} onClose={() => setAdding(false)} />
      <RemoveDiskDialog vm={vm} disk={removing} onClose={() => setRemoving(null)} />
    </>
  );
}

/** Backs the VM up (Harvester's VirtualMachineBackup): to a backup target, or as snapshots kept in the cluster. */
export function VmBackupDialog({ vm, type, onClose }: { vm: K8sObject; type: 'backup' | 'snapshot' | null; onClose: () => void }) {
  const targets = useResource(type === 'backup' ? 'sheaf.io/v1alpha1' : null, 'backuptargets');
  const [name, setName] = useState('');
  const [target, setTarget] = useState('');
  const ns = vm.metadata.namespace!;
  const placeholder = stampedName(vm.metadata.name);
  return (
    <FormDialog
      title={type === 'snapshot' ? `Snapshot of VM ${vm.metadata.name}` : `Back up VM ${vm.metadata.name}`}
      open={!!type}
      onClose={() => {
        setName('');
        onClose();
      }}
      submitLabel={type === 'snapshot' ? 'Take snapshot' : 'Back up'}
      testid="vm-backup-dialog"
      onSubmit={async () => {
        const n = name || placeholder;
        const metadata: any = { name: n, namespace: ns };
        const chosen = target || (targets.items.length === 1 ? targets.items[0].metadata.name : '');
        if (type === 'backup' && chosen) metadata.annotations = { 'sheaf.io/backup-target': chosen };
        await sendJSON('POST', resourcePath('harvesterhci.io/v1beta1', 'virtualmachinebackups', ns), {
          apiVersion: 'harvesterhci.io/v1beta1',
          kind: 'VirtualMachineBackup',
          metadata,
          spec: { source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: vm.metadata.name }, type },
        });
        notify(`${type === 'snapshot' ? 'Snapshot' : 'Backup'} ${n} of ${vm.metadata.name} started; the Backups page follows it`);
        setName('');
      }}
    >
      <p>
        All its disks at one point in time, with the guest held (file systems frozen through its guest agent, else its vCPUs paused, at most
        60 s)
        {type === 'snapshot' ? '; kept in the cluster as volume snapshots.' : '; sent to a backup target, incrementally.'}
      </p>
      <div class="field">
        <label for="vm-backup-name">Name</label>
        <input id="vm-backup-name" value={name} placeholder={placeholder} onInput={(e) => setName(e.currentTarget.value.trim())} />
      </div>
      {type === 'backup' && (
        <div class="field">
          <label for="vm-backup-target">Backup target</label>
          <select id="vm-backup-target" value={target} onChange={(e) => setTarget(e.currentTarget.value)}>
            <option value="">
              {targets.items.length === 1 ? targets.items[0].metadata.name : 'The only one (needed when there are several)'}
            </option>
            {targets.items.length > 1 && targets.items.map((t) => <option value={t.metadata.name}>{t.metadata.name}</option>)}
          </select>
          {targets.loaded && targets.items.length === 0 && (
            <p class="muted">
              No backup target yet: add one under <a href="#/settings">Settings</a>.
            </p>
          )}
        </div>
      )}
    </FormDialog>
  );
}

/** Clone a VM: a new VM with its spec and a copy of every disk (the API's `clone` subresource). */
export function VmCloneDialog({ vm, open, onClose }: { vm: K8sObject; open: boolean; onClose: () => void }) {
  const [name, setName] = useState('');
  const [start, setStart] = useState(false);
  const ns = vm.metadata.namespace!;
  const placeholder = `${vm.metadata.name}-clone`;
  return (
    <FormDialog
      title={`Clone VM ${vm.metadata.name}`}
      open={open}
      onClose={() => {
        setName('');
        onClose();
      }}
      submitLabel="Clone"
      testid="vm-clone-dialog"
      progress="Creating the clone…"
      onSubmit={async () => {
        const n = name || placeholder;
        await sendJSON(
          'POST',
          `/apis/subresources.kubevirt.io/v1/namespaces/${encodeURIComponent(ns)}/virtualmachines/${encodeURIComponent(vm.metadata.name)}/clone`,
          { name: n, start },
        );
        notify(`VM ${n} created from ${vm.metadata.name}; its disks are being copied`);
        setName('');
      }}
    >
      <p>
        A new VM with the same CPU, memory, networks and cloud-init, and a copy of every disk (each taken from a snapshot, so the source keeps
        running). It gets its own MAC addresses.
      </p>
      <div class="field">
        <label for="vm-clone-name">Name of the new VM</label>
        <input id="vm-clone-name" value={name} placeholder={placeholder} onInput={(e) => setName(e.currentTarget.value.trim())} />
      </div>
      <div class="field">
        <label>
          <input type="checkbox" checked={start} onChange={(e) => setStart(e.currentTarget.checked)} /> Start it when its disks are ready
        </label>
      </div>
    </FormDialog>
  );
}
