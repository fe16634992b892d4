import { useMemo, useState } from 'preact/hooks';
import { ApiError, authHeaders, check, resourcePath, sendJSON } from '../api';
import { useResource, type K8sObject } from '../store';
import { href, useNamespace } from '../router';
import { condition, formatBytes } from '../format';
import { ageCol } from './ResourceList';
import { Table, type TableColumn } from '../components/Table';
import { ErrorBox, FieldError, causesFor } from '../components/ErrorBox';
import { notify } from '../components/Toasts';
import { DeleteDialog } from '../components/DeleteDialog';
import { kindById } from '../kinds';

const GV = 'harvesterhci.io/v1beta1';
const PLURAL = 'virtualmachineimages';

/** A valid object name from a file name: `Debian 12.qcow2` → `debian-12`. */
export function nameFromFile(file: string): string {
  const stem = file.replace(/\.[^.]*$/, '').toLowerCase();
  return stem
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 63)
    .replace(/-+$/, '');
}

export function imageState(o: K8sObject): string {
  if (o.metadata.deletionTimestamp) return 'Terminating';
  if (o.status?.failed || (condition(o, 'Imported')?.status === 'False' && condition(o, 'Imported')?.reason === 'Failed')) return 'Failed';
  if (condition(o, 'Imported')?.status === 'True') return 'Ready';
  return o.spec?.sourceType === 'upload' && !o.status?.progress ? 'Uploading' : 'Importing';
}

function newImage(ns: string, name: string, displayName: string, spec: Record<string, unknown>) {
  return sendJSON('POST', resourcePath(GV, PLURAL, ns), {
    apiVersion: GV,
    kind: 'VirtualMachineImage',
    metadata: { name, namespace: ns },
    spec: { displayName: displayName || name, ...spec },
  });
}

/** Sends a file as the body of the image's upload, reporting progress (0..1). */
function uploadFile(ns: string, name: string, file: File, onProgress: (f: number) => void): Promise<void> {
  const url = `${resourcePath(GV, PLURAL, ns, name)}/upload`;
  const once = () =>
    new Promise<Response>((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open('POST', url);
      for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
      xhr.setRequestHeader('Content-Type', 'application/octet-stream');
      xhr.setRequestHeader('Accept', 'application/json');
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable) onProgress(e.loaded / e.total);
      };
      xhr.onload = () => resolve(new Response(xhr.responseText || null, { status: xhr.status, statusText: xhr.statusText }));
      xhr.onerror = () => reject(new ApiError(0, 'The upload was interrupted: cannot reach the server.'));
      xhr.send(file);
    });
  const run = async (tries: number): Promise<void> => {
    let res: Response;
    try {
      res = await once();
    } catch (e) {
      // Sent again once when the browser dropped it (ERR_NETWORK_CHANGED).
      if (tries < 30) throw e;
      res = await once();
    }
    if (res.status === 503 && tries > 0) {
      await new Promise((r) => setTimeout(r, 1000));
      return run(tries - 1);
    }
    await check(res);
  };
  return run(30);
}

function UploadForm() {
  const [ns] = useNamespace();
  const [file, setFile] = useState<File | null>(null);
  const [name, setName] = useState('');
  const [namespace, setNamespace] = useState(ns || 'default');
  const [progress, setProgress] = useState<number | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: Event) => {
    e.preventDefault();
    if (!file) {
      setError(new Error('Choose a file.'));
      return;
    }
    const n = name || nameFromFile(file.name);
    setBusy(true);
    setError(null);
    setProgress(0);
    try {
      await newImage(namespace, n, n, { sourceType: 'upload' });
      await uploadFile(namespace, n, file, setProgress);
      notify(`Image ${n} uploaded`);
      setFile(null);
      setName('');
      (e.target as HTMLFormElement).reset();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
      setProgress(null);
    }
  };
  const nameErr = causesFor(error, 'metadata.name');
  return (
    <form class="panel" onSubmit={submit} aria-labelledby="upload-h" data-testid="upload-form">
      <h2 id="upload-h">Upload a file</h2>
      <div class="grid">
        <div class="field">
          <label for="img-file-qcow2-raw-or-iso">File (qcow2, raw or ISO)</label>
          <input
            id="img-file-qcow2-raw-or-iso"
            type="file"
            name="file"
            data-testid="upload-file"
            onChange={(e) => {
              const f = e.currentTarget.files?.[0] ?? null;
              setFile(f);
              if (f && !name) setName(nameFromFile(f.name));
            }}
          />
        </div>
        <div class="field">
          <label for="img-name">Name</label>
          <input
            id="img-name"
            value={name}
            onInput={(e) => setName(e.currentTarget.value)}
            aria-invalid={nameErr.length > 0}
            data-testid="upload-name"
          />
          <FieldError messages={nameErr} />
        </div>
        <div class="field">
          <label for="img-namespace">Namespace</label>
          <input id="img-namespace" value={namespace} onInput={(e) => setNamespace(e.currentTarget.value)} required />
        </div>
      </div>
      {progress !== null && (
        <div class="progress-row">
          <label for="upload-progress">{progress < 1 ? 'Uploading' : 'Checking and converting'}</label>
          <progress id="upload-progress" max={1} value={progress} data-testid="upload-progress" />
          <span>{Math.round(progress * 100)}%</span>
        </div>
      )}
      <ErrorBox error={error} causes={nameErr.length === 0} />
      <button type="submit" class="primary" disabled={busy}>
        {busy ? 'Uploading…' : 'Upload'}
      </button>
    </form>
  );
}

function UrlForm() {
  const [ns] = useNamespace();
  const [name, setName] = useState('');
  const [url, setUrl] = useState('');
  const [checksum, setChecksum] = useState('');
  const [namespace, setNamespace] = useState(ns || 'default');
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const n = name || nameFromFile(url.split('/').pop() ?? '');
      const spec: Record<string, unknown> = { sourceType: 'download', url };
      if (checksum.trim()) spec.checksum = checksum.trim();
      await newImage(namespace, n, n, spec);
      notify(`Importing image ${n}`);
      setName('');
      setUrl('');
      setChecksum('');
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  const nameErr = causesFor(error, 'metadata.name');
  const urlErr = causesFor(error, 'spec.url');
  const sumErr = causesFor(error, 'spec.checksum');
  return (
    <form class="panel" onSubmit={submit} aria-labelledby="url-h" data-testid="url-form">
      <h2 id="url-h">Import from a URL</h2>
      <div class="grid">
        <div class="field">
          <label for="img-url">URL</label>
          <input
            id="img-url"
            type="url"
            value={url}
            onInput={(e) => setUrl(e.currentTarget.value)}
            required
            aria-invalid={urlErr.length > 0}
          />
          <FieldError messages={urlErr} />
        </div>
        <div class="field">
          <label for="img-name-2">Name</label>
          <input
            id="img-name-2"
            value={name}
            onInput={(e) => setName(e.currentTarget.value)}
            placeholder="from the URL"
            aria-invalid={nameErr.length > 0}
          />
          <FieldError messages={nameErr} />
        </div>
        <div class="field">
          <label for="img-namespace-2">Namespace</label>
          <input id="img-namespace-2" value={namespace} onInput={(e) => setNamespace(e.currentTarget.value)} required />
        </div>
        <div class="field">
          <label for="img-sha-512-checksum-optiona">SHA-512 checksum (optional)</label>
          <input
            id="img-sha-512-checksum-optiona"
            value={checksum}
            onInput={(e) => setChecksum(e.currentTarget.value)}
            aria-invalid={sumErr.length > 0}
          />
          <FieldError messages={sumErr} />
        </div>
      </div>
      <ErrorBox error={error} causes={nameErr.length + urlErr.length + sumErr.length === 0} />
      <button type="submit" class="primary" disabled={busy}>
        Import
      </button>
    </form>
  );
}

export function Images() {
  const [ns] = useNamespace();
  const images = useResource(GV, PLURAL, ns);
  const [deleting, setDeleting] = useState<K8sObject | null>(null);
  const columns = useMemo<TableColumn<K8sObject>[]>(
    () => [
      {
        title: 'Name',
        text: (o) => o.metadata.name,
        cell: (o) => <a href={href('r', 'images', o.metadata.namespace, o.metadata.name)}>{o.metadata.name}</a>,
      },
      { title: 'Namespace', text: (o) => o.metadata.namespace ?? '', cell: (o) => o.metadata.namespace },
      {
        title: 'State',
        text: imageState,
        cell: (o) => {
          const s = imageState(o);
          return (
            <span class={`badge s-${s.toLowerCase()}`} data-testid="image-state">
              {s}
            </span>
          );
        },
      },
      {
        title: 'Progress',
        cell: (o) => {
          const p = o.status?.progress ?? 0;
          return (
            <span class="progress-cell">
              <progress max={100} value={p} aria-label={`Progress of ${o.metadata.name}`} /> {p}%
            </span>
          );
        },
      },
      { title: 'Format', text: (o) => o.status?.format ?? '', cell: (o) => o.status?.format ?? '' },
      { title: 'Virtual size', sort: (o) => o.status?.virtualSize ?? 0, cell: (o) => formatBytes(o.status?.virtualSize) },
      {
        title: 'Source',
        text: (o) => o.spec?.sourceType ?? '',
        cell: (o) => <span class="wrap">{o.spec?.url ?? o.spec?.sourceType}</span>,
      },
      {
        title: 'Message',
        cell: (o) => {
          const c = (o.status?.conditions ?? []).find((c: any) => c.status === 'False' || c.reason === 'Failed');
          return <span class="wrap">{c?.message ?? ''}</span>;
        },
      },
      ageCol(),
      {
        title: 'Actions',
        class: 'actions',
        cell: (o) => (
          <button type="button" class="small danger" aria-label={`Delete ${o.metadata.name}`} onClick={() => setDeleting(o)}>
            Delete
          </button>
        ),
      },
    ],
    [],
  );
  return (
    <section>
      <div class="page-head">
        <h1>Images</h1>
        <a class="button" href="#/r/images/create">
          Create from YAML
        </a>
      </div>
      {images.error && (
        <p class="error" role="alert">
          {images.error}
        </p>
      )}
      <Table
        label="Images"
        testid="image-table"
        items={images.items}
        columns={columns}
        loaded={images.loaded}
        empty="No images yet: upload one or import one from a URL."
      />
      <DeleteDialog kind={kindById('images')!} target={deleting} onClose={() => setDeleting(null)} />
      <div class="two">
        <UploadForm />
        <UrlForm />
      </div>
    </section>
  );
}
