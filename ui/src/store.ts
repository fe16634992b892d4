// Live lists of API objects: list, then watch from the list's
// resourceVersion (newline-delimited JSON events over a streaming fetch),
// list again on 410 Gone. One shared feed per collection, kept while a
// component uses it.

import { useEffect, useState } from 'preact/hooks';
import { ApiError, check, authHeaders, resourcePath, errorMessage } from './api';

export interface K8sObject {
  apiVersion?: string;
  kind?: string;
  metadata: {
    name: string;
    namespace?: string;
    uid?: string;
    resourceVersion?: string;
    creationTimestamp?: string;
    deletionTimestamp?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    [k: string]: unknown;
  };
  spec?: any;
  status?: any;
  [k: string]: any;
}

export interface ResourceState<T> {
  items: T[];
  loaded: boolean;
  error: string | null;
}

type Listener = () => void;

// Over HTTP/1.1 a browser opens at most six connections to a host, and each
// watch holds one: beyond a few watches, feeds poll the list instead so that
// other requests are not queued behind them. HTTP/2 multiplexes them all.
function maxWatches(): number {
  const nav = performance.getEntriesByType?.('navigation')[0] as PerformanceNavigationTiming | undefined;
  const proto = nav?.nextHopProtocol ?? '';
  return proto === 'h2' || proto === 'h3' ? 64 : 3;
}
const WATCH_SLOTS = maxWatches();
let watchesInUse = 0;
const POLL_MS = 4000;
// Polling feeds waiting for a watch slot: woken when one frees.
const slotWaiters = new Set<() => void>();
function releaseSlot() {
  watchesInUse--;
  for (const w of [...slotWaiters]) w();
}

const key = (o: K8sObject) => `${o.metadata.namespace ?? ''}/${o.metadata.name}`;

function byNamespaceName(a: K8sObject, b: K8sObject): number {
  const na = a.metadata.namespace ?? '';
  const nb = b.metadata.namespace ?? '';
  if (na !== nb) return na < nb ? -1 : 1;
  return a.metadata.name < b.metadata.name ? -1 : a.metadata.name > b.metadata.name ? 1 : 0;
}

class Feed {
  private objects = new Map<string, K8sObject>();
  private listeners = new Set<Listener>();
  private abort: AbortController | null = null;
  private rv = '';
  private sorted: K8sObject[] | null = [];
  private notifyTimer: number | null = null;
  state: ResourceState<K8sObject> = { items: [], loaded: false, error: null };

  constructor(private readonly path: string) {}

  subscribe(l: Listener): () => void {
    this.listeners.add(l);
    if (this.listeners.size === 1) this.start();
    return () => {
      this.listeners.delete(l);
      if (this.listeners.size === 0) this.stop();
    };
  }

  private start() {
    this.abort = new AbortController();
    void this.run(this.abort.signal);
  }

  private stop() {
    this.abort?.abort();
    this.abort = null;
  }

  private publish(now = false) {
    this.sorted = null;
    const fire = () => {
      this.notifyTimer = null;
      if (!this.sorted) this.sorted = [...this.objects.values()].sort(byNamespaceName);
      this.state = { ...this.state, items: this.sorted };
      for (const l of this.listeners) l();
    };
    if (now) {
      if (this.notifyTimer !== null) clearTimeout(this.notifyTimer);
      fire();
    } else if (this.notifyTimer === null) {
      // Batch bursts of events into one render.
      this.notifyTimer = window.setTimeout(fire, 60);
    }
  }

  private setError(error: string | null) {
    if (this.state.error === error) return;
    this.state = { ...this.state, error };
    for (const l of this.listeners) l();
  }

  private async list(signal: AbortSignal) {
    const res = await check(await fetch(this.path, { headers: { Accept: 'application/json', ...authHeaders() }, signal }));
    const body = await res.json();
    this.objects.clear();
    for (const o of body.items ?? []) this.objects.set(key(o), o);
    this.rv = body.metadata?.resourceVersion ?? '';
    this.state = { ...this.state, loaded: true, error: null };
    this.publish(true);
  }

  /** Follows the watch until it ends; returns false when the list must be read again. */
  private async watch(signal: AbortSignal): Promise<boolean> {
    const sep = this.path.includes('?') ? '&' : '?';
    const url = `${this.path}${sep}watch=1&allowWatchBookmarks=true&resourceVersion=${encodeURIComponent(this.rv)}`;
    const res = await fetch(url, { headers: { Accept: 'application/json', ...authHeaders() }, signal });
    if (res.status === 410) return false;
    await check(res);
    if (!res.body) return false;
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return true;
      buf += decoder.decode(value, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        let ev: { type: string; object: any };
        try {
          ev = JSON.parse(line);
        } catch {
          continue;
        }
        if (!this.apply(ev)) return false;
      }
    }
  }

  /** Applies one watch event; false when the watch must restart from a new list. */
  private apply(ev: { type: string; object: any }): boolean {
    const o = ev.object;
    switch (ev.type) {
      case 'ADDED':
      case 'MODIFIED':
        this.objects.set(key(o), o);
        break;
      case 'DELETED':
        this.objects.delete(key(o));
        break;
      case 'BOOKMARK':
        break;
      case 'ERROR':
        return false;
      default:
        return true;
    }
    if (o?.metadata?.resourceVersion) this.rv = o.metadata.resourceVersion;
    if (ev.type !== 'BOOKMARK') this.publish();
    return true;
  }

  private async run(signal: AbortSignal) {
    let needList = true;
    let backoff = 500;
    let failures = 0;
    let slot = false;
    try {
      while (!signal.aborted) {
        try {
          if (!slot && watchesInUse < WATCH_SLOTS) {
            slot = true;
            watchesInUse++;
          }
          if (needList || !slot) await this.list(signal);
          if (slot) {
            needList = !(await this.watch(signal));
          } else if (watchesInUse >= WATCH_SLOTS) {
            await new Promise<void>((resolve) => {
              const wake = () => {
                slotWaiters.delete(wake);
                clearTimeout(t);
                resolve();
              };
              const t = setTimeout(wake, POLL_MS);
              slotWaiters.add(wake);
              signal.addEventListener('abort', wake);
            });
          }
          backoff = 500;
          failures = 0;
          this.setError(null);
        } catch (e) {
          if (signal.aborted) return;
          if (e instanceof ApiError && e.code === 401) return;
          needList = true;
          failures++;
          // A dropped connection is retried quietly once (the browser drops
          // streams when the host's network changes).
          if (failures > 1 || (e instanceof ApiError && e.code !== 0)) this.setError(errorMessage(e));
          await sleep(failures > 1 ? backoff : 200, signal);
          backoff = Math.min(backoff * 2, 10_000);
        }
      }
    } finally {
      if (slot) releaseSlot();
    }
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(t);
      resolve();
    });
  });
}

const feeds = new Map<string, Feed>();

function feedFor(path: string): Feed {
  let f = feeds.get(path);
  if (!f) {
    f = new Feed(path);
    feeds.set(path, f);
  }
  return f;
}

/**
 * The live objects of a collection: `useResource('kubevirt.io/v1',
 * 'virtualmachines')` (every namespace), or of one namespace. `null` as the
 * group/version turns it off.
 */
export function useResource<T extends K8sObject = K8sObject>(
  groupVersion: string | null,
  plural: string,
  namespace?: string,
): ResourceState<T> {
  const path = groupVersion ? resourcePath(groupVersion, plural, namespace || undefined) : null;
  const [, setTick] = useState(0);
  useEffect(() => {
    if (!path) return;
    const feed = feedFor(path);
    const un = feed.subscribe(() => setTick((t) => t + 1));
    setTick((t) => t + 1);
    return un;
  }, [path]);
  if (!path) return { items: [], loaded: true, error: null };
  return feedFor(path).state as ResourceState<T>;
}

/** Drops every feed (at logout). */
export function resetFeeds() {
  feeds.clear();
}
