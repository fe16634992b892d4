// The create-VM form, after Harvester's: basics, volumes, networks,
// cloud-init. Without a template it POSTs a KubeVirt VirtualMachine whose
// disks are dataVolumeTemplates (claims from an image, or blank); with a
// template it asks the template version's `createvm` subresource.

import { useMemo, useState } from 'preact/hooks';
import { stringify } from 'yaml';
import { ApiError, resourcePath, sendJSON } from '../api';
import { useResource, type K8sObject } from '../store';
import { navigate, useNamespace, href } from '../router';
import { ErrorBox, FieldError } from '../components/ErrorBox';
import { notify } from '../components/Toasts';
import { formatBytes } from '../format';
import { imageState } from './Images';

interface VolumeRow {
  id: number;
  name: string;
  source: 'image' | 'blank';
  image: string;
  size: string;
  bus: 'virtio' | 'sata' | 'scsi';
}

interface NicRow {
  id: number;
  /** '' = the management network; else NAMESPACE/NAME of a NetworkAttachmentDefinition. */
  network: string;
}

let nextRow = 1;
const NAME_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DEFAULT_USER_DATA = '#cloud-config\n';

function suffix(): string {
  const chars = 'abcdefghijklmnopqrstuvwxyz0123456789';
  let s = '';
  for (let i = 0; i < 5; i++) s += chars[Math.floor(Math.random() * chars.length)];
  return s;
}

export interface VmForm {
  namespace: string;
  name: string;
  cpu: number;
  memory: string;
  keyPairs: string[];
  volumes: VolumeRow[];
  nics: NicRow[];
  hostname: string;
  userData: string;
  networkData: string;
  start: boolean;
  /** Labels the node must have (`kubernetes.io/hostname` picks one node). */
  nodeSelector: Record<string, string>;
}

/** `key=value, key2=value2` → a label map; throws on a malformed pair. */
export function parseLabels(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of text
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean)) {
    const m = /^([A-Za-z0-9][-A-Za-z0-9_./]*)=([-A-Za-z0-9_.]*)$/.exec(part);
    if (!m) throw new Error(`"${part}" is not key=value`);
    out[m[1]] = m[2];
  }
  return out;
}

/** The VirtualMachine manifest for one VM of the form. */
export function buildVm(f: VmForm, name: string, hostname: string, images: K8sObject[]): K8sObject {
  const disks: any[] = [];
  const volumes: any[] = [];
  const dataVolumeTemplates: any[] = [];
  f.volumes.forEach((v, i) => {
    const claim = `${name}-${v.name}-${suffix()}`;
    const image = images.find((im) => `${im.metadata.namespace}/${im.metadata.name}` === v.image);
    const iso = v.source === 'image' && image?.status?.format === 'iso';
    const disk: any = { name: v.name };
    if (iso) disk.cdrom = { bus: v.bus === 'virtio' ? 'sata' : v.bus };
    else disk.disk = { bus: v.bus };
    if (i === 0) disk.bootOrder = 1;
    disks.push(disk);
    const dvt: any = {
      metadata: { name: claim },
      spec: {
        storage: {
          accessModes: ['ReadWriteOnce'],
          volumeMode: 'Block',
          resources: { requests: { storage: v.size } },
        },
      },
    };
    if (v.source === 'image') dvt.metadata.annotations = { 'harvesterhci.io/imageId': v.image };
    else dvt.spec.source = { blank: {} };
    dataVolumeTemplates.push(dvt);
    volumes.push({ name: v.name, dataVolume: { name: claim } });
  });
  const cloudInit: any = {};
  if (f.userData.trim()) cloudInit.userData = f.userData;
  if (f.networkData.trim()) cloudInit.networkData = f.networkData;
  if (Object.keys(cloudInit).length || f.keyPairs.length) {
    if (!cloudInit.userData) cloudInit.userData = DEFAULT_USER_DATA;
    disks.push({ name: 'cloudinitdisk', disk: { bus: 'virtio' } });
    volumes.push({ name: 'cloudinitdisk', cloudInitNoCloud: cloudInit });
  }
  const interfaces: any[] = [];
  const networks: any[] = [];
  f.nics.forEach((n, i) => {
    if (!n.network) {
      interfaces.push({ name: 'default', masquerade: {} });
      networks.push({ name: 'default', pod: {} });
    } else {
      const nm = `nic-${i + 1}`;
      interfaces.push({ name: nm, bridge: {} });
      networks.push({ name: nm, multus: { networkName: n.network } });
    }
  });
  const annotations: Record<string, string> = {};
  if (f.keyPairs.length) annotations['harvesterhci.io/sshNames'] = JSON.stringify(f.keyPairs);
  const spec: any = {
    domain: {
      cpu: { cores: f.cpu },
      memory: { guest: f.memory },
      devices: { disks, interfaces },
    },
    networks,
    volumes,
  };
  if (hostname) spec.hostname = hostname;
  if (Object.keys(f.nodeSelector).length) spec.nodeSelector = f.nodeSelector;
  const vm: K8sObject = {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: { name, namespace: f.namespace },
    spec: {
      runStrategy: f.start ? 'RerunOnFailure' : 'Halted',
      dataVolumeTemplates,
      template: { metadata: { labels: { 'harvesterhci.io/vmName': name } }, spec },
    },
  };
  if (Object.keys(annotations).length) vm.metadata.annotations = annotations;
  if (!dataVolumeTemplates.length) delete vm.spec.dataVolumeTemplates;
  return vm;
}

/** The form field a server cause belongs to. */
function fieldOf(field: string, f: VmForm, withTemplate: boolean): string {
  if (withTemplate) {
    if (field === 'name') return 'name';
    if (field.startsWith('cpu')) return 'cpu';
    if (field.startsWith('memory')) return 'memory';
    if (field.startsWith('image')) return 'volume-0';
    if (field.startsWith('keyPairs')) return 'keyPairs';
    if (field.startsWith('userData')) return 'userData';
  }
  if (field.startsWith('metadata.name')) return 'name';
  if (field.startsWith('metadata.annotations')) return 'keyPairs';
  let m = /^spec\.dataVolumeTemplates\[(\d+)\]/.exec(field);
  if (m) return `volume-${m[1]}`;
  m = /^spec\.template\.spec\.(?:volumes|domain\.devices\.disks)\[(\d+)\](.*)$/.exec(field);
  if (m) {
    const i = Number(m[1]);
    if (i < f.volumes.length) return `volume-${i}`;
    return /networkData/.test(m[2]) ? 'networkData' : 'userData';
  }
  m = /^spec\.template\.spec\.(?:networks|domain\.devices\.interfaces)\[(\d+)\]/.exec(field);
  if (m) return `nic-${m[1]}`;
  if (field.startsWith('spec.template.spec.domain.cpu')) return 'cpu';
  if (field.startsWith('spec.template.spec.domain.memory') || field.includes('resources')) return 'memory';
  if (field.startsWith('spec.template.spec.hostname')) return 'hostname';
  if (field.startsWith('spec.template.spec.nodeSelector') || field.startsWith('spec.template.spec.affinity')) return 'node';
  return '';
}

export function VmCreate() {
  const [ns] = useNamespace();
  const [namespace, setNamespace] = useState(ns || 'default');
  const [multiple, setMultiple] = useState(false);
  const [count, setCount] = useState(2);
  const [name, setName] = useState('');
  const [template, setTemplate] = useState('');
  const [cpu, setCpu] = useState(1);
  const [memory, setMemory] = useState('1Gi');
  const [keyPairs, setKeyPairs] = useState<string[]>([]);
  const [newKey, setNewKey] = useState('');
  const [volumes, setVolumes] = useState<VolumeRow[]>([
    { id: nextRow++, name: 'rootdisk', source: 'image', image: '', size: '10Gi', bus: 'virtio' },
  ]);
  const [nics, setNics] = useState<NicRow[]>([{ id: nextRow++, network: '' }]);
  const [hostname, setHostname] = useState('');
  const [userData, setUserData] = useState(DEFAULT_USER_DATA);
  const [networkData, setNetworkData] = useState('');
  const [start, setStart] = useState(true);
  const [node, setNode] = useState('');
  const [nodeLabels, setNodeLabels] = useState('');
  const [error, setError] = useState<unknown>(null);
  const [local, setLocal] = useState<Record<string, string>>({});
  const [busy, setBusy] = useState(false);
  const [progress, setProgress] = useState('');

  const images = useResource('harvesterhci.io/v1beta1', 'virtualmachineimages');
  const versionsPublic = useResource('harvesterhci.io/v1beta1', 'virtualmachinetemplateversions', 'harvester-public');
  const versionsNs = useResource(
    'harvesterhci.io/v1beta1',
    'virtualmachinetemplateversions',
    namespace !== 'harvester-public' ? namespace : undefined,
  );
  const keys = useResource('harvesterhci.io/v1beta1', 'keypairs', namespace);
  const nads = useResource('k8s.cni.cncf.io/v1', 'network-attachment-definitions');
  const namespaces = useResource('v1', 'namespaces');
  const nodes = useResource('v1', 'nodes');

  const versions = useMemo(() => {
    const all = [...versionsPublic.items, ...(namespace !== 'harvester-public' ? versionsNs.items : [])];
    const seen = new Set<string>();
    return all.filter((v) => {
      const k = `${v.metadata.namespace}/${v.metadata.name}`;
      if (seen.has(k)) return false;
      seen.add(k);
      return true;
    });
  }, [versionsPublic.items, versionsNs.items, namespace]);
  const readyImages = images.items.filter((i) => imageState(i) === 'Ready');
  const version = versions.find((v) => `${v.metadata.namespace}/${v.metadata.name}` === template);

  let nodeSelector: Record<string, string> = {};
  let labelError = '';
  try {
    nodeSelector = parseLabels(nodeLabels);
  } catch (e) {
    labelError = (e as Error).message;
  }
  if (node) nodeSelector = { ...nodeSelector, 'kubernetes.io/hostname': node };
  const form: VmForm = { namespace, name, cpu, memory, keyPairs, volumes, nics, hostname, userData, networkData, start, nodeSelector };
  const names = multiple ? Array.from({ length: Math.max(1, count) }, (_, i) => `${name}-${i + 1}`) : [name];

  // Server causes by form field.
  const serverErrors = useMemo(() => {
    const m: Record<string, string[]> = {};
    if (error instanceof ApiError) {
      for (const c of error.causes) {
        const k = c.field ? fieldOf(c.field, form, !!version) : '';
        (m[k] ??= []).push(!k && c.field ? `${c.field}: ${c.message ?? ''}` : (c.message ?? ''));
      }
    }
    return m;
  }, [error]);
  const errs = (k: string) => [...(local[k] ? [local[k]] : []), ...(serverErrors[k] ?? [])];
  const unmapped = error instanceof ApiError ? (serverErrors[''] ?? []) : [];
  const aria = (k: string) => ({ 'aria-invalid': errs(k).length > 0, 'aria-describedby': errs(k).length ? `err-${k}` : undefined });

  const chooseTemplate = (id: string) => {
    setTemplate(id);
    const v = versions.find((x) => `${x.metadata.namespace}/${x.metadata.name}` === id);
    if (!v) return;
    const s = v.spec?.vm?.spec?.template?.spec;
    const cores = s?.domain?.cpu?.cores;
    if (cores) setCpu(cores);
    const mem = s?.domain?.memory?.guest ?? s?.domain?.resources?.limits?.memory ?? s?.domain?.resources?.requests?.memory;
    if (mem) setMemory(mem);
    const ci = (s?.volumes ?? []).find((x: any) => x.cloudInitNoCloud || x.cloudInitConfigDrive);
    const ud = ci?.cloudInitNoCloud?.userData ?? ci?.cloudInitConfigDrive?.userData;
    if (ud) setUserData(ud);
  };

  const validate = (): Record<string, string> => {
    const e: Record<string, string> = {};
    if (!name) e.name = 'Give the VM a name.';
    else if (!NAME_RE.test(name) || name.length > 58)
      e.name = 'Lowercase letters, digits and "-", starting and ending with a letter or digit (at most 58 characters).';
    if (multiple && (!Number.isInteger(count) || count < 1 || count > 100)) e.count = 'Between 1 and 100.';
    if (!Number.isInteger(cpu) || cpu < 1) e.cpu = 'At least 1 core.';
    if (!/^\d+(\.\d+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$/.test(memory)) e.memory = 'A quantity such as 512Mi or 2Gi.';
    if (hostname && !NAME_RE.test(hostname)) e.hostname = 'A DNS label: lowercase letters, digits and "-".';
    if (version && hostname && !userData.startsWith('#cloud-config'))
      e.hostname = 'From a template the hostname is written into the user data, which must then start with #cloud-config.';
    if (labelError && !version) e.node = `Node labels: ${labelError} (for example disk=ssd, zone=a).`;
    if (!version) {
      volumes.forEach((v, i) => {
        if (!NAME_RE.test(v.name)) e[`volume-${i}`] = 'The disk needs a name of lowercase letters, digits and "-".';
        else if (volumes.findIndex((x) => x.name === v.name) !== i || v.name === 'cloudinitdisk')
          e[`volume-${i}`] = `The name ${v.name} is taken.`;
        else if (v.source === 'image' && !v.image) e[`volume-${i}`] = 'Choose an image (or make it a blank disk).';
        else if (!/^\d+(\.\d+)?(Ki|Mi|Gi|Ti)$/.test(v.size)) e[`volume-${i}`] = 'A size such as 10Gi.';
      });
    } else if (
      volumes[0]?.source === 'image' &&
      !volumes[0].image &&
      version.spec?.vm?.metadata?.annotations?.['harvesterhci.io/volumeClaimTemplates']?.includes('imageId')
    ) {
      e['volume-0'] = 'This template makes its root disk from an image: choose one.';
    }
    return e;
  };

  const submit = async (ev: Event) => {
    ev.preventDefault();
    setError(null);
    const e = validate();
    setLocal(e);
    if (Object.keys(e).length) {
      const first = document.querySelector<HTMLElement>('[aria-invalid="true"]');
      setTimeout(() => document.querySelector<HTMLElement>('[aria-invalid="true"]')?.focus() ?? first?.focus(), 0);
      return;
    }
    setBusy(true);
    const created: string[] = [];
    let withKeys = form;
    if (newKey.trim()) {
      const keyName = `${name}-key`;
      setProgress(`Saving key pair ${keyName}…`);
      try {
        await sendJSON('POST', resourcePath('harvesterhci.io/v1beta1', 'keypairs', namespace), {
          apiVersion: 'harvesterhci.io/v1beta1',
          kind: 'KeyPair',
          metadata: { name: keyName, namespace },
          spec: { publicKey: newKey.trim() },
        });
      } catch (err) {
        setLocal({ newKey: (err as Error).message });
        setBusy(false);
        setProgress('');
        setTimeout(() => document.getElementById('vm-new-key')?.focus(), 0);
        return;
      }
      setNewKey('');
      setKeyPairs([...keyPairs, keyName]);
      withKeys = { ...form, keyPairs: [...keyPairs, keyName] };
    }
    try {
      for (const [i, n] of names.entries()) {
        setProgress(`Creating ${n} (${i + 1} of ${names.length})…`);
        const host = hostname ? (multiple ? `${hostname}-${i + 1}` : hostname) : '';
        if (version) {
          let ud = userData;
          if (host && ud.startsWith('#cloud-config') && !/^hostname:/m.test(ud))
            ud = ud.replace(/^#cloud-config[^\n]*\n?/, (h) => `${h.endsWith('\n') ? h : h + '\n'}hostname: ${host}\n`);
          const body: any = { name: n, namespace, cpu, memory };
          if (volumes[0]?.source === 'image' && volumes[0].image) body.image = volumes[0].image;
          if (withKeys.keyPairs.length) body.keyPairs = withKeys.keyPairs;
          if (ud.trim() && ud !== DEFAULT_USER_DATA) body.userData = ud;
          await sendJSON(
            'POST',
            `${resourcePath('harvesterhci.io/v1beta1', 'virtualmachinetemplateversions', version.metadata.namespace, version.metadata.name)}/createvm`,
            body,
          );
        } else {
          await sendJSON('POST', resourcePath('kubevirt.io/v1', 'virtualmachines', namespace), buildVm(withKeys, n, host, images.items));
        }
        created.push(n);
      }
      notify(`Created ${created.join(', ')}`);
      navigate(names.length === 1 ? href('vms', namespace, names[0]).slice(1) : '/vms');
    } catch (err) {
      setError(err);
      if (created.length) notify(`Created ${created.join(', ')}; the next one failed`, true);
      setTimeout(() => document.querySelector<HTMLElement>('[aria-invalid="true"]')?.focus(), 0);
    } finally {
      setBusy(false);
      setProgress('');
    }
  };

  const setVol = (i: number, patch: Partial<VolumeRow>) => setVolumes(volumes.map((v, j) => (j === i ? { ...v, ...patch } : v)));
  const preview = useMemo(() => {
    if (version || !name) return '';
    try {
      return stringify(buildVm(form, names[0], hostname, images.items), { lineWidth: 0 });
    } catch {
      return '';
    }
  }, [JSON.stringify(form), multiple, count, template, images.items]);

  return (
    <section>
      <nav aria-label="Breadcrumb" class="crumbs">
        <a href="#/vms">Virtual machines</a> / create
      </nav>
      <h1>Create a virtual machine</h1>
      <form class="wizard" onSubmit={submit} noValidate data-testid="vm-wizard">
        <fieldset>
          <legend>Basics</legend>
          <div class="radio-row" role="radiogroup" aria-label="How many">
            <label class="check">
              <input type="radio" name="mode" checked={!multiple} onChange={() => setMultiple(false)} /> Single instance
            </label>
            <label class="check">
              <input type="radio" name="mode" checked={multiple} onChange={() => setMultiple(true)} /> Multiple instances
            </label>
          </div>
          <div class="grid">
            <div class="field">
              <label for="vm-namespace">Namespace</label>
              <select id="vm-namespace" value={namespace} onChange={(e) => setNamespace(e.currentTarget.value)}>
                {namespaces.items.map((n) => (
                  <option value={n.metadata.name}>{n.metadata.name}</option>
                ))}
                {!namespaces.items.some((n) => n.metadata.name === namespace) && <option value={namespace}>{namespace}</option>}
              </select>
            </div>
            <div class="field">
              <label for="vm-name">{multiple ? 'Name prefix' : 'Name'}</label>
              <input
                id="vm-name"
                name="name"
                value={name}
                onInput={(e) => setName(e.currentTarget.value.trim())}
                required
                {...aria('name')}
              />
              <FieldError id="err-name" messages={errs('name')} />
            </div>
            {multiple && (
              <div class="field">
                <label for="vm-count">Count</label>
                <input
                  id="vm-count"
                  type="number"
                  min={1}
                  max={100}
                  value={count}
                  onInput={(e) => setCount(Number(e.currentTarget.value))}
                  {...aria('count')}
                />
                <FieldError id="err-count" messages={errs('count')} />
              </div>
            )}
            <div class="field">
              <label for="vm-template-optional">Template (optional)</label>
              <select
                id="vm-template-optional"
                value={template}
                onChange={(e) => chooseTemplate(e.currentTarget.value)}
                data-testid="template"
              >
                <option value="">No template</option>
                {versions.map((v) => {
                  const id = `${v.metadata.namespace}/${v.metadata.name}`;
                  return (
                    <option value={id}>
                      {v.spec?.templateId ?? id} v{v.status?.version ?? '?'} ({v.metadata.name})
                    </option>
                  );
                })}
              </select>
            </div>
            <div class="field">
              <label for="vm-cpu-cores">CPU cores</label>
              <input
                id="vm-cpu-cores"
                type="number"
                min={1}
                value={cpu}
                onInput={(e) => setCpu(Number(e.currentTarget.value))}
                {...aria('cpu')}
              />
              <FieldError id="err-cpu" messages={errs('cpu')} />
            </div>
            <div class="field">
              <label for="vm-memory">Memory</label>
              <input id="vm-memory" value={memory} onInput={(e) => setMemory(e.currentTarget.value.trim())} {...aria('memory')} />
              <FieldError id="err-memory" messages={errs('memory')} />
            </div>
          </div>
          {multiple && name && (
            <p class="muted">
              Makes {names.slice(0, 3).join(', ')}
              {names.length > 3 ? `, … ${names[names.length - 1]}` : ''}.
            </p>
          )}
          <fieldset class="inner" {...aria('keyPairs')}>
            <legend>SSH keys</legend>
            {keys.items.length === 0 && (
              <p class="muted">
                No key pairs in {namespace}. <a href="#/r/keypairs/create">Add one</a>.
              </p>
            )}
            {keys.items.map((k) => (
              <label class="check">
                <input
                  type="checkbox"
                  checked={keyPairs.includes(k.metadata.name)}
                  onChange={(e) =>
                    setKeyPairs(e.currentTarget.checked ? [...keyPairs, k.metadata.name] : keyPairs.filter((x) => x !== k.metadata.name))
                  }
                />
                {k.metadata.name}
              </label>
            ))}
            <FieldError id="err-keyPairs" messages={errs('keyPairs')} />
            <label for="vm-new-key">Or paste a public key (saved as key pair {name ? `${name}-key` : 'NAME-key'})</label>
            <textarea
              id="vm-new-key"
              rows={2}
              class="code"
              spellcheck={false}
              value={newKey}
              placeholder="ssh-ed25519 AAAA... me@laptop"
              onInput={(e) => setNewKey(e.currentTarget.value)}
              {...aria('newKey')}
            />
            <FieldError id="err-newKey" messages={errs('newKey')} />
          </fieldset>
        </fieldset>

        <fieldset>
          <legend>Volumes</legend>
          {version && (
            <p class="notice" data-testid="template-volumes-note">
              From a template, the VM gets the template's own disks and networks; here you choose only its root disk's image (if the
              template needs one), its CPU, memory, SSH keys, user data and hostname (written into the user data). Add more disks from the
              VM's page afterwards (Add disk), or edit its YAML.
            </p>
          )}
          {(version ? volumes.slice(0, 1) : volumes).map((v, i) => (
            <div class="row-card" key={v.id} data-testid={`volume-${i}`}>
              <div class="grid">
                {!version && (
                  <div class="field">
                    <label for={`vm-disk-name-${i}`}>Disk name</label>
                    <input
                      id={`vm-disk-name-${i}`}
                      value={v.name}
                      onInput={(e) => setVol(i, { name: e.currentTarget.value.trim() })}
                      {...aria(`volume-${i}`)}
                    />
                  </div>
                )}
                {!version && (
                  <div class="field">
                    <label for={`vm-source-${i}`}>Source</label>
                    <select
                      id={`vm-source-${i}`}
                      value={v.source}
                      onChange={(e) => setVol(i, { source: e.currentTarget.value as VolumeRow['source'] })}
                    >
                      <option value="image">From an image</option>
                      <option value="blank">Blank</option>
                    </select>
                  </div>
                )}
                {v.source === 'image' && (
                  <div class="field">
                    <label for={`vm-image-${i}`}>Image</label>
                    <select
                      id={`vm-image-${i}`}
                      value={v.image}
                      onChange={(e) => setVol(i, { image: e.currentTarget.value })}
                      data-testid={`volume-${i}-image`}
                      {...aria(`volume-${i}`)}
                    >
                      <option value="">Choose an image…</option>
                      {readyImages.map((im) => {
                        const id = `${im.metadata.namespace}/${im.metadata.name}`;
                        return (
                          <option value={id}>
                            {id} ({im.status?.format}, {formatBytes(im.status?.virtualSize)})
                          </option>
                        );
                      })}
                    </select>
                  </div>
                )}
                {!version && (
                  <div class="field">
                    <label for={`vm-size-${i}`}>Size</label>
                    <input id={`vm-size-${i}`} value={v.size} onInput={(e) => setVol(i, { size: e.currentTarget.value.trim() })} />
                  </div>
                )}
                {!version && (
                  <div class="field">
                    <label for={`vm-bus-${i}`}>Bus</label>
                    <select
                      id={`vm-bus-${i}`}
                      value={v.bus}
                      onChange={(e) => setVol(i, { bus: e.currentTarget.value as VolumeRow['bus'] })}
                    >
                      <option value="virtio">virtio</option>
                      <option value="sata">sata</option>
                      <option value="scsi">scsi</option>
                    </select>
                  </div>
                )}
              </div>
              <FieldError id={`err-volume-${i}`} messages={errs(`volume-${i}`)} />
              {!version && volumes.length > 1 && (
                <button type="button" class="small" onClick={() => setVolumes(volumes.filter((_, j) => j !== i))}>
                  Remove disk {v.name}
                </button>
              )}
            </div>
          ))}
          {!version && (
            <button
              type="button"
              onClick={() =>
                setVolumes([
                  ...volumes,
                  { id: nextRow++, name: `disk-${volumes.length}`, source: 'blank', image: '', size: '10Gi', bus: 'virtio' },
                ])
              }
            >
              Add volume
            </button>
          )}
        </fieldset>

        {!version && (
          <fieldset>
            <legend>Networks</legend>
            {nics.map((n, i) => (
              <div class="row-card" key={n.id}>
                <div class="field">
                  <label for={`vm-network-of-nic-${i}`}>Network of NIC {i + 1}</label>
                  <select
                    id={`vm-network-of-nic-${i}`}
                    value={n.network}
                    onChange={(e) => setNics(nics.map((x, j) => (j === i ? { ...x, network: e.currentTarget.value } : x)))}
                    {...aria(`nic-${i}`)}
                  >
                    <option value="">Management network</option>
                    {nads.items.map((d) => {
                      const id = `${d.metadata.namespace}/${d.metadata.name}`;
                      return <option value={id}>{id}</option>;
                    })}
                  </select>
                </div>
                <FieldError id={`err-nic-${i}`} messages={errs(`nic-${i}`)} />
                {nics.length > 1 && (
                  <button type="button" class="small" onClick={() => setNics(nics.filter((_, j) => j !== i))}>
                    Remove NIC {i + 1}
                  </button>
                )}
              </div>
            ))}
            <button
              type="button"
              onClick={() =>
                setNics([
                  ...nics,
                  { id: nextRow++, network: nads.items[0] ? `${nads.items[0].metadata.namespace}/${nads.items[0].metadata.name}` : '' },
                ])
              }
            >
              Add network
            </button>
          </fieldset>
        )}

        <fieldset>
          <legend>Node scheduling</legend>
          {version ? (
            <p class="muted" data-testid="template-note">
              A VM made from a template is placed by the template's own scheduling rules: edit its YAML after creating it to pin it to a
              node (it applies at its next start).
            </p>
          ) : (
            <div class="grid">
              <div class="field">
                <label for="vm-node">Run on node</label>
                <select id="vm-node" value={node} onChange={(e) => setNode(e.currentTarget.value)} {...aria('node')}>
                  <option value="">Any node (the scheduler picks)</option>
                  {nodes.items.map((n) => (
                    <option value={n.metadata.labels?.['kubernetes.io/hostname'] ?? n.metadata.name}>
                      {n.metadata.name}
                      {n.spec?.unschedulable ? ' (cordoned)' : ''}
                    </option>
                  ))}
                </select>
              </div>
              <div class="field">
                <label for="vm-node-labels">Node labels (key=value, comma-separated)</label>
                <input
                  id="vm-node-labels"
                  value={nodeLabels}
                  placeholder="disk=ssd, zone=a"
                  onInput={(e) => setNodeLabels(e.currentTarget.value)}
                  {...aria('node')}
                />
              </div>
            </div>
          )}
          <FieldError id="err-node" messages={errs('node')} />
        </fieldset>

        <fieldset>
          <legend>Advanced options</legend>
          <div class="grid">
            <div class="field">
              <label for="vm-hostname-default-the-vm-">Hostname (default: the VM's name)</label>
              <input
                id="vm-hostname-default-the-vm-"
                value={hostname}
                onInput={(e) => setHostname(e.currentTarget.value.trim())}
                {...aria('hostname')}
              />
              <FieldError id="err-hostname" messages={errs('hostname')} />
            </div>
          </div>
          <label for="user-data">Cloud-init user data</label>
          <textarea
            id="user-data"
            rows={8}
            class="code"
            spellcheck={false}
            value={userData}
            onInput={(e) => setUserData(e.currentTarget.value)}
            {...aria('userData')}
          />
          <FieldError id="err-userData" messages={errs('userData')} />
          {!version && (
            <>
              <label for="network-data">Cloud-init network data</label>
              <textarea
                id="network-data"
                rows={5}
                class="code"
                spellcheck={false}
                value={networkData}
                placeholder={'version: 2\nethernets:\n  eth1:\n    addresses: [10.100.0.77/24]'}
                onInput={(e) => setNetworkData(e.currentTarget.value)}
                {...aria('networkData')}
              />
              <FieldError id="err-networkData" messages={errs('networkData')} />
            </>
          )}
          <label class="check">
            <input type="checkbox" checked={start} onChange={(e) => setStart(e.currentTarget.checked)} disabled={!!version} /> Start the VM
            after creation
          </label>
        </fieldset>

        {error ? <ErrorBox error={error} causes={false} /> : null}
        {unmapped.length > 0 && (
          <ul class="error">
            {unmapped.map((m) => (
              <li>{m}</li>
            ))}
          </ul>
        )}
        {progress && <p role="status">{progress}</p>}
        <div class="buttons">
          <button type="submit" class="primary" disabled={busy}>
            {busy ? 'Creating…' : multiple ? `Create ${names.length} VMs` : 'Create'}
          </button>
          <a class="button" href="#/vms">
            Cancel
          </a>
        </div>
        {preview && (
          <details>
            <summary>The manifest this sends</summary>
            <pre class="code">{preview}</pre>
          </details>
        )}
      </form>
    </section>
  );
}
