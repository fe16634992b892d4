// The Volumes page: volumes with their row actions (snapshot, expand,
// clone, purge, delete), snapshots (revert, restore to a new volume,
// delete), then claims, storage classes and disks.

import { useCallback, useMemo, useState } from 'preact/hooks';
import { useResource, type K8sObject } from '../store';
import { href, useNamespace } from '../router';
import { kindById } from '../kinds';
import { formatBytes, parseQuantity } from '../format';
import { KindTable, ageCol, objectHref } from './ResourceList';
import type { TableColumn } from '../components/Table';
import { FormDialog } from '../components/FormDialog';
import { notify } from '../components/Toasts';
import {
  SIZE_RE,
  cloneClaim,
  expandVolume,
  exactQuantity,
  purgeVolume,
  revertVolume,
  stampedName,
  takeSnapshot,
  trashed,
  volumeFromSnapshot,
} from '../storage';

const GV = 'sheaf.io/v1alpha1';
const nsName = (o: K8sObject) => `${o.metadata.namespace ?? ''}/${o.metadata.name}`;

/** The claim a volume is provisioned for: the claim of its name bound to it. */
function claimFor(claims: Map<string, K8sObject>, v: K8sObject): K8sObject | undefined {
  const c = claims.get(nsName(v));
  return c && (c.spec?.volumeName === v.metadata.name || c.status?.phase === 'Bound') ? c : undefined;
}

function Field({ id, label, children, hint }: { id: string; label: string; children: any; hint?: string }) {
  return (
    <div class="field">
      <label for={id}>{label}</label>
      {children}
      {hint && <p class="muted">{hint}</p>}
    </div>
  );
}

function volumeState(v: K8sObject): string {
  if (trashed(v)) return 'Trashed';
  return v.status?.state ?? '';
}

function sizeText(v: K8sObject): string {
  const want = v.spec?.size ?? '';
  const have = v.status?.size;
  if (have && want && Math.abs(parseQuantity(want) - have) >= 4096) return `${formatBytes(have)} → ${want}`;
  return want;
}

// ---------------------------------------------------------------------------
// Volumes

function SnapshotDialog({ vol, onClose }: { vol: K8sObject | null; onClose: () => void }) {
  const [name, setName] = useState('');
  const open = !!vol;
  const v = vol;
  return (
    <FormDialog
      title={`Snapshot of volume ${v?.metadata.name ?? ''}`}
      open={open}
      onClose={() => {
        setName('');
        onClose();
      }}
      submitLabel="Take snapshot"
      testid="snapshot-dialog"
      progress="Taking the snapshot (the replicas agree on one point of the guest's writes)…"
      onSubmit={async () => {
        const n = name || stampedName(v!.metadata.name);
        await takeSnapshot(v!.metadata.namespace!, v!.metadata.name, n);
        notify(`Snapshot ${n} of volume ${v!.metadata.name} taken`);
        setName('');
      }}
    >
      <p>A crash-consistent copy of the volume as it is now; the VM using it (if any) runs on.</p>
      <Field id="snap-name" label="Snapshot name">
        <input
          id="snap-name"
          value={name}
          placeholder={v ? stampedName(v.metadata.name) : ''}
          onInput={(e) => setName(e.currentTarget.value.trim())}
        />
      </Field>
    </FormDialog>
  );
}

function ExpandDialog({ vol, claim, onClose }: { vol: K8sObject | null; claim?: K8sObject; onClose: () => void }) {
  const [size, setSize] = useState('');
  const v = vol;
  const current = v ? parseQuantity(v.spec?.size) : 0;
  return (
    <FormDialog
      title={`Expand volume ${v?.metadata.name ?? ''}`}
      open={!!v}
      onClose={() => {
        setSize('');
        onClose();
      }}
      submitLabel="Expand"
      testid="expand-dialog"
      progress="Waiting for the replicas to grow…"
      onSubmit={async () => {
        if (!SIZE_RE.test(size)) throw new Error('Give a size such as 20Gi.');
        if (parseQuantity(size) <= current) throw new Error(`A volume only grows: give more than ${v!.spec?.size}.`);
        await expandVolume(v!, size, claim);
        notify(`Volume ${v!.metadata.name} is now ${size}`);
        setSize('');
      }}
    >
      <p>
        Now {v?.spec?.size}
        {v?.status?.size ? ` (${formatBytes(v.status.size)} on the replicas)` : ''}. A volume grows, never shrinks; a running guest sees the
        new size on a vhost-user volume at once, on others after the VM restarts.
        {claim && ` It grows through its claim ${claim.metadata.name}, whose storage class must allow expansion.`}
      </p>
      <Field id="expand-size" label="New size">
        <input id="expand-size" value={size} placeholder="20Gi" onInput={(e) => setSize(e.currentTarget.value.trim())} />
      </Field>
    </FormDialog>
  );
}

function CloneDialog({
  vol,
  claim,
  snapshots,
  onClose,
}: {
  vol: K8sObject | null;
  claim?: K8sObject;
  snapshots: K8sObject[];
  onClose: () => void;
}) {
  const [name, setName] = useState('');
  const [size, setSize] = useState('');
  const [from, setFrom] = useState('');
  const [progress, setProgress] = useState('');
  const v = vol;
  const mine = v ? snapshots.filter((s) => s.spec?.volumeName === v.metadata.name && s.status?.readyToUse) : [];
  const reset = () => {
    setName('');
    setSize('');
    setFrom('');
  };
  return (
    <FormDialog
      title={`Clone volume ${v?.metadata.name ?? ''}`}
      open={!!v}
      onClose={() => {
        reset();
        onClose();
      }}
      submitLabel="Clone"
      testid="clone-dialog"
      progress={progress}
      onSubmit={async () => {
        const ns = v!.metadata.namespace!;
        const to = { name: name || `${v!.metadata.name}-clone`, size: size || v!.spec?.size, replicas: v!.spec?.numberOfReplicas };
        if (!SIZE_RE.test(to.size)) throw new Error('Give a size such as 20Gi.');
        if (claim) {
          setProgress(`Cloning claim ${claim.metadata.name} into claim ${to.name}…`);
          await cloneClaim(claim, to);
        } else {
          let snap = from;
          if (!snap) {
            snap = stampedName(`${to.name}-src`);
            setProgress(`Taking snapshot ${snap} of ${v!.metadata.name}…`);
            await takeSnapshot(ns, v!.metadata.name, snap);
          }
          setProgress(`Filling volume ${to.name} from snapshot ${snap}…`);
          await volumeFromSnapshot(ns, snap, to, v!);
        }
        notify(`Volume ${to.name} is a clone of ${v!.metadata.name}`);
        reset();
      }}
    >
      {claim ? (
        <p>
          A new claim with the data of claim {claim.metadata.name} as it is now (Sheaf snapshots it, fills the new volume, then drops that
          snapshot).
        </p>
      ) : (
        <Field id="clone-from" label="From">
          <select id="clone-from" value={from} onChange={(e) => setFrom(e.currentTarget.value)}>
            <option value="">A snapshot taken now</option>
            {mine.map((s) => (
              <option value={s.metadata.name}>Snapshot {s.metadata.name}</option>
            ))}
          </select>
        </Field>
      )}
      <Field id="clone-name" label={claim ? 'New claim name' : 'New volume name'}>
        <input
          id="clone-name"
          value={name}
          placeholder={v ? `${v.metadata.name}-clone` : ''}
          onInput={(e) => setName(e.currentTarget.value.trim())}
        />
      </Field>
      <Field id="clone-size" label="Size (at least the source's)">
        <input id="clone-size" value={size} placeholder={v?.spec?.size} onInput={(e) => setSize(e.currentTarget.value.trim())} />
      </Field>
    </FormDialog>
  );
}

function PurgeDialog({ vol, onClose }: { vol: K8sObject | null; onClose: () => void }) {
  return (
    <FormDialog
      title={`Purge volume ${vol?.metadata.name ?? ''}?`}
      open={!!vol}
      onClose={onClose}
      submitLabel="Purge"
      danger
      onSubmit={async () => {
        await purgeVolume(vol!.metadata.namespace!, vol!.metadata.name);
        notify(`Volume ${vol!.metadata.name} and its snapshots are being deleted`);
      }}
    >
      <p>The volume is in the trash, kept for its snapshots. Purging deletes it and all its snapshots now; backups stay.</p>
    </FormDialog>
  );
}

function VolumesSection() {
  const kind = kindById('volumes')!;
  const [ns] = useNamespace();
  const claims = useResource('v1', 'persistentvolumeclaims', ns);
  const snapshots = useResource(GV, 'volumesnapshots', ns);
  const [snap, setSnap] = useState<K8sObject | null>(null);
  const [expand, setExpand] = useState<K8sObject | null>(null);
  const [clone, setClone] = useState<K8sObject | null>(null);
  const [purge, setPurge] = useState<K8sObject | null>(null);
  const vmis = useResource('kubevirt.io/v1', 'virtualmachineinstances', ns);
  const claimBy = useMemo(() => new Map(claims.items.map((c) => [nsName(c), c])), [claims.items]);
  // status.attachedVmi is the instance's uid (or name): the VM's name is what people know.
  const userOf = useCallback(
    (v: K8sObject): string | undefined => {
      const a = v.status?.attachedVmi;
      if (!a || v.status?.state !== 'Attached') return undefined;
      return vmis.items.find((i) => i.metadata.uid === a || i.metadata.name === a)?.metadata.name ?? a;
    },
    [vmis.items],
  );
  const snapCount = useMemo(() => {
    const m = new Map<string, number>();
    for (const s of snapshots.items) {
      const k = `${s.metadata.namespace ?? ''}/${s.spec?.volumeName}`;
      m.set(k, (m.get(k) ?? 0) + 1);
    }
    return m;
  }, [snapshots.items]);

  const columns = useMemo<TableColumn<K8sObject>[]>(
    () => [
      { title: 'Name', class: 'words', text: (o) => o.metadata.name, cell: (o) => <a href={objectHref(kind, o)}>{o.metadata.name}</a> },
      { title: 'Namespace', text: (o) => o.metadata.namespace ?? '', cell: (o) => o.metadata.namespace },
      {
        title: 'Size',
        text: sizeText,
        sort: (o) => parseQuantity(o.spec?.size),
        cell: (o) => <span data-testid="volume-size">{sizeText(o)}</span>,
      },
      {
        title: 'State',
        text: (o) => `${volumeState(o)} ${o.status?.robustness ?? ''}`,
        cell: (o) => (
          <>
            {volumeState(o) && <span class={`badge s-${volumeState(o).toLowerCase()}`}>{volumeState(o)}</span>}
            {o.status?.robustness && o.status.robustness !== 'Healthy' && (
              <span class={`badge s-${o.status.robustness.toLowerCase()}`}>{o.status.robustness}</span>
            )}
          </>
        ),
      },
      {
        title: 'Used by',
        class: 'words',
        text: (o) => userOf(o) ?? '',
        cell: (o) => {
          const u = userOf(o);
          return u ? <a href={href('vms', o.metadata.namespace, u)}>{u}</a> : '';
        },
      },
      {
        title: 'Snapshots',
        text: (o) => String(snapCount.get(nsName(o)) ?? 0),
        sort: (o) => snapCount.get(nsName(o)) ?? 0,
        cell: (o) => snapCount.get(nsName(o)) ?? 0,
      },
      ageCol(),
    ],
    [kind, snapCount, userOf],
  );
  const actions = useCallback((o: K8sObject) => {
    const name = o.metadata.name;
    if (trashed(o))
      return (
        <button type="button" class="small danger" aria-label={`Purge ${name}`} onClick={() => setPurge(o)}>
          Purge
        </button>
      );
    return (
      <>
        <button type="button" class="small" aria-label={`Snapshot ${name}`} onClick={() => setSnap(o)}>
          Snapshot
        </button>
        <button type="button" class="small" aria-label={`Expand ${name}`} onClick={() => setExpand(o)}>
          Expand
        </button>
        <button type="button" class="small" aria-label={`Clone ${name}`} onClick={() => setClone(o)}>
          Clone
        </button>
      </>
    );
  }, []);
  const deleteNote = useCallback(
    (o: K8sObject) => {
      const n = snapCount.get(nsName(o)) ?? 0;
      const c = claimFor(claimBy, o);
      return (
        <>
          {n > 0
            ? `It has ${n} snapshot(s): it goes to the trash with them (its data kept until the server's retention ends; clone a snapshot out meanwhile, or purge it). `
            : 'Its data is deleted. '}
          {c ? `Its claim ${c.metadata.name} is then Lost: delete the claim instead to delete both. ` : ''}
          The server refuses while a VM uses it. Backups are never deleted with it.
        </>
      );
    },
    [snapCount, claimBy],
  );
  return (
    <KindTable kind={kind} heading="h2" columns={columns} actions={actions} deleteNote={deleteNote}>
      <SnapshotDialog vol={snap} onClose={() => setSnap(null)} />
      <ExpandDialog vol={expand} claim={expand ? claimFor(claimBy, expand) : undefined} onClose={() => setExpand(null)} />
      <CloneDialog
        vol={clone}
        claim={clone ? claimFor(claimBy, clone) : undefined}
        snapshots={snapshots.items}
        onClose={() => setClone(null)}
      />
      <PurgeDialog vol={purge} onClose={() => setPurge(null)} />
    </KindTable>
  );
}

// ---------------------------------------------------------------------------
// Snapshots

function RevertDialog({ snap, onClose }: { snap: K8sObject | null; onClose: () => void }) {
  const vol = snap?.spec?.volumeName ?? '';
  return (
    <FormDialog
      title={`Revert volume ${vol} to snapshot ${snap?.metadata.name ?? ''}?`}
      open={!!snap}
      onClose={onClose}
      submitLabel="Revert"
      danger
      testid="revert-dialog"
      progress="Waiting for the node agent to revert the volume…"
      onSubmit={async () => {
        await revertVolume(snap!.metadata.namespace!, vol, snap!.metadata.name);
        notify(`Volume ${vol} reverted to snapshot ${snap!.metadata.name}`);
      }}
    >
      <p>
        Everything written to {vol} since the snapshot is lost. The volume must not be in use: stop the VM that uses it first (the node
        agent waits for it to be detached).
      </p>
    </FormDialog>
  );
}

function RestoreSnapshotDialog({
  snap,
  volumes,
  onClose,
}: {
  snap: K8sObject | null;
  volumes: Map<string, K8sObject>;
  onClose: () => void;
}) {
  const [name, setName] = useState('');
  const [size, setSize] = useState('');
  const s = snap;
  const source = s ? volumes.get(`${s.metadata.namespace ?? ''}/${s.spec?.volumeName}`) : undefined;
  const defaultSize = s?.status?.size ? exactQuantity(s.status.size) : (source?.spec?.size ?? '');
  return (
    <FormDialog
      title={`New volume from snapshot ${s?.metadata.name ?? ''}`}
      open={!!s}
      onClose={() => {
        setName('');
        setSize('');
        onClose();
      }}
      submitLabel="Create volume"
      testid="restore-snapshot-dialog"
      progress="Filling the new volume from the snapshot…"
      onSubmit={async () => {
        const to = { name: name || `${s!.spec?.volumeName}-restored`, size: size || defaultSize, replicas: source?.spec?.numberOfReplicas };
        if (!SIZE_RE.test(to.size)) throw new Error('Give a size such as 20Gi.');
        await volumeFromSnapshot(s!.metadata.namespace!, s!.metadata.name, to, source);
        notify(`Volume ${to.name} made from snapshot ${s!.metadata.name}`);
        setName('');
        setSize('');
      }}
    >
      <p>A new volume with the data of volume {s?.spec?.volumeName} at the snapshot; the volume itself does not change.</p>
      <Field id="restore-snap-name" label="New volume name">
        <input
          id="restore-snap-name"
          value={name}
          placeholder={s ? `${s.spec?.volumeName}-restored` : ''}
          onInput={(e) => setName(e.currentTarget.value.trim())}
        />
      </Field>
      <Field id="restore-snap-size" label="Size (at least the snapshot's)">
        <input id="restore-snap-size" value={size} placeholder={defaultSize} onInput={(e) => setSize(e.currentTarget.value.trim())} />
      </Field>
    </FormDialog>
  );
}

function SnapshotsSection() {
  const kind = kindById('volumesnapshots')!;
  const [ns] = useNamespace();
  const vols = useResource(GV, 'volumes', ns);
  const [revert, setRevert] = useState<K8sObject | null>(null);
  const [restore, setRestore] = useState<K8sObject | null>(null);
  const volBy = useMemo(() => new Map(vols.items.map((v) => [nsName(v), v])), [vols.items]);
  const ready = (o: K8sObject) => (o.status?.readyToUse ? 'Ready' : o.status?.error ? 'Failed' : 'Taking');
  const columns = useMemo<TableColumn<K8sObject>[]>(
    () => [
      { title: 'Name', class: 'words', text: (o) => o.metadata.name, cell: (o) => <a href={objectHref(kind, o)}>{o.metadata.name}</a> },
      { title: 'Namespace', text: (o) => o.metadata.namespace ?? '', cell: (o) => o.metadata.namespace },
      { title: 'Volume', text: (o) => o.spec?.volumeName ?? '', cell: (o) => o.spec?.volumeName },
      { title: 'State', text: ready, cell: (o) => <span class={`badge s-${ready(o).toLowerCase()}`}>{ready(o)}</span> },
      {
        title: 'Size',
        text: (o) => formatBytes(o.status?.size),
        sort: (o) => o.status?.size ?? 0,
        cell: (o) => formatBytes(o.status?.size),
      },
      { title: 'Error', text: (o) => o.status?.error ?? '', cell: (o) => <span class="wrap">{o.status?.error ?? ''}</span> },
      ageCol(),
    ],
    [kind],
  );
  const actions = useCallback(
    (o: K8sObject) => {
      const ok = !!o.status?.readyToUse;
      const gone = (() => {
        const v = volBy.get(`${o.metadata.namespace ?? ''}/${o.spec?.volumeName}`);
        return !v || trashed(v);
      })();
      return (
        <>
          <button
            type="button"
            class="small"
            aria-label={`Revert ${o.spec?.volumeName} to ${o.metadata.name}`}
            disabled={!ok || gone}
            title={gone ? 'Its volume was deleted: restore the snapshot to a new volume instead' : undefined}
            onClick={() => setRevert(o)}
          >
            Revert
          </button>
          <button
            type="button"
            class="small"
            aria-label={`Restore ${o.metadata.name} to a new volume`}
            disabled={!ok}
            onClick={() => setRestore(o)}
          >
            New volume
          </button>
        </>
      );
    },
    [volBy],
  );
  return (
    <KindTable
      kind={kind}
      heading="h2"
      columns={columns}
      actions={actions}
      deleteNote={() => 'Its data merges into the next layer of the volume; the volume keeps its current data.'}
    >
      <RevertDialog snap={revert} onClose={() => setRevert(null)} />
      <RestoreSnapshotDialog snap={restore} volumes={volBy} onClose={() => setRestore(null)} />
    </KindTable>
  );
}

export function Storage() {
  return (
    <section>
      <h1>Volumes</h1>
      <VolumesSection />
      <SnapshotsSection />
      {['persistentvolumeclaims', 'storageclasses', 'disks'].map((id) => (
        <KindTable key={id} kind={kindById(id)!} heading="h2" />
      ))}
    </section>
  );
}
