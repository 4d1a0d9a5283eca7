// Browser smoke test of the Tern web client.
//
//   cd chat-server/web/test && npm install && node smoke.mjs
//
// Needs a running server with dev auth, e.g.
//   target/debug/chat-server --listen 127.0.0.1:18081 --data-dir /tmp/webtest-data --dev-auth
// and Debian's Chromium (/usr/bin/chromium; `apt-get install -y chromium`).
//
// Environment:
//   TERN_URL        server base URL (default http://127.0.0.1:18081)
//   TERN_LOCAL_WEB  1 (default): the browsers talk to a small local proxy that serves
//                   index.html/app.js/app.css from this checkout and forwards everything else
//                   (HTTP and WebSocket upgrades) to TERN_URL, so the test checks the files on
//                   disk even when the server binary embeds older copies; 0: use TERN_URL directly.
//   TERN_SHOTS      directory for screenshots (default: a new temp dir, printed at the end)
//   CHROMIUM        browser path (default /usr/bin/chromium)
//   HEADFUL=1       show the browsers

import { harness, FIXTURES } from './lib.mjs';

const H = harness();
const { BASE, LOCAL_WEB, counts, step, newUser, shot, devSignIn, http, chatItem, waitText, startProxy } = H;

async function main() {
  const health = await fetch(`${BASE}/healthz`).then((r) => r.ok, () => false);
  if (!health) {
    console.log(`no server at ${BASE} (GET /healthz failed); start one with --dev-auth`);
    console.log('0 passed, 1 failed');
    process.exit(1);
  }
  if (LOCAL_WEB) await startProxy();
  console.log(`server ${BASE}; browsers use ${H.appUrl}${LOCAL_WEB ? ' (web files from this checkout)' : ''}`);
  const stamp = Date.now().toString(36);
  const text1 = `hello from user 1 <b>not bold</b> ${stamp}`;
  const text2 = `hi back from user 2 ${stamp}`;
  let a;
  let b;
  let c;

  await step('user 1 and user 2 sign in (dev sign-in) and connect over WebSocket', async () => {
    a = await newUser('u1');
    b = await newUser('u2');
    await shot(a, '01-signin');
    await devSignIn(a, 1);
    await devSignIn(b, 2);
    await a.page.locator('#conn-state[data-state=connected]').waitFor();
    await b.page.locator('#conn-state[data-state=connected]').waitFor();
    await waitText(a.page.locator('#me-name'), /User 1/);
  });

  await step('user 1 creates a direct chat with user 2', async () => {
    await a.page.keyboard.press('Alt+n');
    await a.page.locator('#new-chat-dialog[open]').waitFor();
    await a.page.locator('#direct-user').fill('2');
    await a.page.locator('#direct-user').press('Enter');
    await a.page.locator('#chat-view').waitFor({ state: 'visible' });
    await waitText(a.page.locator('#chat-title'), /^User 2$/);
  });

  await step('presence: user 1 sees user 2 online', async () => {
    await waitText(a.page.locator('#chat-sub'), /^online$/);
  });

  await step('user 1 sends a message: pending bubble, then acked with a tick', async () => {
    await a.page.locator('#composer-input').fill(text1);
    await a.page.locator('#composer-input').press('Enter');
    const mine = a.page.locator('.msg.mine').filter({ hasText: stamp }).last();
    await mine.waitFor();
    await mine.locator('.ticks:not([data-status=pending])').waitFor();
    // Escaped, not HTML.
    const html = await mine.locator('.text').innerHTML();
    if (!html.includes('&lt;b&gt;')) throw new Error(`user text was not escaped: ${html}`);
    if (await mine.locator('.text b').count()) throw new Error('user text became markup');
    await shot(a, '02-user1-sent');
  });

  await step('user 2 sees the new chat with an unread badge', async () => {
    const item = chatItem(b.page, 'User 1');
    await item.waitFor();
    await item.locator('.badge').waitFor();
    await waitText(item.locator('.chat-preview'), new RegExp(stamp));
    await shot(b, '03-user2-list-unread');
  });

  await step('user 2 opens the chat and sees the message', async () => {
    await chatItem(b.page, 'User 1').click();
    await b.page.locator('.msg:not(.mine)').filter({ hasText: text1 }).last().waitFor();
    await waitText(b.page.locator('#chat-sub'), /^online$/);
    // The badge goes once read.
    await b.page.locator('.chat-item[aria-current=true] .badge').waitFor({ state: 'detached' });
    await shot(b, '04-user2-chat');
  });

  await step('read ticks turn to read (blue) for user 1', async () => {
    const ticks = a.page.locator('.msg.mine').filter({ hasText: stamp }).last().locator('.ticks[data-status=read]');
    await ticks.waitFor({ timeout: 10000 });
    // Read differs from delivered by shape and label, not colour alone: a blue pill saying "Read".
    const color = await ticks.evaluate((el) => getComputedStyle(el).backgroundColor);
    const rgb = color.match(/\d+/g).map(Number);
    if (!(rgb[2] > rgb[0] + 60)) throw new Error(`read ticks are not on blue: ${color}`);
    await waitText(ticks.locator('.ticks-label'), /^Read$/);
    await shot(a, '05-user1-read');
  });

  await step('typing indicator: user 1 sees "User 2 is typing…"', async () => {
    await b.page.locator('#composer-input').pressSequentially('hi ba', { delay: 30 });
    await waitText(a.page.locator('#typing'), /User 2 is typing/);
    await waitText(a.page.locator('#chat-sub'), /typing/);
    await shot(a, '06-user1-typing');
  });

  await step('user 2 replies; user 1 gets it live and it is marked read', async () => {
    await b.page.locator('#composer-input').fill(text2);
    await b.page.locator('#send-btn').click();
    await a.page.locator('.msg:not(.mine)').filter({ hasText: text2 }).waitFor();
    await b.page.locator('.msg.mine').filter({ hasText: text2 }).locator('.ticks[data-status=read]').waitFor({ timeout: 10000 });
    // Typing clears when the message arrives.
    await a.page.waitForFunction(() => document.getElementById('typing').textContent === '', null, { timeout: 7000 });
  });

  let groupTitle;
  let mediaStatus;
  await step('user 1 creates a group with users 2 and 3; members dialog shows roles', async () => {
    groupTitle = `Smoke group ${stamp}`;
    await a.page.locator('#new-chat-btn').click();
    await a.page.locator('#new-chat-dialog .tab[data-tab=group]').click();
    await a.page.locator('#group-title').fill(groupTitle);
    await a.page.locator('#group-members').fill('2, 3');
    await a.page.locator('#new-chat-submit').click();
    await waitText(a.page.locator('#chat-title'), new RegExp(groupTitle));
    await a.page.locator('#composer-input').fill(`group hello ${stamp}`);
    await a.page.keyboard.press('Enter');
    await a.page.locator('.msg.mine').filter({ hasText: `group hello ${stamp}` }).locator('.ticks:not([data-status=pending])').waitFor();
    await a.page.locator('#info-btn').click();
    await a.page.locator('#info-dialog[open]').waitFor();
    await waitText(a.page.locator('#members-heading'), /Members \(3\)/);
    await a.page.locator('#member-list .member[data-user-id="1"] .role').waitFor();
    await a.page.locator('#add-member-form').waitFor({ state: 'visible' });
    await shot(a, '07-group-members');
    await a.page.keyboard.press('Escape');
    await a.page.locator('#info-dialog[open]').waitFor({ state: 'detached' });
  });

  await step('user 3 on long-poll (?transport=longpoll) gets the group message and replies', async () => {
    mediaStatus = await fetch(`${BASE}/v1/media`).then((r) => r.status);
    c = await newUser('u3', { query: '?transport=longpoll', fakeMedia: mediaStatus === 404 });
    await devSignIn(c, 3);
    await c.page.locator('#conn-state[data-state=longpoll]').waitFor();
    const item = chatItem(c.page, groupTitle);
    await item.waitFor();
    await item.click();
    await c.page.locator('.msg').filter({ hasText: `group hello ${stamp}` }).waitFor();
    await c.page.locator('#composer-input').fill(`long-poll reply ${stamp}`);
    await c.page.keyboard.press('Enter');
    await c.page.locator('.msg.mine').filter({ hasText: `long-poll reply ${stamp}` }).locator('.ticks:not([data-status=pending])').waitFor();
    await a.page.locator('.msg:not(.mine)').filter({ hasText: `long-poll reply ${stamp}` }).waitFor();
    await a.page.locator('.msg:not(.mine) .sender').filter({ hasText: 'User 3' }).first().waitFor();
    await shot(c, '08-user3-longpoll');
    await shot(a, '09-user1-group');
  });

  await step('attach: upload a picture from the file picker', async () => {
    await c.page.locator('#attach-btn:not([disabled])').waitFor();
    const png = FIXTURES['/test-media/picture.png'][1];
    await c.page.locator('#file-input').setInputFiles({ name: 'picture.png', mimeType: 'image/png', buffer: png });
    const bubble = c.page.locator('.msg.mine').filter({ has: c.page.locator('img.thumb') }).last();
    await bubble.waitFor();
    if (mediaStatus === 404) {
      // Faked upload; the server refuses the media_id: the bubble fails, with Retry.
      await bubble.locator('.fail-row').filter({ hasText: /media/ }).waitFor();
      await shot(c, '08b-user3-upload-refused');
      await bubble.locator('.discard').click();
    } else {
      await bubble.locator('.ticks:not([data-status=pending])').waitFor({ timeout: 20000 });
      await a.page.locator('.msg:not(.mine) .media img.thumb').last().waitFor();
      await a.page.waitForFunction(() => [...document.querySelectorAll('.msg .media img.thumb')].some((i) => i.complete && i.naturalWidth > 0));
      await shot(a, '08b-user1-got-picture');
    }
  });

  await step('group ticks: ✓✓ once both members got the message, blue once both read it', async () => {
    const ticks = a.page.locator('.msg.mine').filter({ hasText: `group hello ${stamp}` }).locator('.ticks');
    try {
      await a.page.locator('.msg.mine').filter({ hasText: `group hello ${stamp}` }).locator('.ticks[data-status=delivered]').waitFor({ timeout: 8000 });
    } catch (e) {
      const dump = await a.page.evaluate(() => {
        const t = window.tern.state;
        const c = t.chats.get(t.openChatId);
        return JSON.stringify({ marksLoaded: c.marksLoaded, marks: [...c.marks.values()], members: c.members });
      });
      throw new Error(`ticks ${await ticks.getAttribute('data-status')}; ${dump}`);
    }
    if (process.env.DEBUG_FRAMES) {
      for (const [u, n] of [[a, 'u1'], [b, 'u2']]) {
        const fr = await u.page.evaluate(() => window.tern.frames.filter(([, f]) => f.type !== 'pong' && f.type !== 'presence').map(([t, f]) => `${t} ${JSON.stringify(f).slice(0, 120)}`).slice(-15));
        console.log(n, fr.join('\n   '));
      }
    }
    // User 2 opens the group: now everyone has read it.
    await chatItem(b.page, groupTitle).click();
    await a.page.locator('.msg.mine').filter({ hasText: `group hello ${stamp}` }).locator('.ticks[data-status=read]').waitFor({ timeout: 8000 });
  });

  await step('history pages: 60 messages, the newest 50 first, older ones on scrolling up', async () => {
    const { token } = await http('POST', '/v1/dev/token', { user_id: 2 });
    const g = await http('POST', '/v1/chats', { type: 'group', title: `Long history ${stamp}`, members: [1] }, token);
    for (let i = 1; i <= 60; i++) {
      await http('POST', `/v1/chats/${g.chat_id}/messages`, { content: `history ${i} ${stamp}`, client_msg_id: `h-${stamp}-${i}` }, token);
    }
    const item = a.page.locator('.chat-item').filter({ hasText: `Long history ${stamp}` });
    await item.waitFor();
    await waitText(item.locator('.badge'), /^60$/);
    await item.click();
    await a.page.locator('.msg').filter({ hasText: `history 60 ${stamp}` }).waitFor();
    await a.page.waitForFunction((n) => document.querySelectorAll('#msg-list .msg').length === n, 50);
    await a.page.locator('#messages').evaluate((el) => { el.scrollTop = 0; });
    await a.page.locator('.msg').filter({ hasText: `history 1 ${stamp}` }).waitFor();
    const seqs = await a.page.locator('#msg-list .msg').evaluateAll((els) => els.map((e) => Number(e.dataset.seq)));
    const want = Array.from({ length: 60 }, (_, i) => i + 1);
    if (JSON.stringify(seqs) !== JSON.stringify(want)) throw new Error(`seqs ${seqs.join(',')}`);
    if (!(await a.page.locator('#older').isHidden())) throw new Error('"load older" still offered');
  });

  await step('the group header counts online members', async () => {
    await chatItem(a.page, groupTitle).click();
    await waitText(a.page.locator('#chat-sub'), /3 members, 2 online/);
  });

  await step('reconnect: user 2 loses the WebSocket, misses a message, and catches up', async () => {
    await chatItem(b.page, 'User 1').click();
    // Kill the socket from inside the page (as a network drop would).
    await b.page.evaluate(() => window.tern.conn.ws.close());
    await b.page.locator('#conn-state:not([data-state=connected])').waitFor();
    await chatItem(a.page, 'User 2').click();
    await a.page.locator('#composer-input').fill(`while you were away ${stamp}`);
    await a.page.keyboard.press('Enter');
    await b.page.locator('#conn-state[data-state=connected]').waitFor({ timeout: 20000 });
    await b.page.locator('.msg').filter({ hasText: `while you were away ${stamp}` }).waitFor();
  });

  await step('seq gap: a lost message frame is detected and fetched with sync, in order', async () => {
    await chatItem(a.page, 'User 2').click();
    await chatItem(b.page, 'User 1').click();
    // User 2's socket "loses" the next message frame.
    await b.page.evaluate(() => {
      const ws = window.tern.conn.ws;
      const orig = ws.onmessage;
      let dropped = false;
      // A WebSocket message may carry several frames (one per line, if the client asked for
      // batch=1): drop only the first message frame and pass the others on.
      ws.onmessage = (ev) => {
        if (dropped) return orig.call(ws, ev);
        const lines = String(ev.data).split('\n');
        const i = lines.findIndex((l) => JSON.parse(l).type === 'message');
        if (i < 0) return orig.call(ws, ev);
        dropped = true;
        lines.splice(i, 1);
        if (lines.length) orig.call(ws, { data: lines.join('\n') });
      };
    });
    await a.page.locator('#composer-input').fill(`gap one ${stamp}`);
    await a.page.keyboard.press('Enter');
    await a.page.locator('.msg.mine').filter({ hasText: `gap one ${stamp}` }).locator('.ticks:not([data-status=pending])').waitFor();
    await a.page.locator('#composer-input').fill(`gap two ${stamp}`);
    await a.page.keyboard.press('Enter');
    await b.page.locator('.msg').filter({ hasText: `gap two ${stamp}` }).waitFor();
    await b.page.locator('.msg').filter({ hasText: `gap one ${stamp}` }).waitFor();
    const texts = await b.page.locator('#msg-list .msg .text').allTextContents();
    const i1 = texts.indexOf(`gap one ${stamp}`);
    const i2 = texts.indexOf(`gap two ${stamp}`);
    if (!(i1 >= 0 && i2 === i1 + 1)) throw new Error(`order: ${i1}, ${i2}`);
    const syncs = await b.page.evaluate(() => window.tern.frames.filter(([, f]) => f.type === 'sync' && f.messages.length).length);
    if (!syncs) throw new Error('no sync answer with messages');
  });

  await step('members: admin adds and removes a member; a member leaves the group', async () => {
    a.page.on('dialog', (d) => d.accept());
    c.page.on('dialog', (d) => d.accept());
    await chatItem(a.page, groupTitle).click();
    await a.page.locator('#info-btn').click();
    await a.page.locator('#add-member-input').fill('4');
    await a.page.locator('#add-member-form button[type=submit]').click();
    await waitText(a.page.locator('#members-heading'), /Members \(4\)/);
    await a.page.locator('#member-list .member[data-user-id="4"] .remove').click();
    await waitText(a.page.locator('#members-heading'), /Members \(3\)/);
    await a.page.keyboard.press('Escape');
    // User 3 (long-poll) leaves.
    await chatItem(c.page, groupTitle).click();
    await c.page.locator('#chat-title-btn').click();
    await c.page.locator('#add-member-form').waitFor({ state: 'hidden' }); // not an admin
    await c.page.locator('#leave-btn').click();
    await chatItem(c.page, groupTitle).waitFor({ state: 'detached' });
    await a.page.locator('#info-btn').click();
    await waitText(a.page.locator('#members-heading'), /Members \(2\)/);
    await a.page.keyboard.press('Escape');
  });

  await step('keyboard: Ctrl+K search, Enter opens, Alt+↓ next chat, Esc closes', async () => {
    await a.page.keyboard.press('Control+k');
    await a.page.keyboard.type('User 2');
    await a.page.keyboard.press('Enter');
    await waitText(a.page.locator('#chat-title'), /^User 2$/);
    if ((await a.page.locator('#composer-input').inputValue()) !== '') throw new Error('the Enter leaked into the composer');
    await a.page.locator('#chat-filter').fill('');
    await a.page.locator('#chat-filter').dispatchEvent('input');
    const before = await a.page.locator('#chat-title').textContent();
    await a.page.keyboard.press('Alt+ArrowDown');
    await a.page.waitForFunction((t) => document.getElementById('chat-title').textContent !== t, before);
    await a.page.locator('#composer-input').focus();
    await a.page.keyboard.press('Escape');
    await a.page.locator('#no-chat').waitFor({ state: 'visible' });
  });

  await step('an error frame (removed from a group) marks the bubble failed with Retry', async () => {
    // User 1 (over HTTP) makes a group with user 2, posts in it, then removes user 2, whose
    // client still shows the chat: its next send is refused with an error frame. (A `chat`
    // member_removed frame would tell the client at once and disable the composer: here user
    // 2's WebSocket drops it, as if the frame were missed, to reach the error-frame path.)
    const { token } = await http('POST', '/v1/dev/token', { user_id: 1 });
    const g = await http('POST', '/v1/chats', { type: 'group', title: `Soon gone ${stamp}`, members: [2] }, token);
    await b.page.routeWebSocket(/\/ws/, (ws) => {
      const server = ws.connectToServer();
      server.onMessage((m) => {
        if (typeof m === 'string' && m.includes('"type":"chat"') && m.includes(`"chat_id":${g.chat_id}`)) return;
        ws.send(m);
      });
    });
    const hellos = await b.page.evaluate(() => window.tern.conn.hellos);
    await b.page.evaluate(() => window.tern.conn.ws?.close());
    await b.page.waitForFunction((n) => window.tern.conn.hellos > n, hellos);
    await http('POST', `/v1/chats/${g.chat_id}/messages`, { content: `you will be removed ${stamp}` }, token);
    const item = b.page.locator('.chat-item').filter({ hasText: `Soon gone ${stamp}` });
    await item.waitFor();
    await item.click();
    await b.page.locator('.msg').filter({ hasText: `you will be removed ${stamp}` }).waitFor();
    // Type while still a member (the typing frame goes out now), let the client's catch-up sync
    // answer arrive, then remove user 2 and send.
    await b.page.locator('#composer-input').fill('this must fail');
    await b.page.waitForFunction((id) => window.tern.frames.some(([, f]) => f.type === 'sync' && f.chat_id === id), g.chat_id);
    await http('DELETE', `/v1/chats/${g.chat_id}/members/2`, undefined, token);
    await b.page.locator('#composer-input').press('Enter');
    await b.page.locator('.msg.failed .fail-row').waitFor();
    await b.page.locator('.msg.failed .retry').waitFor();
    // The client learns it was removed: the chat stays on screen, read-only.
    await waitText(b.page.locator('#chat-sub'), /no longer a member/);
    if (!(await b.page.locator('#composer-input').isDisabled())) throw new Error('composer still enabled');
    await shot(b, '10-user2-failed');
    await b.page.locator('.msg.failed .discard').click();
    await b.page.locator('.msg.failed').waitFor({ state: 'detached' });
    await b.page.unrouteAll();
  });

  await step('media: attach follows server support; image, video and voice messages render', async () => {
    const status = await fetch(`${BASE}/v1/media`).then((r) => r.status);
    const disabled = await a.page.locator('#attach-btn').isDisabled();
    if ((status === 404) !== disabled) throw new Error(`GET /v1/media answers ${status} but the attach button is ${disabled ? 'disabled' : 'enabled'}`);
    if (!LOCAL_WEB) return; // the fixtures come from the local proxy
    await chatItem(a.page, 'User 2').click();
    await a.page.evaluate((stamp) => {
      const t = window.tern;
      const chatId = t.state.openChatId;
      const log = t.state.logs.get(chatId);
      let seq = log.max;
      const base = { type: 'message', chat_id: chatId, sender_id: 2, media_url: null, created_at: new Date().toISOString() };
      const msgs = [
        { content: `a picture ${stamp}`, media: { media_id: 'm-img', url: '/test-media/picture.png', content_type: 'image/png', size: 1234, width: 320, height: 200 } },
        { content: '', media: { media_id: 'm-voice', url: '/test-media/voice.wav', content_type: 'audio/wav', size: 36844, duration_ms: 2300 } },
        { content: 'a clip', media: { media_id: 'm-vid', url: '/test-media/clip.mp4', content_type: 'video/mp4', size: 99999, width: 640, height: 360 } },
        { content: 'bad url', media: { media_id: 'm-js', url: 'javascript:alert(1)', content_type: 'image/png' } },
      ];
      // Injected as if the server sent them (after the last seq, so no gap).
      for (const m of msgs) t.handleFrame({ ...base, ...m, seq: ++seq, message_id: `inj-${stamp}-${seq}` });
    }, stamp);
    const img = a.page.locator('.msg .media img.thumb').last();
    await img.waitFor();
    await a.page.waitForFunction(() => [...document.querySelectorAll('.msg .media img.thumb')].some((i) => i.complete && i.naturalWidth === 320));
    // The length is shown once, by the player itself (no separate duration label).
    if (await a.page.locator('.msg .media .audio .dur').count()) throw new Error('voice length shown twice');
    await a.page.locator('.msg .media audio').last().waitFor({ state: 'attached' });
    await a.page.locator('.msg .media video[controls]').last().waitFor();
    if (await a.page.locator('.media [src^="javascript:"], .media [href^="javascript:"]').count()) throw new Error('a javascript: URL was rendered');
    await waitText(a.page.locator('.chat-item[aria-current=true] .chat-preview'), /bad url/);
    // Late-loading media keeps the newest message in view.
    await a.page.waitForFunction(() => { const b = document.getElementById('messages'); return b.scrollHeight - b.scrollTop - b.clientHeight < 4; });
    await shot(a, '11a-media-messages');
    await a.page.locator('.msg .media img.thumb').last().click();
    await a.page.locator('#lightbox[open]').waitFor();
    await shot(a, '11b-media-lightbox');
    await a.page.keyboard.press('Escape');
    await a.page.locator('#lightbox[open]').waitFor({ state: 'detached' });
  });

  await step('dark mode renders (prefers-color-scheme: dark)', async () => {
    await a.page.emulateMedia({ colorScheme: 'dark' });
    await chatItem(a.page, 'User 2').click();
    const bg = await a.page.locator('.sidebar').evaluate((el) => getComputedStyle(el).backgroundColor);
    const [r, g, bl] = bg.match(/\d+/g).map(Number);
    if (r + g + bl > 200) throw new Error(`sidebar not dark: ${bg}`);
    const hgt = await a.page.locator('#composer-input').evaluate((el) => el.getBoundingClientRect().height);
    if (hgt < 30) throw new Error(`composer collapsed: ${hgt}px`);
    await shot(a, '11c-dark');
    await a.page.emulateMedia({ colorScheme: 'light' });
  });

  await step('narrow screen: one pane at a time with a back button', async () => {
    await b.page.setViewportSize({ width: 390, height: 760 });
    await b.page.evaluate(() => { location.hash = ''; });
    await chatItem(b.page, 'User 1').click();
    await b.page.locator('#back-btn').waitFor({ state: 'visible' });
    // Leaving the removed group's view drops it from the list.
    if (await b.page.locator('.chat-item').filter({ hasText: `Soon gone ${stamp}` }).count()) throw new Error('removed group still listed');
    if (await b.page.locator('.sidebar').isVisible()) throw new Error('sidebar visible next to the chat on a narrow screen');
    await shot(b, '11-user2-mobile-chat');
    await b.page.locator('#back-btn').click();
    await b.page.locator('.sidebar').waitFor({ state: 'visible' });
    await shot(b, '12-user2-mobile-list');
  });

  await step('sign-out returns to the sign-in screen and forgets the token', async () => {
    await c.page.locator('#signout-btn').click();
    await c.page.locator('#signin').waitFor({ state: 'visible' });
    const tok = await c.page.evaluate(() => localStorage.getItem('tern.token'));
    if (tok) throw new Error('token still stored');
  });

  await step('no page errors in any browser', async () => {
    const all = [a, b, c].filter(Boolean).flatMap((u) => u.errors.map((e) => `${u.label}: ${e}`))
      // The refused sends and the forced socket close are expected to log nothing, but Chromium
      // logs failed resource loads (e.g. probing GET /v1/media) as console errors: ignore those.
      .filter((e) => !/Failed to load resource/.test(e));
    if (all.length) throw new Error(all.join('\n'));
  });
}

try {
  await main();
} catch (e) {
  counts.failed += 1;
  console.log(`FAIL setup: ${e?.stack || e}`);
} finally {
  process.exit((await H.finish()) ? 1 : 0);
}
