// Tern's service worker: shows Web Push notifications (payload: the `notification` object of
// docs/push.md) and opens the chat when one is clicked. Registered by app.js only when the
// user turns notifications on.
self.addEventListener('push', (e) => {
  let n = {};
  try { n = e.data ? e.data.json() : {}; } catch { n = { title: 'Tern', body: e.data ? e.data.text() : '' }; }
  const title = n.title || 'New message';
  e.waitUntil(self.registration.showNotification(title, {
    body: n.body || '',
    tag: n.chat_id ? `chat-${n.chat_id}` : undefined,
    renotify: true,
    data: n,
  }));
});

self.addEventListener('notificationclick', (e) => {
  e.notification.close();
  const chat = e.notification.data && e.notification.data.chat_id;
  const url = new URL(chat ? `/#/c/${chat}` : '/', self.location.origin).href;
  e.waitUntil((async () => {
    const wins = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
    for (const w of wins) {
      if (new URL(w.url).origin === self.location.origin) {
        await w.focus();
        if ('navigate' in w) await w.navigate(url).catch(() => {});
        return;
      }
    }
    await self.clients.openWindow(url);
  })());
});
