// Media and new-user polish of the Tern web client, against a server this script starts:
//   no console errors on load (the old `GET /v1/media` → 405 is gone; the picker is filtered
//   to the server's accept list); going offline (playwright's context.setOffline) shows the
//   offline banner within 2 s; a video made by ffmpeg here is shown with the poster the server
//   made; a voice note's waveform is drawn from its peaks; read ticks carry a "Read" label.
//
//   cd chat-server/web/test && npm install && node media.mjs
//
// Needs ffmpeg (Debian's package) and Chromium. Environment: TERN_SERVER_BIN (default
// target/debug/chat-server, else target/release/…), TERN_MEDIA_PORT (default 18093),
// TERN_SHOTS, CHROMIUM, HEADFUL (as smoke.mjs).

import { spawn, execFileSync } from 'node:child_process';
import { createECDH, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { harness, WEB_DIR } from './lib.mjs';

const PORT = Number(process.env.TERN_MEDIA_PORT || 18093);
const root = join(WEB_DIR, '..', '..');
const BIN = process.env.TERN_SERVER_BIN
  || [join(root, 'target/debug/chat-server'), join(root, 'target/release/chat-server')].find(existsSync);
const dataDir = mkdtempSync(join(tmpdir(), 'tern-media-data-'));

const H = harness({ base: `http://127.0.0.1:${PORT}`, localWeb: true });
const { step, newUser, shot, devSignIn, http, chatItem } = H;

let server = null;

async function startServer() {
  const args = ['--listen', `127.0.0.1:${PORT}`, '--data-dir', dataDir, '--dev-auth',
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
}

/** A file made by ffmpeg (args without the output), as bytes. */
function ffmpeg(name, args) {
  const out = join(dataDir, name);
  execFileSync('ffmpeg', ['-nostdin', '-hide_banner', '-loglevel', 'error', '-y', ...args, out]);
  return readFileSync(out);
}

async function upload(token, type, bytes) {
  const res = await fetch(`${H.BASE}/v1/media`, {
    method: 'POST', headers: { Authorization: `Bearer ${token}`, 'Content-Type': type }, body: bytes,
  });
  const body = await res.json();
  if (res.status !== 201) throw new Error(`upload ${type}: ${res.status} ${JSON.stringify(body)}`);
  return body;
}

async function settled(token, id) {
  const t0 = Date.now();
  for (;;) {
    const info = await http('GET', `/v1/media/${id}/info`, undefined, token);
    if (!info.processing) return info;
    if (Date.now() - t0 > 120000) throw new Error(`still processing: ${JSON.stringify(info)}`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

async function main() {
  if (!BIN) throw new Error('no chat-server binary: build it or set TERN_SERVER_BIN');
  try {
    execFileSync('ffmpeg', ['-version'], { stdio: 'ignore' });
  } catch {
    throw new Error('ffmpeg is needed (apt-get install -y ffmpeg)');
  }
  await startServer();
  await H.startProxy();
  console.log(`server ${BIN} on ${H.BASE}; browsers use ${H.appUrl}`);
  const { token: t1 } = await http('POST', '/v1/dev/token', { user_id: 1 });
  const { token: t2 } = await http('POST', '/v1/dev/token', { user_id: 2 });
  let a;
  let b;
  let chat;

  await step('setup: a direct chat with a video (poster made by the server) and a voice note', async () => {
    chat = await http('POST', '/v1/chats', { type: 'direct', members: [2] }, t1);
    const video = ffmpeg('v.mp4', ['-f', 'lavfi', '-i', 'testsrc2=size=1280x720:rate=25:duration=2',
      '-f', 'lavfi', '-i', 'sine=frequency=440:duration=2', '-vf', 'noise=alls=30:allf=t',
      '-c:v', 'libx264', '-preset', 'ultrafast', '-pix_fmt', 'yuv420p', '-c:a', 'aac', '-shortest',
      '-movflags', '+faststart']);
    const v = await upload(t1, 'video/mp4', video);
    const info = await settled(t1, v.media_id);
    if (!info.poster) throw new Error(`no poster: ${JSON.stringify(info)}`);
    await http('POST', `/v1/chats/${chat.chat_id}/messages`, { content: '', media_id: v.media_id }, t1);
    const voice = ffmpeg('n.ogg', ['-f', 'lavfi', '-i', 'sine=frequency=300:duration=2',
      '-af', "volume='t/2':eval=frame", '-c:a', 'libopus']);
    const n = await upload(t1, 'audio/ogg', voice);
    if (!Array.isArray(n.peaks)) throw new Error(`no peaks: ${JSON.stringify(n)}`);
    await http('POST', `/v1/chats/${chat.chat_id}/messages`, { content: '', media_id: n.media_id }, t1);
    await http('POST', `/v1/chats/${chat.chat_id}/messages`, { content: 'read me' }, t1);
  });

  await step('sign in: no console errors on load; the picker takes what the server accepts', async () => {
    a = await newUser('u1');
    b = await newUser('u2');
    await devSignIn(a, 1);
    await devSignIn(b, 2);
    await a.page.locator('#conn-state[data-state=connected]').waitFor();
    await b.page.locator('#conn-state[data-state=connected]').waitFor();
    await a.page.waitForFunction(() => document.getElementById('file-input').accept.includes('video/mp4'));
    await a.page.waitForTimeout(500);
    const errs = [a, b].flatMap((u) => u.errors.map((e) => `${u.label}: ${e}`));
    if (errs.length) throw new Error(errs.join('\n'));
  });

  await step('a video message shows the poster the server made', async () => {
    await chatItem(b.page, 'User 1').click();
    const video = b.page.locator('.msg video').first();
    await video.waitFor();
    const poster = await video.getAttribute('poster');
    if (!poster || !poster.includes('variant=poster')) throw new Error(`poster attribute: ${poster}`);
    const ok = await b.page.evaluate(async (src) => {
      const img = new Image();
      img.src = src;
      await img.decode();
      return img.naturalWidth === 1280 && img.naturalHeight === 720;
    }, poster);
    if (!ok) throw new Error('the poster does not load as a 1280x720 image');
    await shot(b, 'media-video');
  });

  await step('a voice note shows its waveform from the peaks, and its length once', async () => {
    const wave = b.page.locator('.msg .audio svg.wave');
    await wave.waitFor();
    const bars = await wave.locator('rect').count();
    if (bars !== 64) throw new Error(`${bars} bars`);
    if (await b.page.locator('.msg .audio .dur').count()) throw new Error('a second length label');
  });

  await step('read ticks differ from delivered by more than colour (a "Read" label)', async () => {
    await chatItem(a.page, 'User 2').click();
    await a.page.locator('.msg .ticks[data-status=read] .ticks-label').first().waitFor();
  });

  await step('going offline shows the banner within 2 s', async () => {
    const t0 = Date.now();
    await a.ctx.setOffline(true);
    await a.page.locator('#conn-state[data-state=offline]').waitFor({ timeout: 2000 });
    console.log(`     offline banner after ${Date.now() - t0} ms`);
    await shot(a, 'media-offline');
    await a.ctx.setOffline(false);
    await a.page.locator('#conn-state[data-state=connected]').waitFor({ timeout: 15000 });
  });

  await step('Web Push opt-in: the bell subscribes with the server key and registers the device; again turns it off', async () => {
    // The browser's push service (FCM for Chromium) is outside this machine: PushManager is
    // replaced by a stand-in that returns a subscription with a real P-256 key, so everything
    // of ours runs for real — the service worker served by the server, the permission, the
    // server's VAPID key, POST /v1/devices with the subscription, DELETE on turning it off.
    const ecdh = createECDH('prime256v1');
    ecdh.generateKeys();
    const keys = { p256dh: ecdh.getPublicKey().toString('base64url'), auth: randomBytes(16).toString('base64url') };
    await a.ctx.grantPermissions(['notifications'], { origin: H.appUrl });
    await a.ctx.addInitScript((k) => {
      let current = null;
      window.__pushKey = null;
      PushManager.prototype.subscribe = async function subscribe(opts) {
        window.__pushKey = opts && opts.applicationServerKey ? opts.applicationServerKey.byteLength : null;
        const endpoint = `https://push.example.test/send/${Math.random().toString(36).slice(2)}`;
        current = { endpoint, expirationTime: null, keys: k, toJSON() { return { endpoint, expirationTime: null, keys: k }; }, async unsubscribe() { current = null; return true; } };
        return current;
      };
      PushManager.prototype.getSubscription = async function getSubscription() { return current; };
    }, keys);
    await a.page.reload();
    await a.page.locator('#conn-state[data-state=connected]').waitFor();
    const bell = a.page.locator('#push-btn');
    await bell.waitFor({ state: 'visible' });
    if ((await bell.getAttribute('aria-pressed')) !== 'false') throw new Error('the bell starts on');
    await bell.click();
    await a.page.locator('#push-btn[aria-pressed=true]').waitFor();
    if ((await a.page.evaluate(() => window.__pushKey)) !== 65) throw new Error('subscribe was not given the 65-byte server key');
    const sw = await a.page.evaluate(async () => (await navigator.serviceWorker.ready).active?.scriptURL);
    if (!/\/sw\.js$/.test(sw || '')) throw new Error(`service worker: ${sw}`);
    const token = await a.page.evaluate(() => localStorage.getItem('tern.token'));
    let devices = (await http('GET', '/v1/devices', undefined, token)).devices;
    const web = devices.filter((d) => d.platform === 'web');
    if (web.length !== 1 || !web[0].token.startsWith('https://push.example.test/send/')) throw new Error(`devices: ${JSON.stringify(devices)}`);
    await shot(a, 'media-push-on');
    await bell.click();
    await a.page.locator('#push-btn[aria-pressed=false]').waitFor();
    devices = (await http('GET', '/v1/devices', undefined, token)).devices;
    if (devices.some((d) => d.platform === 'web')) throw new Error(`still registered: ${JSON.stringify(devices)}`);
  });

  await step('no page errors', async () => {
    const errs = [a, b].flatMap((u) => u.errors.map((e) => `${u.label}: ${e}`))
      .filter((e) => !/WebSocket connection to|ERR_INTERNET_DISCONNECTED/.test(e));
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
  if (server && server.exitCode === null) server.kill('SIGKILL');
  rmSync(dataDir, { recursive: true, force: true });
}
process.exit(code ? 1 : 0);
