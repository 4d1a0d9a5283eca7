// Shared harness of the browser tests (smoke.mjs, resilience.mjs): system Chromium through
// playwright-core, a local proxy that serves the web client from this checkout, screenshots,
// steps that count 'N passed, N failed', and media fixtures made in code.

import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import nodeHttp from 'node:http';
import net from 'node:net';
import zlib from 'node:zlib';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';


export const WEB_DIR = join(dirname(fileURLToPath(import.meta.url)), '..');
export const EXE = process.env.CHROMIUM || '/usr/bin/chromium';
export const T = 15000; // default wait

// ---- media fixtures (served by the proxy; made here, no files) --------------------------------

function crc32(buf) {
  let c = ~0;
  for (const x of buf) {
    c ^= x;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}

function makePng(w, h) {
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(td));
    return Buffer.concat([len, td, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const o = y * (w * 3 + 1) + 1 + x * 3;
      raw[o] = Math.round((255 * x) / w);
      raw[o + 1] = Math.round((255 * y) / h);
      raw[o + 2] = 200;
    }
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr), chunk('IDAT', zlib.deflateSync(raw)), chunk('IEND', Buffer.alloc(0)),
  ]);
}

function makeWav(ms, rate = 8000) {
  const n = Math.round((rate * ms) / 1000);
  const b = Buffer.alloc(44 + n * 2);
  b.write('RIFF', 0); b.writeUInt32LE(36 + n * 2, 4); b.write('WAVE', 8); b.write('fmt ', 12);
  b.writeUInt32LE(16, 16); b.writeUInt16LE(1, 20); b.writeUInt16LE(1, 22); b.writeUInt32LE(rate, 24);
  b.writeUInt32LE(rate * 2, 28); b.writeUInt16LE(2, 32); b.writeUInt16LE(16, 34); b.write('data', 36); b.writeUInt32LE(n * 2, 40);
  for (let i = 0; i < n; i++) b.writeInt16LE(Math.round(8000 * Math.sin((2 * Math.PI * 440 * i) / rate)), 44 + i * 2);
  return b;
}

export const FIXTURES = {
  '/test-media/picture.png': ['image/png', makePng(320, 200)],
  '/test-media/voice.wav': ['audio/wav', makeWav(2300)],
};


/** A test harness against one server. */
export function harness({ base, localWeb, shots } = {}) {
  const h = {};
  const BASE = (base || process.env.TERN_URL || 'http://127.0.0.1:18081').replace(/\/$/, '');
  const LOCAL_WEB = localWeb ?? process.env.TERN_LOCAL_WEB !== '0';
  const SHOTS = shots || process.env.TERN_SHOTS || mkdtempSync(join(tmpdir(), 'tern-web-shots-'));

  mkdirSync(SHOTS, { recursive: true });

  const counts = { passed: 0, failed: 0 };
  const failures = [];

  async function step(name, fn) {
    const t0 = Date.now();
    try {
      await fn();
      counts.passed += 1;
      console.log(`ok   ${name} (${Date.now() - t0} ms)`);
    } catch (e) {
      counts.failed += 1;
      failures.push(name);
      console.log(`FAIL ${name}: ${String(e?.message || e).split('\n').slice(0, 6).join('\n     ')}`);
    }
  }

  const profiles = [];
  const browsers = [];
  const users = [];

  async function newUser(label, { viewport = { width: 1100, height: 720 }, query = '', fakeMedia = false } = {}) {
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
    if (fakeMedia) {
      // The server has no media API yet: answer POST /v1/media in the browser so the client's
      // upload path runs (the server then refuses the unknown media_id with an error frame).
      await ctx.route((url) => url.pathname === '/v1/media', (route) => {
        const req = route.request();
        if (req.method() !== 'POST') return route.fulfill({ status: 405, body: '' });
        const size = req.postDataBuffer()?.length || 0;
        return route.fulfill({
          status: 201,
          contentType: 'application/json',
          body: JSON.stringify({ media_id: `fake-${Date.now()}`, url: '/test-media/picture.png', content_type: req.headers()['content-type'], size, width: 320, height: 200 }),
        });
      });
    }
    const page = ctx.pages()[0] || (await ctx.newPage());
    page.setDefaultTimeout(T);
    const errors = [];
    page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push(`console: ${m.text()}`);
    });
    await page.goto(`${h.appUrl}/${query}`);
    const user = { label, ctx, page, errors };
  users.push(user);
  return user;
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

  /** The chat list entry whose title is exactly `title`. */
  function chatItem(page, title) {
    const re = new RegExp(`^${title.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`);
    return page.locator('.chat-item').filter({ has: page.locator('.chat-name', { hasText: re }) }).first();
  }

  async function waitText(locator, re, timeout = T) {
    await locator.filter({ hasText: re }).first().waitFor({ timeout });
  }



    // ---- local proxy: web files from disk, the rest to the server

  let proxyServer = null;
  const wsPairs = new Set(); // [client socket, server socket] of proxied WebSockets

  /** Fault injection: live WebSockets stop carrying data either way (a dead link, no close). */
  function freezeWebSockets() {
    for (const [client, server] of wsPairs) {
      client.unpipe(server);
      server.unpipe(client);
      client.pause();
      server.pause();
    }
    return wsPairs.size;
  }

  async function startProxy() {
    const target = new URL(BASE);
    const files = {
      '/': ['index.html', 'text/html; charset=utf-8'],
      '/index.html': ['index.html', 'text/html; charset=utf-8'],
      '/app.js': ['app.js', 'text/javascript; charset=utf-8'],
      '/app.css': ['app.css', 'text/css; charset=utf-8'],
      '/sw.js': ['sw.js', 'text/javascript; charset=utf-8'],
    };
    proxyServer = nodeHttp.createServer((req, res) => {
      const path = req.url.split('?')[0];
      if (path in FIXTURES) {
        const [type, body] = FIXTURES[path];
        res.writeHead(200, { 'Content-Type': type, 'Content-Length': body.length });
        res.end(body);
        return;
      }
      if (req.method === 'GET' && files[path]) {
        const [file, type] = files[path];
        res.writeHead(200, { 'Content-Type': type, 'Cache-Control': 'no-store' });
        res.end(readFileSync(join(WEB_DIR, file)));
        return;
      }
      const up = nodeHttp.request({
        host: target.hostname, port: target.port || 80, method: req.method, path: req.url,
        headers: { ...req.headers, host: target.host },
      }, (r) => {
        res.writeHead(r.statusCode, r.headers);
        r.pipe(res);
      });
      up.on('error', (e) => { res.writeHead(502); res.end(String(e)); });
      res.on('close', () => { if (!res.writableFinished) up.destroy(); });
      req.pipe(up);
    });
    proxyServer.on('upgrade', (req, socket, head) => {
      if (h.blockWebSockets) {
        // Fault injection: refuse WebSocket upgrades (HTTP keeps working).
        socket.end('HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n');
        return;
      }
      const up = net.connect(Number(target.port || 80), target.hostname, () => {
        wsPairs.add([socket, up]);
        const forget = () => wsPairs.forEach((p) => { if (p[0] === socket) wsPairs.delete(p); });
        socket.on('close', forget);
        const lines = [`${req.method} ${req.url} HTTP/1.1`];
        for (let i = 0; i < req.rawHeaders.length; i += 2) {
          const k = req.rawHeaders[i];
          lines.push(`${k}: ${k.toLowerCase() === 'host' ? target.host : req.rawHeaders[i + 1]}`);
        }
        up.write(`${lines.join('\r\n')}\r\n\r\n`);
        if (head?.length) up.write(head);
        up.pipe(socket);
        socket.pipe(up);
      });
      up.on('error', () => socket.destroy());
      socket.on('error', () => up.destroy());
    });
    await new Promise((r) => proxyServer.listen(0, '127.0.0.1', r));
    h.appUrl = `http://127.0.0.1:${proxyServer.address().port}`;
  }


  async function finish() {
    for (const b of browsers) await b.close().catch(() => {});
    for (const d of profiles) rmSync(d, { recursive: true, force: true });
    proxyServer?.closeAllConnections?.();
    proxyServer?.close();
    console.log(`screenshots: ${SHOTS}`);
    if (failures.length) console.log(`failed: ${failures.join('; ')}`);
    console.log(`${counts.passed} passed, ${counts.failed} failed`);
    return counts.failed;
  }

  Object.assign(h, { users, blockWebSockets: false, freezeWebSockets, BASE, LOCAL_WEB, SHOTS, appUrl: BASE, counts, step, newUser, shot, devSignIn, http, chatItem, waitText, startProxy, finish });
  return h;
}
