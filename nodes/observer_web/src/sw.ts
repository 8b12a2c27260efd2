// The service worker: keeps the app's files (listed, with their hashes, by build.mjs in the
// generated version) so the form opens with no connection; never caches the gateway's /v1/
// answers (reports, receipts and keys go through the page, which stores what it keeps).
export type {};
declare const self: ServiceWorkerGlobalScope;
declare const APP_FILES: string[];
declare const APP_VERSION: string;

const CACHE = `obus-observer-${APP_VERSION}`;

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then((c) => c.addAll(APP_FILES))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((names) => Promise.all(names.filter((n) => n !== CACHE).map((n) => caches.delete(n))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== self.location.origin) return;
  const scope = new URL(self.registration.scope).pathname;
  if (!url.pathname.startsWith(scope)) return;
  event.respondWith(
    caches.open(CACHE).then(async (c) => {
      const hit = await c.match(event.request, { ignoreSearch: true });
      if (hit !== undefined) return hit;
      if (url.pathname === scope) {
        const index = await c.match(`${scope}index.html`);
        if (index !== undefined) return index;
      }
      return fetch(event.request);
    }),
  );
});
