// Connection resilience of the Tern web client, against a server this script starts itself
// (short heartbeat) and stops/restarts:
//   heartbeats keep an idle WebSocket alive; a dead link (no close) is detected and replaced;
//   a draining server's `reconnect` frame is honoured; a message sent while the server is down
//   waits as a pending bubble and goes out (once) after the restart; long-poll sessions recover;
//   repeated WebSocket failures fall back to long-poll; a clean close shows "last seen".
//
//   cd chat-server/web/test && npm install && node resilience.mjs
//
// Environment: TERN_SERVER_BIN (default: target/debug/chat-server, else target/release/…),
// TERN_RESILIENCE_PORT (default 18091), TERN_SHOTS, CHROMIUM, HEADFUL (as smoke.mjs).

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { harness, WEB_DIR } from './lib.mjs';

const PORT = Number(process.env.TERN_RESILIENCE_PORT || 18091);
const HEARTBEAT_S = 2;
const root = join(WEB_DIR, '..', '..');
const BIN = process.env.TERN_SERVER_BIN
  || [join(root, 'target/debug/chat-server'), join(root, 'target/release/chat-server')].find(existsSync);
const dataDir = mkdtempSync(join(tmpdir(), 'tern-resilience-data-'));

const H = harness({ base: `http://127.0.0.1:${PORT}`, localWeb: true });
const { step, newUser, shot, devSignIn, http, chatItem, waitText } = H;

let server = null;

async function startServer() {
  const args = ['--listen', `127.0.0.1:${PORT}`, '--data-dir', dataDir, '--dev-auth',
    '--heartbeat-interval', String(HEARTBEAT_S), '--reconnect-jitter-ms', '300', '--drain-timeout', '3',
    '--receipt-flush-ms', '100', '--log', 'warn'];
  const p = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  server = p;
  let err = '';
  p.stderr.on('data', (d) => { err += d; });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start: ${err}`)), 20000);
    p.stdout.on('data', (d) => {
      if (String(d).includes('listening on')) {
        clearTimeout(timer);
        resolve();
      }
    });
    p.on('exit', (code) => reject(new Error(`server exited (${code}): ${err}`)));
  });
  return p;
}

async function stopServer(signal = 'SIGTERM') {
  const p = server;
  if (!p || p.exitCode !== null) return;
  const exited = new Promise((r) => p.on('exit', r));
  p.kill(signal);
  await exited;
  server = null;
}

const hellos = (u) => u.page.evaluate(() => window.tern.conn.hellos);
const frameTypes = (u) => u.page.evaluate(() => window.tern.frames.map(([, f]) => f.type));

async function main() {
  if (!BIN) throw new Error('no chat-server binary: build it or set TERN_SERVER_BIN');
  await startServer();
  await H.startProxy();
  console.log(`server ${BIN} on ${H.BASE} (heartbeat ${HEARTBEAT_S} s); browsers use ${H.appUrl}`);
  let a;
  let b;
  let c;
  let direct;
  let group;
  const { token: t1 } = await http('POST', '/v1/dev/token', { user_id: 1 });

  await step('setup: users 1, 2 on WebSocket, user 3 on long-poll, a direct chat and a group', async () => {
    direct = await http('POST', '/v1/chats', { type: 'direct', members: [2] }, t1);
    group = await http('POST', '/v1/chats', { type: 'group', title: 'Resilience', members: [2, 3] }, t1);
    await http('POST', `/v1/chats/${group.chat_id}/messages`, { content: 'first' }, t1);
    a = await newUser('u1');
    b = await newUser('u2');
    c = await newUser('u3', { query: '?transport=longpoll' });
    await devSignIn(a, 1);
    await devSignIn(b, 2);
    await devSignIn(c, 3);
    await a.page.locator('#conn-state[data-state=connected]').waitFor();
    await b.page.locator('#conn-state[data-state=connected]').waitFor();
    await c.page.locator('#conn-state[data-state=longpoll]').waitFor();
    await chatItem(a.page, 'User 2').click();
    await chatItem(b.page, 'User 1').click();
    await chatItem(c.page, 'Resilience').click();
    await c.page.locator('.msg').filter({ hasText: 'first' }).waitFor();
  });

  await step(`heartbeat: idle connections survive ${3 * HEARTBEAT_S + 1} s (pings answered, no reconnect)`, async () => {
    await a.page.waitForTimeout((3 * HEARTBEAT_S + 1) * 1000);
    for (const u of [a, b]) {
      if ((await hellos(u)) !== 1) throw new Error(`${u.label} reconnected (hellos ${await hellos(u)})`);
      const pongs = (await frameTypes(u)).filter((t) => t === 'pong').length;
      if (pongs < 2) throw new Error(`${u.label}: ${pongs} pongs`);
    }
    if ((await hellos(c)) !== 1) throw new Error('long-poll session was replaced');
    await a.page.locator('#conn-state[data-state=connected]').waitFor();
  });

  await step('dead link: a WebSocket that goes silent (no close) is detected and replaced', async () => {
    const n = H.freezeWebSockets();
    if (n < 2) throw new Error(`only ${n} WebSockets to freeze`);
    await a.page.waitForFunction(() => window.tern.conn.hellos >= 2, null, { timeout: 4 * HEARTBEAT_S * 1000 + 5000 });
    await a.page.locator('#conn-state[data-state=connected]').waitFor();
    // And it still works: a message goes both ways.
    await a.page.locator('#composer-input').fill('after the dead link');
    await a.page.keyboard.press('Enter');
    await b.page.locator('.msg').filter({ hasText: 'after the dead link' }).waitFor();
  });

  await step('drain: SIGTERM sends `reconnect`; the client shows it is reconnecting', async () => {
    await stopServer('SIGTERM');
    for (const u of [a, b]) {
      if (!(await frameTypes(u)).includes('reconnect')) throw new Error(`${u.label} got no reconnect frame`);
    }
    await a.page.locator('#conn-state[data-state=reconnecting]').waitFor();
    await waitText(a.page.locator('#chat-sub'), /connecting/); // not a stale "online"
    await shot(a, 'r1-reconnecting');
  });

  await step('offline send: a pending bubble while the server is down', async () => {
    await a.page.locator('#composer-input').fill('sent while the server was down');
    await a.page.keyboard.press('Enter');
    await a.page.locator('.msg.pending').filter({ hasText: 'sent while the server was down' }).locator('.ticks[data-status=pending]').waitFor();
    await shot(a, 'r2-pending-offline');
  });

  await step('restart: clients reconnect, the pending message is delivered exactly once', async () => {
    await startServer();
    await a.page.locator('#conn-state[data-state=connected]').waitFor({ timeout: 45000 });
    await b.page.locator('#conn-state[data-state=connected]').waitFor({ timeout: 45000 });
    const mine = a.page.locator('.msg.mine').filter({ hasText: 'sent while the server was down' });
    await mine.locator('.ticks:not([data-status=pending])').waitFor();
    await b.page.locator('.msg').filter({ hasText: 'sent while the server was down' }).waitFor();
    const data = await http('GET', `/v1/chats/${direct.chat_id}/messages?limit=50`, undefined, t1);
    const n = data.messages.filter((m) => m.content === 'sent while the server was down').length;
    if (n !== 1) throw new Error(`stored ${n} times`);
    if ((await mine.count()) !== 1) throw new Error('duplicate bubbles');
  });

  await step('long-poll recovers after the restart and gets new messages', async () => {
    await c.page.locator('#conn-state[data-state=longpoll]').waitFor({ timeout: 45000 });
    await http('POST', `/v1/chats/${group.chat_id}/messages`, { content: 'after restart' }, t1);
    await c.page.locator('.msg').filter({ hasText: 'after restart' }).waitFor();
    await c.page.locator('#composer-input').fill('long-poll still sends');
    await c.page.keyboard.press('Enter');
    await c.page.locator('.msg.mine').filter({ hasText: 'long-poll still sends' }).locator('.ticks:not([data-status=pending])').waitFor();
  });

  await step('missed messages: a client that was away catches up by sync', async () => {
    // User 2 closes its page; messages come; a new page signs in and sees them.
    await b.ctx.close();
    await waitText(a.page.locator('#chat-sub'), /last seen/);
    await shot(a, 'r3-last-seen');
    for (let i = 1; i <= 3; i++) await http('POST', `/v1/chats/${direct.chat_id}/messages`, { content: `while away ${i}` }, t1);
    b = await newUser('u2b');
    await devSignIn(b, 2);
    await chatItem(b.page, 'User 1').click();
    await b.page.locator('.msg').filter({ hasText: 'while away 3' }).waitFor();
    await waitText(a.page.locator('#chat-sub'), /^online$/);
  });

  await step('fallback: WebSocket refused three times → long-poll, and messages still flow', async () => {
    H.blockWebSockets = true;
    const d = await newUser('u4');
    await devSignIn(d, 4);
    await d.page.locator('#conn-state[data-state=longpoll]').waitFor({ timeout: 30000 });
    await d.page.locator('#new-chat-btn').click();
    await d.page.locator('#direct-user').fill('1');
    await d.page.locator('#direct-user').press('Enter');
    await d.page.locator('#composer-input').fill('hello over long-poll');
    await d.page.keyboard.press('Enter');
    await a.page.locator('.chat-item').filter({ hasText: 'hello over long-poll' }).waitFor();
    await shot(d, 'r4-fallback-longpoll');
    // Back to a WebSocket once it works again (probe interval shortened for the test).
    await d.page.evaluate(() => localStorage.setItem('tern.wsProbeMs', '1500'));
    await d.page.reload();
  });

  await step('long-poll → WebSocket: the probe promotes a working socket, nothing lost', async () => {
    const d = H.users.find((u) => u.label === 'u4');
    await d.page.locator('#conn-state[data-state=longpoll]').waitFor({ timeout: 30000 });
    H.blockWebSockets = false;
    await d.page.locator('#conn-state[data-state=connected]').waitFor({ timeout: 15000 });
    await chatItem(d.page, 'User 1').click();
    await http('POST', `/v1/chats/${(await d.page.evaluate(() => window.tern.state.openChatId))}/messages`, { content: 'over the promoted socket' }, t1);
    await d.page.locator('.msg').filter({ hasText: 'over the promoted socket' }).waitFor();
  });

  await step('no page errors', async () => {
    const errs = [a, b, c].flatMap((u) => u.errors.map((e) => `${u.label}: ${e}`))
      .filter((e) => !/Failed to load resource|WebSocket connection to/.test(e));
    if (errs.length) throw new Error(errs.join('\n'));
  });
}

let code = 0;
try {
  await main();
} catch (e) {
  H.counts.failed += 1;
  console.log(`FAIL setup: ${e?.stack || e}`);
} finally {
  code = await H.finish();
  await stopServer('SIGKILL').catch(() => {});
  rmSync(dataDir, { recursive: true, force: true });
}
process.exit(code ? 1 : 0);
