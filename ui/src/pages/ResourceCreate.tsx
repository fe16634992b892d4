import { parse } from 'yaml';
import { resourcePath, sendJSON } from '../api';
import { kindById } from '../kinds';
import { href, navigate, useNamespace } from '../router';
import { YamlEditor } from '../components/YamlEditor';
import { notify } from '../components/Toasts';
import type { K8sObject } from '../store';
import { objectHref } from './ResourceList';

/** A new object from a YAML editor pre-filled with an example. */
export function ResourceCreate({ kindId }: { kindId: string }) {
  const kind = kindById(kindId);
  const [ns] = useNamespace();
  if (!kind) return <p class="error">Unknown kind {kindId}.</p>;
  let example = kind.example;
  if (kind.namespaced && ns) example = example.replace(/^  namespace: .*$/m, `  namespace: ${ns}`);
  return (
    <section>
      <nav aria-label="Breadcrumb" class="crumbs">
        <a href={href('r', kind.id)}>{kind.title}</a> / new
      </nav>
      <h1>Create {kind.kind}</h1>
      <YamlEditor
        label={`New ${kind.kind} (YAML)`}
        initial={example}
        submitLabel="Create"
        onSubmit={async (o: K8sObject) => {
          const target = kind.namespaced ? o?.metadata?.namespace || ns || (parse(example)?.metadata?.namespace ?? 'default') : undefined;
          const created = await sendJSON<K8sObject>('POST', resourcePath(kind.groupVersion, kind.plural, target), o);
          notify(`Created ${kind.kind} ${created.metadata.name}`);
          navigate(objectHref(kind, created).slice(1));
        }}
      />
    </section>
  );
}
