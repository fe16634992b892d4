// Volume, snapshot and backup actions, written to the API as the CLI
// writes them (`sheaf volume ...`, `sheaf backup restore`): the same
// objects and fields, and the same waits for the node agents.

import { ApiError, getJSON, resourcePath, sendJSON } from './api';
import type { K8sObject } from './store';
import { formatBytes, parseQuantity } from './format';

const GV = 'sheaf.io/v1alpha1';
const HARVESTER = 'harvesterhci.io/v1beta1';
/** The label that ties a VolumeSnapshot to its Volume. */
export const VOLUME_LABEL = 'sheaf.io/volume';
const REVERT_ANNOTATION = 'sheaf.io/revert-to';
const PURGE_ANNOTATION = 'sheaf.io/purge';
const TRASH_FINALIZER = 'sheaf.io/trash';
const BLOCK = 4096;
const MERGE = 'application/merge-patch+json';

export const SIZE_RE = /^\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$/;

/** `NAME-YYYYMMDD-HHMMSS` (UTC), as the CLI names backups. */
export function stampedName(base: string): string {
  const d = new Date().toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
  const cut = base.slice(0, 63 - d.length - 1).replace(/-+$/, '');
  return `${cut}-${d}`;
}

/** Whether the volume was deleted and waits in the trash with its snapshots. */
export function trashed(v: K8sObject): boolean {
  return !!v.metadata.deletionTimestamp && ((v.metadata.finalizers as string[] | undefined) ?? []).includes(TRASH_FINALIZER);
}

/** Bytes rounded up to whole 4 KiB blocks, as an exact quantity (`10Gi`, `4Ki`, bytes). */
export function exactQuantity(bytes: number): string {
  const b = Math.ceil(bytes / BLOCK) * BLOCK;
  for (const [unit, shift] of [
    ['Ti', 40],
    ['Gi', 30],
    ['Mi', 20],
    ['Ki', 10],
  ] as const) {
    const m = 2 ** shift;
    if (b !== 0 && b % m === 0) return `${b / m}${unit}`;
  }
  return String(b);
}

/** Polls `path` until `done` says the object is there (or throws why not). */
export async function waitFor(
  path: string,
  done: (o: K8sObject) => boolean | string,
  what: string,
  timeoutMs = 60_000,
): Promise<K8sObject> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    let o: K8sObject | null = null;
    try {
      o = await getJSON<K8sObject>(path);
    } catch (e) {
      if (!(e instanceof ApiError && e.code === 404)) throw e;
    }
    if (o) {
      const r = done(o);
      if (r === true) return o;
      if (typeof r === 'string') throw new Error(r);
    }
    if (Date.now() > end) throw new Error(`${what} did not finish within ${Math.round(timeoutMs / 1000)} s; its list shows how it goes on`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

const snapshotPath = (ns: string, name?: string) => resourcePath(GV, 'volumesnapshots', ns, name);
const volumePath = (ns: string, name?: string) => resourcePath(GV, 'volumes', ns, name);
const claimPath = (ns: string, name?: string) => resourcePath('v1', 'persistentvolumeclaims', ns, name);

/** Takes a crash-consistent snapshot of `volume` and waits until it is ready to use. */
export async function takeSnapshot(ns: string, volume: string, name: string): Promise<K8sObject> {
  await sendJSON('POST', snapshotPath(ns), {
    apiVersion: GV,
    kind: 'VolumeSnapshot',
    metadata: { name, namespace: ns, labels: { [VOLUME_LABEL]: volume } },
    spec: { volumeName: volume },
  });
  return waitFor(
    snapshotPath(ns, name),
    (s) => (s.status?.readyToUse === true ? true : s.status?.error ? `snapshot ${name}: ${s.status.error}` : false),
    `Snapshot ${name}`,
  );
}

/**
 * Grows a volume to `size`: through its claim when it has one (the claim
 * controller grows the volume, if the class allows expansion), else the
 * Volume's `spec.size`. Waits until the replicas have the new size.
 */
export async function expandVolume(vol: K8sObject, size: string, claim?: K8sObject): Promise<void> {
  const ns = vol.metadata.namespace!;
  const name = vol.metadata.name;
  if (claim) {
    await sendJSON('PATCH', claimPath(ns, claim.metadata.name), { spec: { resources: { requests: { storage: size } } } }, MERGE);
  } else {
    await sendJSON('PATCH', volumePath(ns, name), { spec: { size } }, MERGE);
  }
  const want = Math.ceil(parseQuantity(size) / BLOCK) * BLOCK;
  await waitFor(volumePath(ns, name), (v) => (v.status?.size ?? 0) >= want, `Expanding ${name} to ${size}`);
}

/** Why a claim does not grow, if its Resizing condition says so. */
export function resizeRefusal(claim: K8sObject | undefined): string | undefined {
  const c = (claim?.status?.conditions ?? []).find((x: any) => x.type === 'Resizing');
  return c && c.status === 'False' && c.message ? c.message : undefined;
}

export interface NewVolume {
  name: string;
  size: string;
  replicas?: number;
}

/** A Volume made from a snapshot (`sheaf volume clone`), waited for until it holds the data. */
export async function volumeFromSnapshot(ns: string, snapshot: string, to: NewVolume, source?: K8sObject): Promise<void> {
  const spec: any = { size: to.size, fromSnapshot: snapshot };
  if (to.replicas) spec.numberOfReplicas = to.replicas;
  // A volume made from an image keeps it as its base layer.
  if (source?.spec?.image) spec.image = source.spec.image;
  if (source?.spec?.diskSelector?.length) spec.diskSelector = source.spec.diskSelector;
  await sendJSON('POST', volumePath(ns), { apiVersion: GV, kind: 'Volume', metadata: { name: to.name, namespace: ns }, spec });
  await waitFor(
    volumePath(ns, to.name),
    (v) => (v.status?.restoredFrom ? true : (unplaceable(v) ?? false)),
    `Volume ${to.name} from snapshot ${snapshot}`,
  );
}

/** Why the Volume controller cannot place the replicas (no disk with its tags, no space). */
export function unplaceable(v: K8sObject): string | undefined {
  const c = (v.status?.conditions ?? []).find((x: any) => x.type === 'ReplicasScheduled');
  if (c && c.status === 'False' && (c.reason === 'NoDisk' || c.reason === 'NoSpace'))
    return `volume ${v.metadata.name} was created, but its replicas cannot be placed: ${c.message}`;
  return undefined;
}

/**
 * A new claim with the data of `claim` (dataSource kind
 * PersistentVolumeClaim): the claim controller snapshots the source and
 * fills the new volume from it. Waits until the new claim is Bound.
 */
export async function cloneClaim(claim: K8sObject, to: NewVolume): Promise<void> {
  const ns = claim.metadata.namespace!;
  const spec: any = {
    accessModes: claim.spec?.accessModes?.length ? claim.spec.accessModes : ['ReadWriteOnce'],
    volumeMode: claim.spec?.volumeMode ?? 'Block',
    resources: { requests: { storage: to.size } },
    dataSource: { kind: 'PersistentVolumeClaim', name: claim.metadata.name },
  };
  if (claim.spec?.storageClassName) spec.storageClassName = claim.spec.storageClassName;
  await sendJSON('POST', claimPath(ns), {
    apiVersion: 'v1',
    kind: 'PersistentVolumeClaim',
    metadata: { name: to.name, namespace: ns },
    spec,
  });
  await waitClaimBound(ns, to.name);
}

/** Why a claim stays Pending until someone changes something (the claim controller's reasons). */
const STUCK_CLAIM_REASONS = ['VolumeExists', 'ProvisioningFailed', 'SourceFailed', 'SourceNotFound', 'RequestTooSmall'];

/** Waits until claim `name` is Bound; its Bound condition says why not. */
export async function waitClaimBound(ns: string, name: string, timeoutMs = 90_000): Promise<K8sObject> {
  let last = '';
  try {
    return await waitFor(
      claimPath(ns, name),
      (c) => {
        if (c.status?.phase === 'Bound') return true;
        const cond = (c.status?.conditions ?? []).find((x: any) => x.type === 'Bound');
        last = cond?.message ?? '';
        // Waiting will not help these.
        if (STUCK_CLAIM_REASONS.includes(cond?.reason)) return `claim ${name} stays Pending: ${last}`;
        return false;
      },
      `Claim ${name}`,
      timeoutMs,
    );
  } catch (e) {
    throw new Error(last ? `claim ${name} is not Bound yet: ${last}` : (e as Error).message);
  }
}

/** A new blank claim (Block, ReadWriteOnce, the default class), waited for until Bound. */
export async function blankClaim(ns: string, name: string, size: string): Promise<void> {
  await sendJSON('POST', claimPath(ns), {
    apiVersion: 'v1',
    kind: 'PersistentVolumeClaim',
    metadata: { name, namespace: ns },
    spec: { accessModes: ['ReadWriteOnce'], volumeMode: 'Block', resources: { requests: { storage: size } } },
  });
  await waitClaimBound(ns, name);
}

/**
 * Goes back to a snapshot (`sheaf volume revert`): the node agent does it
 * while the volume is detached and reports in `status.lastRevert`.
 */
export async function revertVolume(ns: string, volume: string, snapshot: string): Promise<void> {
  const before = await getJSON<K8sObject>(volumePath(ns, volume));
  const oldTime = before.status?.lastRevert?.time ?? '';
  await sendJSON('PATCH', volumePath(ns, volume), { metadata: { annotations: { [REVERT_ANNOTATION]: snapshot } } }, MERGE);
  await waitFor(
    volumePath(ns, volume),
    (v) => {
      const r = v.status?.lastRevert;
      if (!r?.time || r.time === oldTime || r.snapshot !== snapshot) return false;
      return r.error ? `cannot revert volume ${volume} to ${snapshot}: ${r.error}` : true;
    },
    `Reverting ${volume} to ${snapshot}`,
  );
}

/** Deletes a trashed volume and its snapshots now (`sheaf volume purge`). */
export async function purgeVolume(ns: string, volume: string): Promise<void> {
  await sendJSON('PATCH', volumePath(ns, volume), { metadata: { annotations: { [PURGE_ANNOTATION]: 'true' } } }, MERGE);
}

/** The size a restore of backup `b` needs at least: its size, rounded up to 4 KiB. */
export function backupMinSize(b: K8sObject): number {
  return Math.ceil((b.status?.size ?? 0) / BLOCK) * BLOCK;
}

/** A new volume filled from a completed backup (`sheaf backup restore B --to NEW`). */
export async function restoreBackup(b: K8sObject, to: NewVolume): Promise<void> {
  const ns = b.metadata.namespace!;
  const min = backupMinSize(b);
  if (parseQuantity(to.size) < (b.status?.size ?? 0))
    throw new Error(
      `${to.size} is smaller than backup ${b.metadata.name} (${formatBytes(b.status?.size)}): give at least ${exactQuantity(min)}`,
    );
  const spec: any = { size: to.size, fromBackup: b.metadata.name };
  if (to.replicas) spec.numberOfReplicas = to.replicas;
  await sendJSON('POST', volumePath(ns), { apiVersion: GV, kind: 'Volume', metadata: { name: to.name, namespace: ns }, spec });
}

export interface VmRestore {
  /** A new VM of this name, or (when `newVm` is false) the VM the backup was taken of. */
  target: string;
  newVm: boolean;
  keepMacAddress?: boolean;
  /** Replace: keep the volumes the restore takes the place of. */
  retainVolumes?: boolean;
}

/** A VirtualMachineRestore of VM backup `b` (Harvester's object). Returns its name. */
export async function restoreVmBackup(b: K8sObject, r: VmRestore): Promise<string> {
  const ns = b.metadata.namespace!;
  const name = stampedName(`${r.target}-restore`);
  const spec: any = {
    target: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: r.target },
    virtualMachineBackupName: b.metadata.name,
    virtualMachineBackupNamespace: ns,
    newVM: r.newVm,
  };
  if (r.newVm && r.keepMacAddress) spec.keepMacAddress = true;
  if (!r.newVm) spec.deletionPolicy = r.retainVolumes ? 'retain' : 'delete';
  await sendJSON('POST', resourcePath(HARVESTER, 'virtualmachinerestores', ns), {
    apiVersion: HARVESTER,
    kind: 'VirtualMachineRestore',
    metadata: { name, namespace: ns },
    spec,
  });
  return name;
}
