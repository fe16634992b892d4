// The kinds the UI knows: where they live in the API, the columns of their
// lists and an example to start a new one from.

import type { K8sObject } from './store';
import { age, condition } from './format';

export interface Column {
  title: string;
  value: (o: K8sObject) => string | number | undefined;
}

export interface Kind {
  /** The id in the UI's URLs. */
  id: string;
  kind: string;
  /** Plural, for headings. */
  title: string;
  groupVersion: string;
  plural: string;
  namespaced: boolean;
  columns: Column[];
  example: string;
}

const str = (v: unknown) => (v === undefined || v === null ? '' : String(v));
const readyCondition = (o: K8sObject) => condition(o, 'Ready')?.status ?? '';

export const KINDS: Kind[] = [
  {
    id: 'virtualmachines',
    kind: 'VirtualMachine',
    title: 'Virtual machines',
    groupVersion: 'kubevirt.io/v1',
    plural: 'virtualmachines',
    namespaced: true,
    columns: [
      { title: 'Status', value: (o) => o.status?.printableStatus },
      { title: 'Run strategy', value: (o) => o.spec?.runStrategy ?? (o.spec?.running ? 'Always' : 'Halted') },
    ],
    example: `apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: example
  namespace: default
spec:
  runStrategy: Halted
  template:
    spec:
      domain:
        cpu: {cores: 1}
        memory: {guest: 512Mi}
        devices:
          disks:
          - {name: rootdisk, disk: {bus: virtio}}
          interfaces:
          - {name: default, masquerade: {}}
      networks:
      - {name: default, pod: {}}
      volumes:
      - name: rootdisk
        emptyDisk: {capacity: 1Gi}
`,
  },
  {
    id: 'virtualmachineinstances',
    kind: 'VirtualMachineInstance',
    title: 'VM instances',
    groupVersion: 'kubevirt.io/v1',
    plural: 'virtualmachineinstances',
    namespaced: true,
    columns: [
      { title: 'Phase', value: (o) => o.status?.phase },
      { title: 'Node', value: (o) => o.status?.nodeName },
      { title: 'IP', value: (o) => o.status?.interfaces?.[0]?.ipAddress },
    ],
    example: '',
  },
  {
    id: 'migrations',
    kind: 'VirtualMachineInstanceMigration',
    title: 'Migrations',
    groupVersion: 'kubevirt.io/v1',
    plural: 'virtualmachineinstancemigrations',
    namespaced: true,
    columns: [
      { title: 'VMI', value: (o) => o.spec?.vmiName },
      { title: 'Phase', value: (o) => o.status?.phase },
    ],
    example: `apiVersion: kubevirt.io/v1
kind: VirtualMachineInstanceMigration
metadata:
  name: migrate-example
  namespace: default
spec:
  vmiName: example
`,
  },
  {
    id: 'images',
    kind: 'VirtualMachineImage',
    title: 'Images',
    groupVersion: 'harvesterhci.io/v1beta1',
    plural: 'virtualmachineimages',
    namespaced: true,
    columns: [
      { title: 'Display name', value: (o) => o.spec?.displayName },
      { title: 'Format', value: (o) => o.status?.format },
      { title: 'Progress', value: (o) => (o.status?.progress !== undefined ? `${o.status.progress}%` : '') },
    ],
    example: `apiVersion: harvesterhci.io/v1beta1
kind: VirtualMachineImage
metadata:
  name: debian-12
  namespace: default
spec:
  displayName: Debian 12
  sourceType: download
  url: http://mirror.example/debian-12-genericcloud-amd64.qcow2
`,
  },
  {
    id: 'volumes',
    kind: 'Volume',
    title: 'Volumes',
    groupVersion: 'sheaf.io/v1alpha1',
    plural: 'volumes',
    namespaced: true,
    columns: [
      { title: 'Size', value: (o) => o.spec?.size },
      { title: 'Replicas', value: (o) => o.spec?.numberOfReplicas },
      { title: 'State', value: (o) => o.status?.state },
      { title: 'Robustness', value: (o) => o.status?.robustness },
      { title: 'Image', value: (o) => o.spec?.image },
    ],
    example: `apiVersion: sheaf.io/v1alpha1
kind: Volume
metadata:
  name: data
  namespace: default
spec:
  size: 10Gi
  numberOfReplicas: 3
`,
  },
  {
    id: 'volumesnapshots',
    kind: 'VolumeSnapshot',
    title: 'Volume snapshots',
    groupVersion: 'sheaf.io/v1alpha1',
    plural: 'volumesnapshots',
    namespaced: true,
    columns: [
      { title: 'Volume', value: (o) => o.spec?.volumeName },
      { title: 'Ready', value: (o) => str(o.status?.readyToUse ?? o.status?.ready ?? o.status?.state) },
    ],
    example: `apiVersion: sheaf.io/v1alpha1
kind: VolumeSnapshot
metadata:
  name: s1
  namespace: default
spec:
  volumeName: data
`,
  },
  {
    id: 'persistentvolumeclaims',
    kind: 'PersistentVolumeClaim',
    title: 'Volume claims',
    groupVersion: 'v1',
    plural: 'persistentvolumeclaims',
    namespaced: true,
    columns: [
      { title: 'Status', value: (o) => o.status?.phase },
      { title: 'Capacity', value: (o) => o.status?.capacity?.storage ?? o.spec?.resources?.requests?.storage },
      { title: 'Class', value: (o) => o.spec?.storageClassName },
    ],
    example: `apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
  namespace: default
spec:
  accessModes: [ReadWriteOnce]
  volumeMode: Block
  resources:
    requests:
      storage: 10Gi
`,
  },
  {
    id: 'storageclasses',
    kind: 'StorageClass',
    title: 'Storage classes',
    groupVersion: 'storage.k8s.io/v1',
    plural: 'storageclasses',
    namespaced: false,
    columns: [
      { title: 'Provisioner', value: (o) => o.provisioner },
      { title: 'Reclaim', value: (o) => o.reclaimPolicy },
      { title: 'Replicas', value: (o) => o.parameters?.numberOfReplicas },
    ],
    example: `apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: fast
provisioner: driver.sheaf.io
allowVolumeExpansion: true
reclaimPolicy: Delete
volumeBindingMode: Immediate
parameters:
  numberOfReplicas: "2"
`,
  },
  {
    id: 'backups',
    kind: 'Backup',
    title: 'Volume backups',
    groupVersion: 'sheaf.io/v1alpha1',
    plural: 'backups',
    namespaced: true,
    columns: [
      { title: 'Volume', value: (o) => o.spec?.volumeName },
      { title: 'Target', value: (o) => o.spec?.target },
      { title: 'Phase', value: (o) => o.status?.phase },
      { title: 'Progress', value: (o) => (o.status?.progress !== undefined ? `${o.status.progress}%` : '') },
    ],
    example: `apiVersion: sheaf.io/v1alpha1
kind: Backup
metadata:
  name: data-backup
  namespace: default
spec:
  volumeName: data
  target: nfs
`,
  },
  {
    id: 'vmbackups',
    kind: 'VirtualMachineBackup',
    title: 'VM backups',
    groupVersion: 'harvesterhci.io/v1beta1',
    plural: 'virtualmachinebackups',
    namespaced: true,
    columns: [
      { title: 'VM', value: (o) => o.spec?.source?.name },
      { title: 'Type', value: (o) => o.spec?.type },
      { title: 'Ready', value: (o) => str(o.status?.readyToUse) },
      { title: 'Progress', value: (o) => (o.status?.progress !== undefined ? `${o.status.progress}%` : '') },
    ],
    example: `apiVersion: harvesterhci.io/v1beta1
kind: VirtualMachineBackup
metadata:
  name: web-backup
  namespace: default
spec:
  source:
    apiGroup: kubevirt.io
    kind: VirtualMachine
    name: web
  type: backup
`,
  },
  {
    id: 'vmrestores',
    kind: 'VirtualMachineRestore',
    title: 'VM restores',
    groupVersion: 'harvesterhci.io/v1beta1',
    plural: 'virtualmachinerestores',
    namespaced: true,
    columns: [
      { title: 'Backup', value: (o) => o.spec?.virtualMachineBackupName },
      { title: 'Target', value: (o) => o.spec?.target?.name },
      { title: 'Complete', value: (o) => str(o.status?.complete) },
    ],
    example: `apiVersion: harvesterhci.io/v1beta1
kind: VirtualMachineRestore
metadata:
  name: web-as-new
  namespace: default
spec:
  target: {apiGroup: kubevirt.io, kind: VirtualMachine, name: web-copy}
  virtualMachineBackupName: web-backup
  virtualMachineBackupNamespace: default
  newVM: true
`,
  },
  {
    id: 'schedulevmbackups',
    kind: 'ScheduleVMBackup',
    title: 'Backup schedules',
    groupVersion: 'harvesterhci.io/v1beta1',
    plural: 'schedulevmbackups',
    namespaced: true,
    columns: [
      { title: 'Cron', value: (o) => o.spec?.cron },
      { title: 'VM', value: (o) => o.spec?.vmbackup?.source?.name },
      { title: 'Retain', value: (o) => o.spec?.retain },
    ],
    example: `apiVersion: harvesterhci.io/v1beta1
kind: ScheduleVMBackup
metadata:
  name: web-nightly
  namespace: default
spec:
  cron: "0 2 * * *"
  retain: 7
  vmbackup:
    source: {apiGroup: kubevirt.io, kind: VirtualMachine, name: web}
    type: backup
`,
  },
  {
    id: 'backuptargets',
    kind: 'BackupTarget',
    title: 'Backup targets',
    groupVersion: 'sheaf.io/v1alpha1',
    plural: 'backuptargets',
    namespaced: false,
    columns: [
      { title: 'Kind', value: (o) => (o.spec?.s3 ? 's3' : o.spec?.nfs ? 'nfs' : o.spec?.filesystem ? 'filesystem' : '') },
      { title: 'Available', value: (o) => condition(o, 'Available')?.status ?? str(o.status?.available) },
    ],
    example: `apiVersion: sheaf.io/v1alpha1
kind: BackupTarget
metadata:
  name: nfs
spec:
  filesystem:
    path: /mnt/backups
  compression: zstd
  pollInterval: 5m
`,
  },
  {
    id: 'networks',
    kind: 'NetworkAttachmentDefinition',
    title: 'VM networks',
    groupVersion: 'k8s.cni.cncf.io/v1',
    plural: 'network-attachment-definitions',
    namespaced: true,
    columns: [
      { title: 'Cluster network', value: (o) => o.metadata.labels?.['network.harvesterhci.io/clusternetwork'] },
      {
        title: 'VLAN',
        value: (o) => {
          try {
            return JSON.parse(o.spec?.config ?? '{}').vlan;
          } catch {
            return '';
          }
        },
      },
    ],
    example: `apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata:
  name: vlan100
  namespace: default
  labels:
    network.harvesterhci.io/clusternetwork: mgmt
    network.harvesterhci.io/type: L2VlanNetwork
spec:
  config: '{"cniVersion":"0.3.1","name":"vlan100","type":"bridge","bridge":"mgmt-br","promiscMode":true,"vlan":100,"ipam":{}}'
`,
  },
  {
    id: 'clusternetworks',
    kind: 'ClusterNetwork',
    title: 'Cluster networks',
    groupVersion: 'network.harvesterhci.io/v1beta1',
    plural: 'clusternetworks',
    namespaced: false,
    columns: [
      { title: 'Data path', value: (o) => o.status?.dataPath ?? o.spec?.dataPath },
      { title: 'Ready', value: readyCondition },
    ],
    example: `apiVersion: network.harvesterhci.io/v1beta1
kind: ClusterNetwork
metadata:
  name: data
spec:
  dataPath: Auto
`,
  },
  {
    id: 'vlanconfigs',
    kind: 'VlanConfig',
    title: 'Uplinks (VlanConfigs)',
    groupVersion: 'network.harvesterhci.io/v1beta1',
    plural: 'vlanconfigs',
    namespaced: false,
    columns: [
      { title: 'Cluster network', value: (o) => o.spec?.clusterNetwork },
      { title: 'NICs', value: (o) => (o.spec?.uplink?.nics ?? []).join(', ') },
    ],
    example: `apiVersion: network.harvesterhci.io/v1beta1
kind: VlanConfig
metadata:
  name: data-uplink
spec:
  clusterNetwork: data
  uplink:
    nics: [eth1]
    linkAttributes:
      mtu: 1500
`,
  },
  {
    id: 'ippools',
    kind: 'IPPool',
    title: 'IP pools',
    groupVersion: 'network.harvesterhci.io/v1alpha1',
    plural: 'ippools',
    namespaced: true,
    columns: [
      { title: 'Network', value: (o) => o.spec?.networkName },
      { title: 'CIDR', value: (o) => o.spec?.ipv4Config?.cidr },
    ],
    example: `apiVersion: network.harvesterhci.io/v1alpha1
kind: IPPool
metadata:
  name: vlan100
  namespace: default
spec:
  networkName: default/vlan100
  ipv4Config:
    serverIP: 10.100.0.2
    cidr: 10.100.0.0/24
    pool:
      start: 10.100.0.10
      end: 10.100.0.200
    router: 10.100.0.1
`,
  },
  {
    id: 'nodes',
    kind: 'Node',
    title: 'Nodes',
    groupVersion: 'v1',
    plural: 'nodes',
    namespaced: false,
    columns: [
      { title: 'Ready', value: readyCondition },
      { title: 'CPU', value: (o) => o.status?.capacity?.cpu },
      { title: 'Memory', value: (o) => o.status?.capacity?.memory },
    ],
    example: '',
  },
  {
    id: 'disks',
    kind: 'Disk',
    title: 'Disks',
    groupVersion: 'sheaf.io/v1alpha1',
    plural: 'disks',
    namespaced: false,
    columns: [
      { title: 'Node', value: (o) => o.spec?.nodeName ?? o.status?.nodeName },
      { title: 'Path', value: (o) => o.spec?.path },
    ],
    example: '',
  },
  {
    id: 'templates',
    kind: 'VirtualMachineTemplate',
    title: 'Templates',
    groupVersion: 'harvesterhci.io/v1beta1',
    plural: 'virtualmachinetemplates',
    namespaced: true,
    columns: [
      { title: 'Description', value: (o) => o.spec?.description },
      { title: 'Default version', value: (o) => o.status?.defaultVersion },
      { title: 'Latest version', value: (o) => o.status?.latestVersion },
    ],
    example: `apiVersion: harvesterhci.io/v1beta1
kind: VirtualMachineTemplate
metadata:
  name: web
  namespace: default
spec:
  description: web servers
`,
  },
  {
    id: 'templateversions',
    kind: 'VirtualMachineTemplateVersion',
    title: 'Template versions',
    groupVersion: 'harvesterhci.io/v1beta1',
    plural: 'virtualmachinetemplateversions',
    namespaced: true,
    columns: [
      { title: 'Template', value: (o) => o.spec?.templateId },
      { title: 'Version', value: (o) => o.status?.version },
      { title: 'Description', value: (o) => o.spec?.description },
    ],
    example: `apiVersion: harvesterhci.io/v1beta1
kind: VirtualMachineTemplateVersion
metadata:
  name: web-v1
  namespace: default
spec:
  templateId: default/web
  description: 1 vCPU, 1Gi
  vm:
    spec:
      runStrategy: RerunOnFailure
      template:
        spec:
          domain:
            cpu: {cores: 1}
            memory: {guest: 1Gi}
            devices:
              interfaces:
              - {name: default, masquerade: {}}
          networks:
          - {name: default, pod: {}}
`,
  },
  {
    id: 'keypairs',
    kind: 'KeyPair',
    title: 'SSH key pairs',
    groupVersion: 'harvesterhci.io/v1beta1',
    plural: 'keypairs',
    namespaced: true,
    columns: [{ title: 'Fingerprint', value: (o) => o.status?.fingerPrint ?? o.status?.fingerprint }],
    example: `apiVersion: harvesterhci.io/v1beta1
kind: KeyPair
metadata:
  name: mykey
  namespace: default
spec:
  publicKey: ssh-ed25519 AAAA... me@laptop
`,
  },
  {
    id: 'events',
    kind: 'Event',
    title: 'Events',
    groupVersion: 'v1',
    plural: 'events',
    namespaced: true,
    columns: [
      { title: 'Type', value: (o) => o.type },
      { title: 'Reason', value: (o) => o.reason },
      { title: 'Object', value: (o) => `${o.involvedObject?.kind ?? ''}/${o.involvedObject?.name ?? ''}` },
      { title: 'Message', value: (o) => o.message },
    ],
    example: '',
  },
  {
    id: 'namespaces',
    kind: 'Namespace',
    title: 'Namespaces',
    groupVersion: 'v1',
    plural: 'namespaces',
    namespaced: false,
    columns: [{ title: 'Phase', value: (o) => o.status?.phase }],
    example: `apiVersion: v1
kind: Namespace
metadata:
  name: team-a
`,
  },
  {
    id: 'secrets',
    kind: 'Secret',
    title: 'Secrets',
    groupVersion: 'v1',
    plural: 'secrets',
    namespaced: true,
    columns: [{ title: 'Type', value: (o) => o.type }],
    example: `apiVersion: v1
kind: Secret
metadata:
  name: example
  namespace: default
stringData:
  key: value
`,
  },
  {
    id: 'configmaps',
    kind: 'ConfigMap',
    title: 'Config maps',
    groupVersion: 'v1',
    plural: 'configmaps',
    namespaced: true,
    columns: [{ title: 'Keys', value: (o) => Object.keys(o.data ?? {}).length }],
    example: `apiVersion: v1
kind: ConfigMap
metadata:
  name: example
  namespace: default
data:
  key: value
`,
  },
];

const byId = new Map(KINDS.map((k) => [k.id, k]));

export function kindById(id: string): Kind | undefined {
  return byId.get(id);
}

export function kindOf(o: K8sObject): Kind | undefined {
  return KINDS.find((k) => k.kind === o.kind && (!o.apiVersion || k.groupVersion === o.apiVersion));
}

export const ageColumn: Column = { title: 'Age', value: (o) => age(o.metadata.creationTimestamp) };
