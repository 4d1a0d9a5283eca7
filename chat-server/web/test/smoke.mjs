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
//   TERN_LOCAL_WEB  1 (default): serve index.html/app.js/app.css from this checkout instead of the
//                   copies embedded in the server binary (so the test checks the files on disk);
//                   0: test what the server serves.
//   TERN_SHOTS      directory for screenshots (default: a new temp dir, printed at the end)
//   CHROMIUM        browser path (default /usr/bin/chromium)
//   HEADFUL=1       show the browsers

import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const BASE = (process.env.TERN_URL || 'http://127.0.0.1:18081').replace(/\/$/, '');
const LOCAL_WEB = process.env.TERN_LOCAL_WEB !== '0';
const WEB_DIR = join(dirname(fileURLToPath(import.meta.url)), '..');
const SHOTS = process.env.TERN_SHOTS || mkdtempSync(join(tmpdir(), 'tern-web-shots-'));
const EXE = process.env.CHROMIUM || '/usr/bin/chromium';
const T = 15000; // default wait

mkdirSync(SHOTS, { recursive: true });

let passed = 0;
let failed = 0;
const failures = [];

async function step(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    passed += 1;
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failed += 1;
    failures.push(name);
    console.log(`FAIL ${name}: ${String(e?.message || e).split('\n').slice(0, 6).join('\n     ')}`);
  }
}

const profiles = [];
const browsers = [];

async function newUser(label, { viewport = { width: 1100, height: 720 }, query = '' } = {}) {
  const dir = mkdtempSync(join(tmpdir(), `tern-web-profile-${label}-`));
  profiles.push(dir);
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: EXE,
    headless: !process.env.HEADFUL,
    viewport,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ].filter((a) => a !== '--headless' || !process.env.HEADFUL),
  });
  browsers.push(ctx);
  if (LOCAL_WEB) {
    const files = {
      '/': ['index.html', 'text/html; charset=utf-8'],
      '/index.html': ['index.html', 'text/html; charset=utf-8'],
      '/app.js': ['app.js', 'text/javascript; charset=utf-8'],
      '/app.css': ['app.css', 'text/css; charset=utf-8'],
    };
    await ctx.route((url) => url.origin === new URL(BASE).origin && url.pathname in files, (route) => {
      const [file, type] = files[new URL(route.request().url()).pathname];
      return route.fulfill({ status: 200, contentType: type, body: readFileSync(join(WEB_DIR, file)) });
    });
  }
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.setDefaultTimeout(T);
  const errors = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`console: ${m.text()}`);
  });
  await page.goto(`${BASE}/${query}`);
  return { label, ctx, page, errors };
}

async function shot(u, name) {
  const path = join(SHOTS, `${name}.png`);
  await u.page.screenshot({ path });
  return path;
}

async function devSignIn(u, id) {
  await u.page.locator('#dev-user').fill(String(id));
  await u.page.locator('#dev-form button[type=submit]').click();
  await u.page.locator('#app').waitFor({ state: 'visible' });
}

async function http(method, path, body, token) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(`${BASE}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

async function waitText(locator, re, timeout = T) {
  await locator.filter({ hasText: re }).first().waitFor({ timeout });
}

async function main() {
  const health = await fetch(`${BASE}/healthz`).then((r) => r.ok, () => false);
  if (!health) {
    console.log(`no server at ${BASE} (GET /healthz failed); start one with --dev-auth`);
    console.log('0 passed, 1 failed');
    process.exit(1);
  }
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
    const item = b.page.locator('.chat-item').filter({ hasText: 'User 1' }).first();
    await item.waitFor();
    await item.locator('.badge').waitFor();
    await waitText(item.locator('.chat-preview'), new RegExp(stamp));
    await shot(b, '03-user2-list-unread');
  });

  await step('user 2 opens the chat and sees the message', async () => {
    await b.page.locator('.chat-item').filter({ hasText: 'User 1' }).first().click();
    await b.page.locator('.msg:not(.mine)').filter({ hasText: text1 }).last().waitFor();
    await waitText(b.page.locator('#chat-sub'), /^online$/);
    // The badge goes once read.
    await b.page.locator('.chat-item[aria-current=true] .badge').waitFor({ state: 'detached' });
    await shot(b, '04-user2-chat');
  });

  await step('read ticks turn to read (blue) for user 1', async () => {
    const ticks = a.page.locator('.msg.mine').filter({ hasText: stamp }).last().locator('.ticks[data-status=read]');
    await ticks.waitFor({ timeout: 10000 });
    const color = await ticks.evaluate((el) => getComputedStyle(el).color);
    const rgb = color.match(/\d+/g).map(Number);
    if (!(rgb[2] > rgb[0] + 60)) throw new Error(`read ticks are not blue: ${color}`);
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
    c = await newUser('u3', { query: '?transport=longpoll' });
    await devSignIn(c, 3);
    await c.page.locator('#conn-state[data-state=longpoll]').waitFor();
    const item = c.page.locator('.chat-item').filter({ hasText: groupTitle });
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

  await step('the group header counts online members', async () => {
    await waitText(a.page.locator('#chat-sub'), /3 members, 2 online/);
  });

  await step('reconnect: user 2 loses the WebSocket, misses a message, and catches up', async () => {
    await b.page.locator('.chat-item').filter({ hasText: 'User 1' }).first().click();
    // Kill the socket from inside the page (as a network drop would).
    await b.page.evaluate(() => window.tern.conn.ws.close());
    await b.page.locator('#conn-state:not([data-state=connected])').waitFor();
    await a.page.locator('.chat-item').filter({ hasText: 'User 2' }).first().click();
    await a.page.locator('#composer-input').fill(`while you were away ${stamp}`);
    await a.page.keyboard.press('Enter');
    await b.page.locator('#conn-state[data-state=connected]').waitFor({ timeout: 20000 });
    await b.page.locator('.msg').filter({ hasText: `while you were away ${stamp}` }).waitFor();
  });

  await step('an error frame (removed from a group) marks the bubble failed with Retry', async () => {
    // User 1 (over HTTP) makes a group with user 2, posts in it, then removes user 2, whose
    // client still shows the chat: its next send is refused with an error frame.
    const { token } = await http('POST', '/v1/dev/token', { user_id: 1 });
    const g = await http('POST', '/v1/chats', { type: 'group', title: `Soon gone ${stamp}`, members: [2] }, token);
    await http('POST', `/v1/chats/${g.chat_id}/messages`, { content: `you will be removed ${stamp}` }, token);
    const item = b.page.locator('.chat-item').filter({ hasText: `Soon gone ${stamp}` });
    await item.waitFor();
    await item.click();
    await b.page.locator('.msg').filter({ hasText: `you will be removed ${stamp}` }).waitFor();
    await http('DELETE', `/v1/chats/${g.chat_id}/members/2`, undefined, token);
    await b.page.locator('#composer-input').fill('this must fail');
    await b.page.keyboard.press('Enter');
    await b.page.locator('.msg.failed .fail-row').waitFor();
    await b.page.locator('.msg.failed .retry').waitFor();
    await shot(b, '10-user2-failed');
    await b.page.locator('.msg.failed .discard').click();
    await b.page.locator('.msg.failed').waitFor({ state: 'detached' });
  });

  await step('narrow screen: one pane at a time with a back button', async () => {
    await b.page.setViewportSize({ width: 390, height: 760 });
    await b.page.evaluate(() => { location.hash = ''; });
    await b.page.locator('.chat-item').filter({ hasText: 'User 1' }).first().click();
    await b.page.locator('#back-btn').waitFor({ state: 'visible' });
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
  failed += 1;
  console.log(`FAIL setup: ${e?.stack || e}`);
} finally {
  for (const b of browsers) await b.close().catch(() => {});
  for (const d of profiles) rmSync(d, { recursive: true, force: true });
  console.log(`screenshots: ${SHOTS}`);
  if (failures.length) console.log(`failed: ${failures.join('; ')}`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}
