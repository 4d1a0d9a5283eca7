// Browser test of chat events, names and a user's devices in step.
//
//   cd chat-server/web/test && npm install && node events.mjs
//
// Needs a running server with dev auth (like smoke.mjs; same environment variables: TERN_URL,
// TERN_LOCAL_WEB, TERN_SHOTS, CHROMIUM, HEADFUL). Uses users 101–104, so it can run on the
// same server right after smoke.mjs.
//
// Checks: a group created, renamed, joined and left shows up, changes and disappears in the
// other members' lists live (`chat` frames, WebSocket and long-poll); names set with
// PATCH /v1/me show in the list, the header, group senders and the members dialog, and a name
// that looks like HTML stays text (no element, no script); a user without a name is "User N";
// reading on one device clears the unread badge on the user's other device (own `receipt`).

import { harness } from './lib.mjs';

const H = harness();
const { BASE, LOCAL_WEB, counts, step, newUser, shot, devSignIn, http, chatItem, waitText, startProxy } = H;

const XSS = '<img src=x onerror=alert(1)>';

async function token(id) {
  return (await http('POST', '/v1/dev/token', { user_id: id })).token;
}

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
  const tok = {};
  for (const id of [101, 102, 103, 104]) tok[id] = await token(id);
  let a; // user 101 "Alice ✓"
  let b; // user 102 named like HTML, WebSocket
  let b2; // user 102's second device, long-poll
  let c; // user 103, no name
  const dialogs = [];
  let group = `Events ${stamp}`;
  let groupId;

  await step('names are set with PATCH /v1/me (stored as given)', async () => {
    await http('PATCH', '/v1/me', { name: 'Alice ✓' }, tok[101]);
    const me = await http('PATCH', '/v1/me', { name: XSS }, tok[102]);
    if (me.name !== XSS) throw new Error(`stored ${JSON.stringify(me)}`);
    // Bad names are refused with a clear error.
    const r = await fetch(`${BASE}/v1/me`, {
      method: 'PATCH',
      headers: { Authorization: `Bearer ${tok[103]}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ name: 'x'.repeat(65) }),
    });
    const body = await r.json();
    if (r.status !== 400 || body.error?.code !== 'invalid') throw new Error(`${r.status} ${JSON.stringify(body)}`);
  });

  await step('three users (one with two devices: WebSocket and long-poll) sign in', async () => {
    a = await newUser('e101');
    b = await newUser('e102');
    b2 = await newUser('e102-lp', { query: '?transport=longpoll' });
    c = await newUser('e103');
    for (const u of [a, b, b2, c]) u.page.on('dialog', (d) => { dialogs.push(`${u.label}: ${d.type()} ${d.message()}`); d.dismiss().catch(() => {}); });
    await devSignIn(a, 101);
    await devSignIn(b, 102);
    await devSignIn(b2, 102);
    await devSignIn(c, 103);
    await a.page.locator('#conn-state[data-state=connected]').waitFor();
    await b.page.locator('#conn-state[data-state=connected]').waitFor();
    await b2.page.locator('#conn-state[data-state=longpoll]').waitFor();
    await c.page.locator('#conn-state[data-state=connected]').waitFor();
  });

  await step('own names from hello; an HTML-looking name stays text', async () => {
    await waitText(a.page.locator('#me-name'), /^Alice ✓$/);
    await waitText(c.page.locator('#me-name'), /^User 103$/);
    const me = b.page.locator('#me-name');
    await me.filter({ hasText: XSS }).waitFor();
    if ((await me.textContent()) !== XSS) throw new Error(`me-name: ${await me.textContent()}`);
    if (await me.locator('img').count()) throw new Error('the name became markup');
  });

  await step('a group created by user 101 appears live for its members, not for others', async () => {
    await a.page.locator('#new-chat-btn').click();
    await a.page.locator('#new-chat-dialog .tab[data-tab=group]').click();
    await a.page.locator('#group-title').fill(group);
    await a.page.locator('#group-members').fill('102');
    await a.page.locator('#new-chat-submit').click();
    await waitText(a.page.locator('#chat-title'), new RegExp(group));
    groupId = Number(await a.page.evaluate((t) => [...window.tern.frames].reverse().find(([, f]) => f.type === 'chat' && f.chat.title === t)?.[1].chat.chat_id, group));
    if (!groupId) throw new Error('user 101 got no chat frame for its own group');
    await chatItem(b.page, group).waitFor();
    await chatItem(b2.page, group).waitFor();
    await c.page.waitForTimeout(500);
    if (await chatItem(c.page, group).count()) throw new Error('a non-member sees the group');
    await shot(b, 'e01-group-appeared');
  });

  await step('adding a member shows the group in their list live; everyone sees the new count', async () => {
    await http('POST', `/v1/chats/${groupId}/members`, { user_ids: [103] }, tok[101]);
    await chatItem(c.page, group).waitFor();
    await waitText(a.page.locator('#chat-sub'), /3 members/);
  });

  await step('renaming the group changes every list live', async () => {
    const renamed = `${group} renamed`;
    const v = await http('PATCH', `/v1/chats/${groupId}`, { title: renamed }, tok[101]);
    if (v.title !== renamed) throw new Error(JSON.stringify(v));
    group = renamed;
    for (const u of [a, b, b2, c]) await chatItem(u.page, group).waitFor();
    await waitText(a.page.locator('#chat-title'), new RegExp(`^${group}$`));
  });

  await step('group messages show sender names as text (an HTML-looking name included)', async () => {
    await chatItem(b.page, group).click();
    await b.page.locator('#composer-input').fill(`named hello ${stamp}`);
    await b.page.keyboard.press('Enter');
    const msg = a.page.locator('.msg:not(.mine)').filter({ hasText: `named hello ${stamp}` });
    await msg.waitFor();
    const sender = msg.locator('.sender');
    await sender.filter({ hasText: XSS }).waitFor();
    if ((await sender.textContent()) !== XSS) throw new Error(`sender: ${await sender.textContent()}`);
    if (await a.page.locator('#messages img[src=x]').count()) throw new Error('the name became an <img>');
    await a.page.locator('#info-btn').click();
    const names = await a.page.locator('#member-list .member-name').allTextContents();
    for (const want of ['Alice ✓ (you)', XSS, 'User 103']) {
      if (!names.includes(want)) throw new Error(`members dialog: ${JSON.stringify(names)}`);
    }
    if (await a.page.locator('#member-list img').count()) throw new Error('markup in the members dialog');
    await shot(a, 'e02-names');
    await a.page.keyboard.press('Escape');
  });

  await step('a direct chat is titled with the partner name, "User N" without one', async () => {
    await http('POST', '/v1/chats', { type: 'direct', members: [101] }, tok[103]);
    await chatItem(a.page, 'User 103').waitFor();
    await chatItem(c.page, 'Alice ✓').waitFor();
  });

  await step('reading on one device clears the unread badge on the other (long-poll)', async () => {
    // User 102's WebSocket device switches to a new direct chat (announced live), so that
    // neither device is reading the group; then user 101 writes twice.
    await http('POST', '/v1/chats', { type: 'direct', members: [101] }, tok[102]);
    await chatItem(b.page, 'Alice ✓').click();
    for (const n of [1, 2]) {
      await http('POST', `/v1/chats/${groupId}/messages`, { content: `unread ${n} ${stamp}` }, tok[101]);
    }
    const badge = (u) => chatItem(u.page, group).locator('.badge');
    await waitText(badge(b2), /^2$/);
    await waitText(badge(b), /^2$/);
    // The WebSocket device opens the group and reads; the long-poll device's badge clears.
    await chatItem(b.page, group).click();
    await b.page.locator('.msg').filter({ hasText: `unread 2 ${stamp}` }).waitFor();
    await badge(b2).waitFor({ state: 'detached', timeout: 8000 });
    await shot(b2, 'e03-badge-cleared');
  });

  await step('removing a member takes the group out of their list live', async () => {
    const r = await fetch(`${BASE}/v1/chats/${groupId}/members/103`, { method: 'DELETE', headers: { Authorization: `Bearer ${tok[101]}` } });
    if (r.status !== 204) throw new Error(`DELETE: ${r.status}`);
    await chatItem(c.page, group).waitFor({ state: 'detached' });
    await waitText(a.page.locator('#chat-sub'), /2 members/);
  });

  await step('an open chat the user is removed from stays on screen, read-only', async () => {
    await chatItem(b2.page, group).click();
    const r = await fetch(`${BASE}/v1/chats/${groupId}/members/102`, { method: 'DELETE', headers: { Authorization: `Bearer ${tok[101]}` } });
    if (r.status !== 204) throw new Error(`DELETE: ${r.status}`);
    await b2.page.locator('#composer-input[disabled]').waitFor();
    await waitText(b2.page.locator('#chat-sub'), /no longer a member/);
    // The other device (WebSocket) has the group open too: read-only there as well.
    await b.page.locator('#composer-input[disabled]').waitFor();
    await shot(b2, 'e04-removed');
  });

  await step('a message sent while the chat\'s first page is loading keeps its bubble and its tick', async () => {
    // The race CI hit: the first history page is read before the send commits and reaches the
    // browser after the ack. The page is held in the browser until the server has the message.
    // A new chat every run: with earlier messages the client's catch-up sync after the page
    // hides the race, so it must be a chat whose first page is empty.
    const title = `Loading ${stamp}`;
    const chat = await http('POST', '/v1/chats', { type: 'group', title, members: [101] }, tok[104]);
    await chatItem(a.page, title).waitFor();
    let release;
    const released = new Promise((r) => { release = r; });
    let held = null;
    const heldSeen = new Promise((r) => { held = r; });
    const isFirstPage = (url) => url.pathname === `/v1/chats/${chat.chat_id}/messages` && url.searchParams.get('limit') === '50' && !url.searchParams.has('before_seq');
    await a.page.route(isFirstPage, async (route) => {
      const response = await route.fetch(); // read now: the message is not there yet
      held();
      await released;
      await route.fulfill({ response });
    });
    try {
      await chatItem(a.page, title).click();
      await heldSeen;
      const text = `sent while loading ${stamp}`;
      await a.page.locator('#composer-input').fill(text);
      await a.page.locator('#composer-input').press('Enter');
      // Wait until the server has committed it (so the ack is on its way or in), then let the
      // stale page through.
      const deadline = Date.now() + 10000;
      for (;;) {
        const page = await http('GET', `/v1/chats/${chat.chat_id}/messages?limit=5`, undefined, tok[104]);
        if ((page.messages || []).some((m) => m.content === text)) break;
        if (Date.now() > deadline) throw new Error('the server never stored the message');
        await new Promise((r) => setTimeout(r, 100));
      }
      await new Promise((r) => setTimeout(r, 300));
      release();
      const mine = a.page.locator('.msg.mine').filter({ hasText: text });
      await mine.locator('.ticks:not([data-status=pending])').waitFor({ timeout: 8000 });
      if ((await mine.count()) !== 1) throw new Error(`${await mine.count()} bubbles for one message`);
    } finally {
      release();
      await a.page.unroute(isFirstPage);
    }
  });

  await step('no dialogs (no injected script) and no page errors', async () => {
    if (dialogs.length) throw new Error(dialogs.join('\n'));
    const all = [a, b, b2, c].filter(Boolean).flatMap((u) => u.errors.map((e) => `${u.label}: ${e}`))
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
