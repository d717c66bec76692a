// palaver's service worker: keeps a copy of the app's own files so that the page opens, with
// its outbox, while the network is down. Network first (a new binary's files are used at once),
// the copy only when the network fails. API and Socket.IO traffic is never touched.

const CACHE = 'palaver-shell';
const SHELL = [
  '/', '/assets/app.css', '/assets/app.js', '/assets/api.js', '/assets/dom.js', '/assets/picker.js',
  '/assets/socket.js', '/assets/store.js',
];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(self.clients.claim());
});

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== self.location.origin || !SHELL.includes(url.pathname)) return;
  event.respondWith(
    fetch(event.request)
      .then((response) => {
        if (response.ok) {
          const copy = response.clone();
          event.waitUntil(caches.open(CACHE).then((cache) => cache.put(url.pathname, copy)));
        }
        return response;
      })
      .catch(() => caches.match(url.pathname, { ignoreVary: true }).then((cached) => cached || Response.error())),
  );
});
