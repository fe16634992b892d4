// VirtualMachine actions (KubeVirt's subresources) and status helpers.

import { request, resourcePath, sendJSON } from './api';
import type { K8sObject } from './store';

export type VmAction = 'start' | 'stop' | 'restart' | 'pause' | 'unpause' | 'migrate';

const SUB = 'subresources.kubevirt.io/v1';

export async function vmAction(ns: string, name: string, action: VmAction): Promise<void> {
  const onInstance = action === 'pause' || action === 'unpause';
  const path = `${resourcePath(SUB, onInstance ? 'virtualmachineinstances' : 'virtualmachines', ns, name)}/${action}`;
  await request(path, { method: 'PUT', body: action === 'migrate' ? {} : '{}' });
}

/** The actions that make sense for a VM in this status. */
export function actionsFor(status: string | undefined): VmAction[] {
  switch (status) {
    case 'Running':
      return ['stop', 'restart', 'pause', 'migrate'];
    case 'Paused':
      return ['unpause', 'stop'];
    case 'Migrating':
      return ['stop'];
    case 'Stopped':
    case 'Halted':
    case undefined:
    case '':
      return ['start'];
    case 'Starting':
    case 'Provisioning':
    case 'WaitingForVolumeBinding':
    case 'Stopping':
      return ['stop'];
    default:
      // Errors (CrashLoopBackOff, ErrImagePull, FailedStart, ...): both.
      return ['start', 'stop', 'restart'];
  }
}

export const ACTION_LABELS: Record<VmAction, string> = {
  start: 'Start',
  stop: 'Stop',
  restart: 'Restart',
  pause: 'Pause',
  unpause: 'Unpause',
  migrate: 'Migrate',
};

/** Claims the VM names that are not its own dataVolumeTemplates (those go with it). */
export function separateClaims(vm: K8sObject): string[] {
  const own = new Set<string>((vm.spec?.dataVolumeTemplates ?? []).map((d: any) => d.metadata?.name));
  const out: string[] = [];
  for (const v of vm.spec?.template?.spec?.volumes ?? []) {
    const n = v.persistentVolumeClaim?.claimName ?? v.dataVolume?.name;
    if (n && !own.has(n)) out.push(n);
  }
  return out;
}

export async function deleteVm(vm: K8sObject, removeDisks: string[]): Promise<void> {
  const ns = vm.metadata.namespace!;
  let path = resourcePath('kubevirt.io/v1', 'virtualmachines', ns, vm.metadata.name);
  if (removeDisks.length) path += `?removedDisks=${encodeURIComponent(removeDisks.join(','))}`;
  await sendJSON('DELETE', path);
}

export function vmiKey(ns: string | undefined, name: string): string {
  return `${ns ?? ''}/${name}`;
}

/**
 * Plugs claim `claim` into the VM as a disk of the same name (KubeVirt's
 * `addvolume`). `persist`: into the VM's template too, so it stays after a
 * restart (the VM's subresource); else only the running instance's.
 */
export async function addVolume(ns: string, vm: string, claim: string, bus: 'scsi' | 'virtio', persist: boolean): Promise<void> {
  const path = `${resourcePath(SUB, persist ? 'virtualmachines' : 'virtualmachineinstances', ns, vm)}/addvolume`;
  await request(path, {
    method: 'PUT',
    body: { name: claim, disk: { disk: { bus } }, volumeSource: { persistentVolumeClaim: { claimName: claim } } },
  });
}

/** Unplugs hotplugged volume `name` (KubeVirt's `removevolume`), from the template too when `persist`. */
export async function removeVolume(ns: string, vm: string, name: string, persist: boolean): Promise<void> {
  const path = `${resourcePath(SUB, persist ? 'virtualmachines' : 'virtualmachineinstances', ns, vm)}/removevolume`;
  await request(path, { method: 'PUT', body: { name } });
}

/** The claim a VM volume uses, if any. */
export function claimOf(v: any): string | undefined {
  return v?.persistentVolumeClaim?.claimName ?? v?.dataVolume?.name;
}

/** Whether a VM volume was hotplugged (and so can be unplugged). */
export function hotplugged(v: any): boolean {
  return !!(v?.persistentVolumeClaim?.hotpluggable || v?.dataVolume?.hotpluggable);
}
