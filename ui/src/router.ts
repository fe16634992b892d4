// Hash routes (`#/vms/default/web`): they work wherever the UI is served.

import { useEffect, useState } from 'preact/hooks';

export function currentPath(): string {
  const h = location.hash.replace(/^#/, '');
  return h.startsWith('/') ? h : '/';
}

export function useRoute(): string[] {
  const [path, setPath] = useState(currentPath());
  useEffect(() => {
    const on = () => setPath(currentPath());
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);
  return path
    .split('?')[0]
    .split('/')
    .filter(Boolean)
    .map((s) => decodeURIComponent(s));
}

export function navigate(path: string) {
  location.hash = path;
}

/** `#/a/b` with each segment encoded. */
export function href(...segments: (string | undefined)[]): string {
  return (
    '#/' +
    segments
      .filter((s) => s !== undefined)
      .map((s) => encodeURIComponent(s as string))
      .join('/')
  );
}

// The namespace the lists show ('' = all), shared by every page.
let namespace = sessionStorage.getItem('sheaf.namespace') ?? '';
const nsListeners = new Set<() => void>();

export function useNamespace(): [string, (ns: string) => void] {
  const [, setTick] = useState(0);
  useEffect(() => {
    const l = () => setTick((t) => t + 1);
    nsListeners.add(l);
    return () => {
      nsListeners.delete(l);
    };
  }, []);
  return [
    namespace,
    (ns: string) => {
      namespace = ns;
      sessionStorage.setItem('sheaf.namespace', ns);
      for (const l of nsListeners) l();
    },
  ];
}
