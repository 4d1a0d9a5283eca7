// Tern web client: plain ES module, no build step, no dependencies.
// Protocol: PROTOCOL.md (WebSocket /ws, long-poll /v1/poll + /v1/frames, HTTP API /v1).
// All user-provided text goes into the DOM through textContent / attributes, never innerHTML.

'use strict';

// ---- small helpers -----------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
const SVG_NS = 'http://www.w3.org/2000/svg';

/** Create an element. props: attributes / properties / on* handlers; children: nodes or strings. */
function h(tag, props, ...children) {
  const el = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k in el && typeof v !== 'string') el[k] = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => Date.now();

const LS_TOKEN = 'tern.token';
const LS_TRANSPORT = 'tern.transport'; // "longpoll" forces the long-poll transport
// localStorage 'tern.wsProbeMs': how often long-poll mode tries a WebSocket again (default 60 s).

function decodeJwtSub(token) {
  try {
    const part = token.split('.')[1];
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '='));
    const sub = Number(JSON.parse(json).sub);
    return Number.isSafeInteger(sub) && sub > 0 ? sub : null;
  } catch {
    return null;
  }
}

function parseIds(text) {
  const ids = [];
  for (const part of String(text).split(/[^0-9]+/)) {
    if (!part) continue;
    const n = Number(part);
    if (Number.isSafeInteger(n) && n > 0 && !ids.includes(n)) ids.push(n);
  }
  return ids;
}

// ---- time formatting (local time) --------------------------------------------------------

const fmtTime = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const fmtFull = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });
const fmtDay = new Intl.DateTimeFormat(undefined, { weekday: 'long', day: 'numeric', month: 'long' });
const fmtDayYear = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'long', year: 'numeric' });
const fmtShortDate = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short' });

function parseTs(ts) {
  if (ts == null) return null;
  const t = typeof ts === 'number' ? ts : Date.parse(ts);
  return Number.isFinite(t) ? t : null;
}

function isSameDay(a, b) {
  return a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();
}

function dayLabel(ms) {
  const d = new Date(ms);
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (isSameDay(d, today)) return 'Today';
  if (isSameDay(d, yesterday)) return 'Yesterday';
  return d.getFullYear() === today.getFullYear() ? fmtDay.format(d) : fmtDayYear.format(d);
}

function listTime(ms) {
  if (!ms) return '';
  const d = new Date(ms);
  const today = new Date();
  if (isSameDay(d, today)) return fmtTime.format(d);
  if (now() - ms < 6 * 86400e3) return d.toLocaleDateString(undefined, { weekday: 'short' });
  return fmtShortDate.format(d);
}

function lastSeenText(p) {
  if (!p) return '';
  if (p.status === 'online') return 'online';
  const t = parseTs(p.last_seen);
  if (!t) return 'offline';
  const ago = now() - t;
  if (ago < 60e3) return 'last seen just now';
  if (ago < 3600e3) {
    const m = Math.floor(ago / 60e3);
    return `last seen ${m} minute${m === 1 ? '' : 's'} ago`;
  }
  const d = new Date(t);
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (isSameDay(d, today)) return `last seen today at ${fmtTime.format(d)}`;
  if (isSameDay(d, yesterday)) return `last seen yesterday at ${fmtTime.format(d)}`;
  return `last seen ${fmtShortDate.format(d)} at ${fmtTime.format(d)}`;
}

function fmtDuration(ms) {
  if (!Number.isFinite(ms) || ms < 0) return '';
  const s = Math.round(ms / 1000);
  const m = Math.floor(s / 60);
  const hh = Math.floor(m / 60);
  const ss = String(s % 60).padStart(2, '0');
  return hh ? `${hh}:${String(m % 60).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

function fmtSize(n) {
  if (!Number.isFinite(n)) return '';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MB`;
  return `${(n / 1024 ** 3).toFixed(1)} GB`;
}

// ---- state -------------------------------------------------------------------------------

const S = {
  token: null,
  me: null,
  chats: new Map(), // chat_id -> Chat
  logs: new Map(), // chat_id -> Log (messages this client holds)
  openChatId: null,
  presence: new Map(), // user_id -> {status, last_seen}
  subscribed: new Set(), // user ids we asked presence for
  typing: new Map(), // chat_id -> Map(user_id -> expires_at)
  mediaSupported: null, // null unknown, true, false
  filter: '',
  names: new Map(), // user_id -> display name (from hello and member objects); shown via textContent only
};

/** A chat as the client tracks it. */
function chatRecord(c) {
  return {
    chat_id: c.chat_id,
    type: c.type,
    title: c.title ?? null,
    created_at: parseTs(c.created_at),
    last_seq: c.last_seq ?? 0,
    read_seq: c.read_seq ?? 0,
    unread: c.unread ?? 0,
    members: learnNames(c.members) ?? null, // [{user_id, role, joined_at, name?}]
    marks: new Map(), // user_id -> {user_id, delivered_seq, read_seq}
    marksLoaded: false,
    liveUnread: new Set(), // seqs of others' messages counted as unread here (not yet in a list answer)
    lastMsg: null,
    previewRequested: false,
    detailsRequested: false,
  };
}

function getLog(chatId) {
  let log = S.logs.get(chatId);
  if (!log) {
    log = {
      bySeq: new Map(), // seq -> message
      ids: new Set(), // message_id
      pending: new Map(), // client_msg_id -> pending send
      loaded: false, // the latest history page was fetched
      loading: false,
      lowest: Infinity, // lowest seq held (contiguous from here to `top`)
      top: 0, // highest seq such that lowest..top are all held
      max: 0, // highest seq held
      hasOlder: false,
      olderLoading: false,
      syncing: null, // {after, at}
    };
    S.logs.set(chatId, log);
  }
  return log;
}

function partnerOf(chat) {
  if (!chat || chat.type !== 'direct') return null;
  if (chat.members) {
    const other = chat.members.find((m) => m.user_id !== S.me);
    if (other) return other.user_id;
  }
  for (const uid of chat.marks.keys()) if (uid !== S.me) return uid;
  return null;
}

/** A user's display name: the name they set (hello, member objects), else "User N". */
function displayName(id) {
  return S.names.get(id) || `User ${id}`;
}

function userName(id) {
  return id === S.me ? 'You' : displayName(id);
}

/** Remember the names carried by member objects (a member without `name` has none). */
function learnNames(members) {
  if (!Array.isArray(members)) return members;
  for (const m of members) {
    if (!Number.isSafeInteger(m?.user_id)) continue;
    if (typeof m.name === 'string' && m.name) S.names.set(m.user_id, m.name);
    else S.names.delete(m.user_id);
  }
  return members;
}

function chatTitle(chat) {
  if (chat.type === 'group') return chat.title || `Group ${chat.chat_id}`;
  const p = partnerOf(chat);
  return p ? displayName(p) : chat.title || `Direct chat ${chat.chat_id}`;
}

function hueOf(n) {
  return (Number(n) * 137) % 360;
}

function avatarFor(chat, el) {
  const node = el || h('span', { class: 'avatar', 'aria-hidden': 'true' });
  node.replaceChildren();
  node.classList.toggle('group', chat.type === 'group');
  let label;
  let seed;
  if (chat.type === 'group') {
    const words = chatTitle(chat).trim().split(/\s+/).filter(Boolean);
    label = words.slice(0, 2).map((w) => Array.from(w)[0]).join('') || '#';
    seed = chat.chat_id;
  } else {
    const p = partnerOf(chat);
    label = p ? String(p).slice(0, 3) : '?';
    seed = p || chat.chat_id;
    if (p && S.presence.get(p)?.status === 'online') node.append(h('span', { class: 'dot', title: 'online' }));
  }
  node.prepend(label);
  node.style.setProperty('--h', hueOf(seed));
  return node;
}

function userAvatar(uid) {
  const el = h('span', { class: 'avatar', 'aria-hidden': 'true' }, String(uid).slice(0, 3));
  el.style.setProperty('--h', hueOf(uid));
  if (S.presence.get(uid)?.status === 'online') el.append(h('span', { class: 'dot' }));
  return el;
}

// ---- toasts ------------------------------------------------------------------------------

function toast(text, { error = false, timeout = 6000 } = {}) {
  // The same text again while it is still shown: do not stack it.
  for (const t of $('toasts').children) if (t.dataset.text === text) return;
  const el = h('div', { class: `toast${error ? ' error' : ''}`, role: error ? 'alert' : 'status' },
    h('span', { class: 'toast-text' }, text),
    h('button', { type: 'button', 'aria-label': 'Dismiss', onclick: () => el.remove() }, '✕'));
  el.dataset.text = text;
  $('toasts').append(el);
  while ($('toasts').children.length > 4) $('toasts').firstChild.remove();
  if (timeout) setTimeout(() => el.remove(), timeout);
}

// ---- HTTP API ----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body, { auth = true, signal } = {}) {
  const headers = {};
  if (auth && S.token) headers.Authorization = `Bearer ${S.token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal, cache: 'no-store' });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', 'The server cannot be reached');
  }
  if (res.status === 204) return null;
  let data = null;
  const text = await res.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const err = data?.error || {};
    const e = new ApiError(res.status, err.code || `http_${res.status}`, err.message || `${res.status} ${res.statusText}`);
    if (res.status === 401 && auth && S.token) signOut('Your session has expired or the token was rejected. Sign in again.');
    throw e;
  }
  return data;
}

// ---- connection: WebSocket with long-poll fallback ---------------------------------------

const conn = {
  mode: 'ws', // 'ws' | 'longpoll'
  state: 'connecting', // connecting | connected | reconnecting | longpoll | offline
  ws: null,
  sessionId: null,
  ready: false, // hello received on the current transport
  stopped: true,
  attempt: 0,
  wsFailures: 0,
  reconnectAfter: null,
  reconnectTimer: null,
  reconnectAt: 0,
  heartbeatMs: 30000,
  hbTimer: null,
  lastRx: 0,
  connectedAt: 0,
  hellos: 0,
  lp: { gen: 0, cursor: null, abort: null, probeTimer: null, chain: Promise.resolve() },
  stateTimer: null,

  start() {
    this.stopped = false;
    this.attempt = 0;
    this.wsFailures = 0;
    const forced = new URLSearchParams(location.search).get('transport') || localStorage.getItem(LS_TRANSPORT);
    if (forced === 'longpoll' || typeof WebSocket === 'undefined') this.startLongPoll();
    else this.connectWs();
  },

  stop() {
    this.stopped = true;
    this.ready = false;
    clearTimeout(this.reconnectTimer);
    this.stopHeartbeat();
    this.stopLongPoll();
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      try { ws.close(1000, 'sign-out'); } catch { /* ignore */ }
    }
  },

  setState(state) {
    this.state = state;
    renderConnState();
    render.header();
  },

  wsUrl() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${proto}//${location.host}/ws?token=${encodeURIComponent(S.token)}`;
  },

  connectWs({ probe = false } = {}) {
    if (this.stopped) return;
    let ws;
    try {
      ws = new WebSocket(this.wsUrl());
    } catch {
      if (!probe) this.onWsGone(false);
      return;
    }
    let gotHello = false;
    if (!probe) {
      this.mode = 'ws';
      this.ws = ws;
      this.ready = false;
      this.setState(this.hellos ? 'reconnecting' : 'connecting');
    }
    const probeTimeout = probe ? setTimeout(() => { if (!gotHello) ws.close(); }, 8000) : null;
    ws.onmessage = (ev) => {
      let f;
      try {
        f = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (this.ws !== ws) {
        // A probe from long-poll mode: promote it on its hello.
        if (probe && !gotHello && f.type === 'hello' && !this.stopped) {
          gotHello = true;
          clearTimeout(probeTimeout);
          this.stopLongPoll();
          this.mode = 'ws';
          this.ws = ws;
          this.wsFailures = 0;
        } else {
          return;
        }
      } else if (f.type === 'hello') {
        gotHello = true;
      }
      this.lastRx = now();
      handleFrame(f);
    };
    ws.onclose = () => {
      clearTimeout(probeTimeout);
      if (this.ws !== ws) return;
      this.ws = null;
      this.onWsGone(gotHello);
    };
    ws.onerror = () => { /* a close event follows */ };
  },

  onWsGone(hadHello) {
    this.ready = false;
    this.stopHeartbeat();
    if (this.stopped) return;
    if (hadHello) {
      // A connection that lived a while resets the backoff.
      if (now() - this.connectedAt > 10000) this.attempt = 0;
    } else {
      this.wsFailures += 1;
    }
    if (this.reconnectAfter != null) {
      const d = this.reconnectAfter;
      this.reconnectAfter = null;
      this.scheduleReconnect(d);
      return;
    }
    if (!hadHello) {
      // Maybe the token is the problem (a refused upgrade looks like any failure here).
      api('GET', '/v1/chats').catch(() => {});
    }
    if (this.wsFailures >= 3) {
      this.startLongPoll();
      return;
    }
    this.scheduleReconnect(this.backoff());
  },

  backoff() {
    const base = Math.min(30000, 1000 * 2 ** this.attempt);
    this.attempt += 1;
    return Math.round(base / 2 + Math.random() * (base / 2));
  },

  scheduleReconnect(delay) {
    clearTimeout(this.reconnectTimer);
    this.reconnectAt = now() + delay;
    this.setState(navigator.onLine === false ? 'offline' : 'reconnecting');
    this.reconnectTimer = setTimeout(() => {
      this.reconnectAt = 0;
      if (this.mode === 'longpoll') this.startLongPoll();
      else this.connectWs();
    }, delay);
  },

  reconnectNow() {
    if (this.stopped || this.ready) return;
    clearTimeout(this.reconnectTimer);
    this.attempt = 0;
    if (this.mode === 'longpoll') this.startLongPoll();
    else if (!this.ws) this.connectWs();
  },

  onHello(f) {
    this.sessionId = f.session_id;
    this.ready = true;
    this.connectedAt = now();
    this.hellos += 1;
    this.heartbeatMs = Math.max(1, Number(f.heartbeat_interval) || 30) * 1000;
    if (this.mode === 'ws') {
      this.startHeartbeat();
      this.setState('connected');
    } else {
      this.setState('longpoll');
    }
  },

  startHeartbeat() {
    this.stopHeartbeat();
    this.lastRx = now();
    let lastPing = now();
    this.hbTimer = setInterval(() => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
      if (now() - lastPing >= this.heartbeatMs) {
        lastPing = now();
        this.send({ type: 'ping' });
      }
      // No frame (not even a pong) for 2.5 intervals: the connection is dead.
      if (now() - this.lastRx > this.heartbeatMs * 2.5) {
        const ws = this.ws;
        this.ws = null;
        try { ws.close(4000, 'heartbeat timeout'); } catch { /* ignore */ }
        this.onWsGone(true);
      }
    }, Math.min(1000, this.heartbeatMs / 4));
  },

  stopHeartbeat() {
    clearInterval(this.hbTimer);
    this.hbTimer = null;
  },

  /** Send one client frame. Returns false if there is no live transport (callers keep state to retry). */
  send(frame) {
    if (!this.ready) return false;
    if (this.mode === 'ws') {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
      this.ws.send(JSON.stringify(frame));
      return true;
    }
    // One POST at a time: frames reach the server in the order sent (send order = seq order).
    this.lp.chain = this.lp.chain.then(() => this.lpSend(frame));
    return true;
  },

  // -- long-poll --

  startLongPoll() {
    if (this.stopped) return;
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      try { ws.close(); } catch { /* ignore */ }
    }
    this.stopHeartbeat();
    this.stopLongPoll();
    this.mode = 'longpoll';
    this.ready = false;
    this.setState(this.hellos ? 'reconnecting' : 'connecting');
    const gen = ++this.lp.gen;
    this.lp.cursor = null;
    this.pollLoop(gen);
    // Try to get back to a WebSocket now and then (unless long-poll was asked for).
    const forced = new URLSearchParams(location.search).get('transport') || localStorage.getItem(LS_TRANSPORT);
    if (forced !== 'longpoll' && typeof WebSocket !== 'undefined') {
      const every = Number(localStorage.getItem('tern.wsProbeMs')) || 60000;
      this.lp.probeTimer = setInterval(() => {
        if (this.mode === 'longpoll' && this.ready && !this.stopped) this.connectWs({ probe: true });
      }, Math.max(1000, every));
    }
  },

  stopLongPoll() {
    this.lp.gen += 1;
    clearInterval(this.lp.probeTimer);
    this.lp.probeTimer = null;
    if (this.lp.abort) this.lp.abort.abort();
    this.lp.abort = null;
  },

  async pollLoop(gen) {
    let failures = 0;
    while (gen === this.lp.gen && !this.stopped) {
      const ctl = new AbortController();
      this.lp.abort = ctl;
      const params = new URLSearchParams({ token: S.token, timeout: '25' });
      if (this.lp.cursor) params.set('cursor', this.lp.cursor);
      try {
        const res = await fetch(`/v1/poll?${params}`, { signal: ctl.signal, cache: 'no-store' });
        if (gen !== this.lp.gen) return;
        if (res.status === 401) {
          signOut('Your session has expired or the token was rejected. Sign in again.');
          return;
        }
        if (!res.ok) throw new Error(`poll: HTTP ${res.status}`);
        const body = await res.json();
        if (gen !== this.lp.gen) return;
        failures = 0;
        this.lp.cursor = body.cursor ?? this.lp.cursor;
        this.lastRx = now();
        for (const ev of body.events || []) handleFrame(ev);
      } catch (e) {
        if (gen !== this.lp.gen || e.name === 'AbortError') return;
        this.ready = false;
        failures += 1;
        const base = Math.min(30000, 1000 * 2 ** Math.min(failures - 1, 5));
        const delay = Math.round(base / 2 + Math.random() * (base / 2));
        this.reconnectAt = now() + delay;
        this.setState(navigator.onLine === false ? 'offline' : 'reconnecting');
        await sleep(delay);
        this.reconnectAt = 0;
      }
    }
  },

  async lpSend(frame) {
    const sid = this.sessionId;
    const params = new URLSearchParams({ session: sid, token: S.token });
    try {
      const res = await fetch(`/v1/frames?${params}`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(frame),
        cache: 'no-store',
      });
      if (res.status === 404 && this.mode === 'longpoll' && this.sessionId === sid) {
        // The session expired: start a new one (a new hello re-sends what is pending).
        this.startLongPoll();
        return;
      }
      if (res.status === 401) {
        signOut('Your session has expired or the token was rejected. Sign in again.');
        return;
      }
      if (!res.ok) throw new Error(`frames: HTTP ${res.status}`);
      const body = await res.json();
      for (const ev of body.events || []) handleFrame(ev);
    } catch {
      // Lost: pending messages are re-sent by the periodic check; marks on the next hello.
    }
  },
};

// ---- frames from the server --------------------------------------------------------------

const recentFrames = []; // the last frames received, for debugging (window.tern.frames)

function handleFrame(f) {
  if (!f || typeof f !== 'object') return;
  recentFrames.push([new Date().toISOString(), f]);
  if (recentFrames.length > 200) recentFrames.shift();
  switch (f.type) {
    case 'hello': onHello(f); break;
    case 'message': onMessages(f.chat_id, [f], 'live'); break;
    case 'ack': onAck(f); break;
    case 'sync': onSync(f); break;
    case 'receipt': onReceipt(f); break;
    case 'chat': onChatEvent(f); break;
    case 'presence': onPresence(f); break;
    case 'typing': onTyping(f); break;
    case 'error': onErrorFrame(f); break;
    case 'reconnect': onReconnectFrame(f); break;
    case 'pong': break;
    default: break; // unknown frame types are ignored
  }
}

function onHello(f) {
  const first = conn.hellos === 0;
  if (Number.isSafeInteger(f.user_id)) S.me = f.user_id;
  if (typeof f.name === 'string' && f.name) S.names.set(S.me, f.name);
  conn.onHello(f);
  renderMe();
  // Presence subscriptions live per connection: renew them.
  if (S.subscribed.size) conn.send({ type: 'presence_subscribe', user_ids: [...S.subscribed] });
  // Marks sent on the old connection may be lost: send again what we hold.
  marks.sent.delivered.clear();
  marks.sent.read.clear();
  for (const [chatId, log] of S.logs) {
    if (log.max > 0) marks.queue('delivered', chatId, log.max);
  }
  maybeMarkRead();
  marks.flushSoon();
  // Pending sends go out again with the same client_msg_id (idempotent on the server).
  resendPending(true);
  if (!first) {
    // Catch up: chats (new ones, unread counts) and each loaded chat from its last seq.
    loadChats().catch(() => {});
    for (const [chatId, log] of S.logs) {
      if (log.loaded) {
        log.syncing = null;
        requestSync(chatId, log.top);
      }
    }
  }
}

function onReconnectFrame(f) {
  const after = Math.max(0, Number(f.after_ms) || 0);
  conn.reconnectAfter = after;
  if (conn.mode === 'ws' && conn.ws) {
    // The server closes right after; close ourselves too in case it does not.
    const ws = conn.ws;
    setTimeout(() => {
      if (conn.ws === ws) {
        conn.ws = null;
        try { ws.close(); } catch { /* ignore */ }
        conn.onWsGone(true);
      }
    }, 2000);
  } else if (conn.mode === 'longpoll') {
    conn.reconnectAfter = null;
    conn.stopLongPoll();
    conn.ready = false;
    conn.scheduleReconnect(after);
  }
}

function normalizeMessage(m, chatId) {
  return {
    message_id: String(m.message_id),
    chat_id: m.chat_id ?? chatId,
    seq: Number(m.seq),
    sender_id: m.sender_id,
    content: m.content ?? '',
    media_url: m.media_url ?? null,
    media: m.media && typeof m.media === 'object' ? m.media : null,
    client_msg_id: m.client_msg_id ?? null,
    created_at: parseTs(m.created_at) ?? now(),
    status: m.status ?? null,
  };
}

/** Messages arrive: live frames, sync pages, history pages. Dedupe by message_id, order by seq. */
function onMessages(chatId, list, source) {
  if (!chatId) return;
  let chat = S.chats.get(chatId);
  if (!chat) {
    // A chat we did not know (e.g. someone started one with us): refresh the list.
    chat = chatRecord({ chat_id: chatId, type: 'direct' });
    chat.placeholder = true;
    S.chats.set(chatId, chat);
    loadChats().catch(() => {});
  }
  const log = getLog(chatId);
  let maxOther = 0;
  let changed = false;
  for (const raw of list) {
    const m = normalizeMessage(raw, chatId);
    if (!Number.isSafeInteger(m.seq) || m.seq < 1) continue;
    if (m.sender_id !== S.me) {
      maxOther = Math.max(maxOther, m.seq);
      clearTyping(chatId, m.sender_id);
    }
    // Our own message coming back (sync, another path): settle its pending bubble.
    if (m.client_msg_id && m.sender_id === S.me && log.pending.has(m.client_msg_id)) {
      const p = log.pending.get(m.client_msg_id);
      if (p.localUrl && !m.media) m.media = p.media;
      log.pending.delete(m.client_msg_id);
      changed = true;
    }
    if (log.ids.has(m.message_id) || log.bySeq.has(m.seq)) {
      const old = log.bySeq.get(m.seq);
      if (old && m.status && rankOf(m.status) > rankOf(old.status)) {
        old.status = m.status;
        changed = true;
      }
      continue;
    }
    if (source === 'live' && m.seq > chat.last_seq && m.sender_id !== S.me && !isReading(chatId)) {
      chat.unread += 1;
      chat.liveUnread.add(m.seq);
    }
    chat.last_seq = Math.max(chat.last_seq, m.seq);
    if (!chat.lastMsg || m.seq >= chat.lastMsg.seq) chat.lastMsg = m;
    if (!log.loaded && !log.loading && source !== 'history') {
      // Not opened yet: keep only the newest (for the preview); history fills the rest.
      // While the first page is loading, hold what arrives (our own acked sends included):
      // the page may have been read before it, and loadHistory merges what is held.
      continue;
    }
    log.bySeq.set(m.seq, m);
    log.ids.add(m.message_id);
    log.max = Math.max(log.max, m.seq);
    changed = true;
  }
  if (log.loaded) advanceTop(log);
  if (maxOther) marks.queue('delivered', chatId, maxOther);
  if (log.loaded && log.max > log.top) requestSync(chatId, log.top); // a gap in seq
  if (chatId === S.openChatId) {
    if (changed) render.messages();
    maybeMarkRead();
  }
  render.list();
}

function advanceTop(log) {
  if (log.lowest === Infinity) log.lowest = 1;
  if (log.top < log.lowest - 1) log.top = log.lowest - 1;
  while (log.bySeq.has(log.top + 1)) log.top += 1;
}

function requestSync(chatId, afterSeq) {
  const log = getLog(chatId);
  if (log.syncing && now() - log.syncing.at < 10000) return;
  if (conn.send({ type: 'sync', chat_id: chatId, after_seq: afterSeq, limit: 200 })) {
    log.syncing = { after: afterSeq, at: now() };
  }
}

function onSync(f) {
  const chatId = f.chat_id;
  const log = getLog(chatId);
  const before = log.top;
  log.syncing = null;
  onMessages(chatId, f.messages || [], 'sync');
  if (log.loaded && (f.has_more || log.max > log.top) && log.top > before) requestSync(chatId, log.top);
}

function onAck(f) {
  const chatId = f.chat_id;
  const log = getLog(chatId);
  const p = f.client_msg_id ? log.pending.get(f.client_msg_id) : null;
  if (p) {
    log.pending.delete(f.client_msg_id);
    const m = {
      message_id: f.message_id,
      chat_id: chatId,
      seq: f.seq,
      sender_id: S.me,
      content: p.content,
      media_url: null,
      media: p.media || null,
      client_msg_id: f.client_msg_id,
      created_at: f.created_at,
      status: 'sent',
    };
    onMessages(chatId, [m], 'ack');
  } else if (log.loaded && f.seq > log.top) {
    requestSync(chatId, log.top);
  } else {
    const chat = S.chats.get(chatId);
    if (chat) chat.last_seq = Math.max(chat.last_seq, f.seq);
  }
}

function onReceipt(f) {
  const chat = S.chats.get(f.chat_id);
  if (!chat) return;
  const seq = Number(f.seq) || 0;
  const m = chat.marks.get(f.user_id) || { user_id: f.user_id, delivered_seq: 0, read_seq: 0 };
  if (f.status === 'read') {
    m.read_seq = Math.max(m.read_seq, seq);
    m.delivered_seq = Math.max(m.delivered_seq, seq);
  } else {
    m.delivered_seq = Math.max(m.delivered_seq, seq);
  }
  chat.marks.set(f.user_id, m);
  if (f.user_id === S.me && f.status === 'read') {
    // Our other device read this chat (the server sends our own marks to our other devices).
    if (seq > chat.read_seq) {
      chat.read_seq = seq;
      for (const s of [...chat.liveUnread]) if (s <= seq) chat.liveUnread.delete(s);
      chat.unread = countUnread(chat);
    }
  }
  if (f.chat_id === S.openChatId) render.messages();
  render.list();
}

/** `chat` frames: a chat we are in was created, renamed, or its members changed. */
function onChatEvent(f) {
  const c = f.chat;
  if (!c || !Number.isSafeInteger(c.chat_id)) return;
  learnNames(c.members);
  const ids = Array.isArray(f.user_ids) ? f.user_ids : [];
  let chat = S.chats.get(c.chat_id);
  if (f.event === 'member_removed' && ids.includes(S.me)) {
    // We left or were removed: the chat leaves the list (kept read-only if it is open).
    if (!chat) return;
    if (c.chat_id === S.openChatId) {
      chat.gone = true;
      chat.members = c.members ?? chat.members;
      renderComposerState();
    } else {
      S.chats.delete(c.chat_id);
      S.logs.delete(c.chat_id);
    }
    render.list();
    return;
  }
  if (!chat || chat.placeholder) {
    const old = chat;
    chat = chatRecord(c);
    if (old) {
      chat.lastMsg = old.lastMsg;
      chat.marks = old.marks;
      chat.liveUnread = old.liveUnread;
      chat.last_seq = Math.max(chat.last_seq, old.last_seq);
      chat.unread = old.liveUnread.size;
    }
    S.chats.set(c.chat_id, chat);
    if (f.event !== 'created') toast(`You were added to “${chatTitle(chat)}”.`);
  } else {
    chat.type = c.type || chat.type;
    chat.title = c.title ?? null;
    if (Array.isArray(c.members)) chat.members = c.members;
    chat.last_seq = Math.max(chat.last_seq, c.last_seq ?? 0);
  }
  if (chat.gone) {
    chat.gone = false;
    if (c.chat_id === S.openChatId) renderComposerState();
  }
  if (chat.type === 'direct') {
    const p = partnerOf(chat);
    if (p) subscribePresence([p]);
  }
  fillChatDetails();
  render.list();
  if (c.chat_id === S.openChatId) {
    render.header();
    if ($('info-dialog').open) renderInfo();
  }
}

function onPresence(f) {
  if (!Number.isSafeInteger(f.user_id)) return;
  S.presence.set(f.user_id, { status: f.status, last_seen: f.last_seen ?? null });
  render.list();
  render.header();
  if ($('info-dialog').open) renderInfoMembers();
}

function onTyping(f) {
  if (f.user_id === S.me) return;
  let m = S.typing.get(f.chat_id);
  if (!m) S.typing.set(f.chat_id, (m = new Map()));
  m.set(f.user_id, now() + 5000);
  render.typing();
  render.list();
}

function clearTyping(chatId, userId) {
  const m = S.typing.get(chatId);
  if (m && m.delete(userId)) {
    render.typing();
  }
}

function typingUsers(chatId) {
  const m = S.typing.get(chatId);
  if (!m) return [];
  const t = now();
  return [...m].filter(([, exp]) => exp > t).map(([u]) => u);
}

function typingText(chatId) {
  const users = typingUsers(chatId);
  if (!users.length) return '';
  const chat = S.chats.get(chatId);
  if (chat?.type === 'direct') return 'typing…';
  if (users.length === 1) return `${userName(users[0])} is typing…`;
  if (users.length === 2) return `${userName(users[0])} and ${userName(users[1])} are typing…`;
  return `${users.length} people are typing…`;
}

function onErrorFrame(f) {
  if (f.code === 'forbidden' || f.code === 'not_found') {
    // Probably removed from a chat: the list tells which (and marks the open one read-only).
    loadChats().catch(() => {});
  }
  if (f.client_msg_id) {
    for (const [chatId, log] of S.logs) {
      const p = log.pending.get(f.client_msg_id);
      if (p) {
        p.state = 'failed';
        p.error = f.message || f.code;
        p.errorCode = f.code;
        if (chatId === S.openChatId) render.messages();
        return;
      }
    }
  }
  if (f.code === 'forbidden' || f.code === 'not_found') return; // typing/marks/sync in such a chat
  if (f.code === 'unauthenticated') {
    signOut(f.message || 'Signed out by the server.');
    return;
  }
  toast(`${f.message || 'Something went wrong'}${f.code ? ` (${f.code})` : ''}`, { error: true });
}

// ---- delivered / read marks (batched, at most one flush per 500 ms) ----------------------

const marks = {
  pending: { delivered: new Map(), read: new Map() },
  sent: { delivered: new Map(), read: new Map() },
  timer: null,
  lastFlush: 0,

  queue(kind, chatId, seq) {
    const cur = this.pending[kind].get(chatId) || 0;
    if (seq > cur && seq > (this.sent[kind].get(chatId) || 0)) {
      this.pending[kind].set(chatId, seq);
      this.flushSoon();
    }
  },

  flushSoon() {
    if (this.timer) return;
    const wait = Math.max(0, this.lastFlush + 500 - now());
    this.timer = setTimeout(() => {
      this.timer = null;
      this.flush();
    }, wait);
  },

  flush() {
    if (!conn.ready) return; // the next hello flushes
    this.lastFlush = now();
    for (const kind of ['delivered', 'read']) {
      for (const [chatId, seq] of this.pending[kind]) {
        if (seq <= (this.sent[kind].get(chatId) || 0)) {
          this.pending[kind].delete(chatId);
          continue;
        }
        if (conn.send({ type: kind, chat_id: chatId, seq })) {
          this.sent[kind].set(chatId, seq);
          this.pending[kind].delete(chatId);
        }
      }
    }
  },
};

function isReading(chatId) {
  if (chatId !== S.openChatId || document.visibilityState !== 'visible') return false;
  const box = $('messages');
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

function countUnread(chat) {
  const log = S.logs.get(chat.chat_id);
  if (!log || !log.loaded) return Math.max(0, Math.min(chat.unread, chat.last_seq - chat.read_seq));
  let n = 0;
  for (const m of log.bySeq.values()) if (m.seq > chat.read_seq && m.sender_id !== S.me) n += 1;
  return n;
}

/** The open chat is on screen and scrolled to the end: mark it read up to the newest message. */
function maybeMarkRead() {
  const chatId = S.openChatId;
  if (!chatId || !isReading(chatId)) return;
  const chat = S.chats.get(chatId);
  const log = S.logs.get(chatId);
  if (!chat || !log || !log.loaded) return;
  const seq = log.top;
  if (seq > 0 && (seq > chat.read_seq || chat.unread > 0)) {
    chat.read_seq = Math.max(chat.read_seq, seq);
    chat.unread = 0;
    chat.liveUnread.clear();
    marks.queue('read', chatId, seq);
    render.list();
  }
}

// ---- sending -----------------------------------------------------------------------------

function newClientMsgId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

function sendText(chatId, content) {
  const log = getLog(chatId);
  const p = {
    client_msg_id: newClientMsgId(),
    chat_id: chatId,
    content,
    media: null,
    media_id: null,
    state: 'sending',
    error: null,
    created_at: now(),
    lastSent: 0,
  };
  log.pending.set(p.client_msg_id, p);
  transmit(p);
  render.messages({ toBottom: true });
}

function transmit(p) {
  const frame = { type: 'message', chat_id: p.chat_id, client_msg_id: p.client_msg_id };
  if (p.content) frame.content = p.content;
  if (p.media_id) frame.media_id = p.media_id;
  p.lastSent = now();
  conn.send(frame); // if offline, the next hello sends it
}

/** Re-send pending messages (same client_msg_id): all of them after a hello, else the stale ones. */
function resendPending(all) {
  for (const log of S.logs.values()) {
    for (const p of log.pending.values()) {
      if (p.state !== 'sending') continue;
      if (all || now() - p.lastSent > 10000) transmit(p);
    }
  }
}

function retryPending(chatId, cid) {
  const log = getLog(chatId);
  const p = log.pending.get(cid);
  if (!p) return;
  p.error = null;
  if (p.file && !p.media_id) {
    startUpload(p);
  } else {
    p.state = 'sending';
    transmit(p);
  }
  render.messages();
}

function discardPending(chatId, cid) {
  const log = getLog(chatId);
  const p = log.pending.get(cid);
  if (p?.localUrl) URL.revokeObjectURL(p.localUrl);
  log.pending.delete(cid);
  render.messages();
}

// ---- media -------------------------------------------------------------------------------

async function probeMedia() {
  // GET /v1/media answers what the server accepts (200); 503: media is off; 404: an older
  // server without media. The accept list filters the file picker.
  try {
    const res = await fetch('/v1/media', { headers: { Authorization: `Bearer ${S.token}` }, cache: 'no-store' });
    if (res.ok) {
      S.mediaConfig = await res.json().catch(() => null);
      const accept = S.mediaConfig?.accept;
      if (Array.isArray(accept) && accept.length) $('file-input').accept = accept.join(',');
    }
    setMediaSupported(res.status !== 404 && res.status !== 503);
  } catch {
    /* unknown: keep the button; an upload will tell */
  }
}

function setMediaSupported(ok) {
  S.mediaSupported = ok;
  const btn = $('attach-btn');
  const voice = $('voice-btn');
  btn.disabled = !ok || !!S.chats.get(S.openChatId)?.gone;
  btn.title = ok ? 'Attach a file' : 'This server does not accept media uploads';
  voice.hidden = !ok || typeof MediaRecorder === 'undefined' || !navigator.mediaDevices?.getUserMedia;
}

function attachFile(chatId, file, extra = {}) {
  const log = getLog(chatId);
  const localUrl = URL.createObjectURL(file);
  const type = (file.type || 'application/octet-stream').split(';')[0];
  const p = {
    client_msg_id: newClientMsgId(),
    chat_id: chatId,
    content: extra.caption || '',
    media: { url: localUrl, content_type: type, size: file.size, duration_ms: extra.duration_ms, name: file.name },
    media_id: null,
    file,
    localUrl,
    state: 'uploading',
    progress: 0,
    error: null,
    created_at: now(),
    lastSent: 0,
  };
  log.pending.set(p.client_msg_id, p);
  render.messages({ toBottom: true });
  startUpload(p);
}

function startUpload(p) {
  p.state = 'uploading';
  p.progress = 0;
  const xhr = new XMLHttpRequest();
  xhr.open('POST', '/v1/media');
  xhr.setRequestHeader('Authorization', `Bearer ${S.token}`);
  xhr.setRequestHeader('Content-Type', p.media.content_type);
  xhr.upload.onprogress = (e) => {
    if (!e.lengthComputable) return;
    p.progress = e.loaded / e.total;
    const el = document.querySelector(`[data-key="c:${CSS.escape(p.client_msg_id)}"] progress`);
    if (el) el.value = p.progress;
  };
  const fail = (msg, code) => {
    p.state = 'failed';
    p.error = msg;
    p.errorCode = code;
    if (p.chat_id === S.openChatId) render.messages();
  };
  xhr.onload = () => {
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
    if (xhr.status === 200 || xhr.status === 201) {
      if (!body?.media_id) return fail('The server answered the upload without a media_id', 'invalid');
      p.media_id = body.media_id;
      p.media = { ...body, name: p.media.name, duration_ms: body.duration_ms ?? p.media.duration_ms, url: p.localUrl, remote: body };
      p.state = 'sending';
      transmit(p);
      if (p.chat_id === S.openChatId) render.messages();
      return;
    }
    if (xhr.status === 404 || xhr.status === 405 || xhr.status === 501) {
      setMediaSupported(false);
      p.noRetry = true;
      return fail('This server does not accept media uploads yet', 'unsupported');
    }
    if (xhr.status === 401) {
      signOut('Your session has expired. Sign in again.');
      return;
    }
    const err = body?.error || {};
    const byStatus = { 413: 'The file is too large', 415: 'This kind of file is not accepted', 429: 'Too many uploads; try again in a moment' };
    fail(err.message || byStatus[xhr.status] || `Upload failed (HTTP ${xhr.status})`, err.code);
  };
  xhr.onerror = () => fail('Upload failed: the server cannot be reached', 'network');
  xhr.send(p.file);
}

/** A URL from the server for <img>/<video>/<a>: only http(s)/blob, and our own /v1 media gets the token. */
function mediaSrc(url) {
  if (!url || typeof url !== 'string') return null;
  let u;
  try {
    u = new URL(url, location.href);
  } catch {
    return null;
  }
  if (u.protocol === 'blob:') return u.href;
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return null;
  if (u.origin === location.origin && u.pathname.startsWith('/v1/') && !u.searchParams.has('token')) {
    u.searchParams.set('token', S.token);
  }
  return u.href;
}

function guessTypeFromUrl(url) {
  const ext = (String(url).split(/[?#]/)[0].split('.').pop() || '').toLowerCase();
  if (['png', 'jpg', 'jpeg', 'gif', 'webp', 'avif', 'bmp', 'svg'].includes(ext)) return 'image/*';
  if (['mp4', 'webm', 'mov', 'm4v', 'ogv'].includes(ext)) return 'video/*';
  if (['mp3', 'ogg', 'oga', 'opus', 'wav', 'm4a', 'aac', 'flac'].includes(ext)) return 'audio/*';
  return 'application/octet-stream';
}

function renderMedia(media, mediaUrl, pending) {
  const m = media || (mediaUrl ? { url: mediaUrl, content_type: guessTypeFromUrl(mediaUrl) } : null);
  if (!m) return null;
  const type = String(m.content_type || guessTypeFromUrl(m.url || ''));
  const src = mediaSrc(m.url);
  const box = h('div', { class: 'media' });
  if (!src) {
    box.append(h('span', { class: 'upload' }, 'Attachment unavailable'));
    return box;
  }
  if (type.startsWith('image/')) {
    const thumb = mediaSrc(m.thumbnail_url) || src;
    const img = h('img', { class: 'thumb', src: thumb, alt: m.name || 'Image', tabindex: '0', role: 'button', onload: keepPinned });
    if (m.width && m.height) {
      img.width = Math.min(m.width, 320);
      img.style.aspectRatio = `${m.width} / ${m.height}`;
      img.style.height = 'auto';
    }
    const open = () => openLightbox(src, m.name || 'Image');
    img.addEventListener('click', open);
    img.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); open(); } });
    box.append(img);
  } else if (type.startsWith('video/')) {
    const info = mediaInfo(m);
    const pick = pickRendition(info);
    const v = h('video', { controls: true, preload: 'metadata', playsinline: true, src: mediaSrc(pick?.url) || src, onloadedmetadata: keepPinned });
    const poster = mediaSrc(info.poster?.url || info.thumbnail_url);
    if (poster) v.poster = poster;
    v.dataset.rendition = pick?.name || 'original';
    // A stable box before (or without) metadata: known size, else 16:9.
    v.style.width = `${Math.min(m.width || 360, 360)}px`;
    v.style.aspectRatio = m.width && m.height ? `${m.width} / ${m.height}` : '16 / 9';
    box.append(v);
    if (info.processing && m.media_id && !pending) watchProcessing(m.media_id);
  } else if (type.startsWith('audio/')) {
    // The player shows the length; the waveform (peaks from the server) shows progress.
    const a = h('audio', { controls: true, preload: 'metadata', src });
    const wave = Array.isArray(m.peaks) && m.peaks.length ? waveformEl(m.peaks, a) : null;
    box.append(h('div', { class: 'audio' }, wave, a));
  } else {
    box.append(h('a', { class: 'file', href: src, target: '_blank', rel: 'noopener noreferrer', download: m.name || '' },
      iconSvg('file'), ' ', m.name || 'File', m.size ? ` · ${fmtSize(m.size)}` : ''));
  }
  if (pending?.state === 'uploading') {
    box.append(h('div', { class: 'upload' }, 'Uploading… ', h('progress', { max: 1, value: pending.progress || 0 })));
  }
  return box;
}

/** The freshest known state of a media object (renditions made after the message was sent). */
function mediaInfo(m) {
  return (m.media_id && S.mediaInfo?.get(m.media_id)) || m;
}

/**
 * The rendition to play: the smallest one at least as tall as the player needs on this
 * screen (twice that on fast connections, for sharpness), capped to 360p on slow ones
 * (navigator.connection.effectiveType 2g/3g, or Save-Data). null: the original.
 */
function pickRendition(m) {
  const list = (Array.isArray(m.variants) ? m.variants : []).filter((v) => v && v.url && v.height);
  if (!list.length) return null;
  const c = navigator.connection;
  const slow = !!(c && (c.saveData || /(^|-)(2g|3g)$/.test(c.effectiveType || '')));
  const shortSide = (v) => Math.min(v.width || v.height, v.height);
  const sorted = [...list].sort((x, y) => shortSide(x) - shortSide(y));
  if (slow) return sorted[0];
  const want = Math.min(360, window.innerWidth || 360) * (window.devicePixelRatio || 1) * (9 / 16);
  const fast = !c || c.effectiveType === '4g';
  const target = fast ? want * 1.5 : want;
  const fit = sorted.find((v) => shortSide(v) >= target);
  // Nothing big enough: the original (the largest) on fast links, else the largest rendition.
  return fit || (fast ? null : sorted[sorted.length - 1]);
}

/** While a video is being processed, ask for its current state now and then, then re-render. */
function watchProcessing(mediaId) {
  S.mediaWatch ??= new Set();
  S.mediaInfo ??= new Map();
  if (S.mediaWatch.has(mediaId)) return;
  S.mediaWatch.add(mediaId);
  const started = now();
  const tick = async () => {
    try {
      const info = await api('GET', `/v1/media/${encodeURIComponent(mediaId)}/info`);
      S.mediaInfo.set(mediaId, info);
      if (!info.processing || now() - started > 15 * 60000) {
        S.mediaWatch.delete(mediaId);
        render.messages();
        return;
      }
    } catch {
      if (now() - started > 15 * 60000) { S.mediaWatch.delete(mediaId); return; }
    }
    setTimeout(tick, 3000);
  };
  setTimeout(tick, 1500);
}

/** A voice note's waveform: bars from the server's peaks (0–255), played part highlighted. */
function waveformEl(peaks, audio) {
  const n = peaks.length;
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('class', 'wave');
  svg.setAttribute('viewBox', `0 0 ${n * 3} 32`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', 'Waveform');
  const bars = [];
  peaks.forEach((p, i) => {
    const hgt = Math.max(2, (Math.min(255, Math.max(0, Number(p) || 0)) / 255) * 30);
    const r = document.createElementNS('http://www.w3.org/2000/svg', 'rect');
    r.setAttribute('x', String(i * 3));
    r.setAttribute('y', String((32 - hgt) / 2));
    r.setAttribute('width', '2');
    r.setAttribute('height', String(hgt));
    svg.append(r);
    bars.push(r);
  });
  const paint = () => {
    const f = audio.duration > 0 && Number.isFinite(audio.duration) ? audio.currentTime / audio.duration : 0;
    bars.forEach((r, i) => r.classList.toggle('played', i < f * n));
  };
  audio.addEventListener('timeupdate', paint);
  audio.addEventListener('ended', paint);
  svg.addEventListener('click', (e) => {
    const box = svg.getBoundingClientRect();
    if (audio.duration > 0 && Number.isFinite(audio.duration) && box.width) {
      audio.currentTime = ((e.clientX - box.left) / box.width) * audio.duration;
      audio.play().catch(() => {});
    }
  });
  return svg;
}

/** Inline SVG icons (no emoji fonts needed). */
function iconSvg(name) {
  const paths = {
    file: 'M6 2h8l5 5v15H6z M14 2v5h5',
  };
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('class', 'i');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  const p = document.createElementNS('http://www.w3.org/2000/svg', 'path');
  p.setAttribute('d', paths[name] || '');
  svg.append(p);
  return svg;
}

function openLightbox(src, alt) {
  const img = $('lightbox-img');
  img.src = src;
  img.alt = alt;
  $('lightbox').showModal();
}

// Voice messages: record with MediaRecorder, upload as audio.
const voice = {
  rec: null,
  chunks: [],
  started: 0,
  cancelled: false,
  timer: null,
  /** Stop recording and throw the recording away. */
  cancel() {
    if (!this.rec) return;
    this.cancelled = true;
    this.rec.stop();
  },
  showRecording(on) {
    let bar = $('rec-bar');
    clearInterval(this.timer);
    if (!on) { bar?.remove(); return; }
    if (!bar) {
      bar = h('div', { id: 'rec-bar', class: 'rec-bar', role: 'status' },
        h('span', { class: 'rec-dot', 'aria-hidden': 'true' }),
        h('span', { class: 'rec-time' }, '0:00'),
        h('button', { type: 'button', class: 'rec-cancel', onclick: () => this.cancel() }, 'Cancel'));
      $('voice-btn').before(bar);
    }
    const t = bar.querySelector('.rec-time');
    const paint = () => { t.textContent = fmtDuration(now() - this.started); };
    paint();
    this.timer = setInterval(paint, 250);
  },
  async toggle() {
    if (this.rec) {
      this.rec.stop();
      return;
    }
    const chatId = S.openChatId;
    if (!chatId) return;
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (e) {
      toast(`Microphone unavailable: ${e.message || e.name}`, { error: true });
      return;
    }
    const rec = new MediaRecorder(stream);
    this.rec = rec;
    this.chunks = [];
    this.cancelled = false;
    this.started = now();
    rec.ondataavailable = (e) => { if (e.data.size) this.chunks.push(e.data); };
    rec.onstop = () => {
      stream.getTracks().forEach((t) => t.stop());
      this.rec = null;
      $('voice-btn').classList.remove('recording');
      $('voice-btn').title = 'Record a voice message';
      this.showRecording(false);
      const duration = now() - this.started;
      if (this.cancelled || duration < 500 || !this.chunks.length) return;
      const type = (rec.mimeType || 'audio/webm').split(';')[0];
      const file = new File(this.chunks, `voice-${new Date().toISOString()}.${type.split('/')[1] || 'webm'}`, { type });
      attachFile(chatId, file, { duration_ms: duration });
    };
    rec.start();
    $('voice-btn').classList.add('recording');
    $('voice-btn').title = 'Stop and send';
    this.showRecording(true);
  },
};

// ---- data loading ------------------------------------------------------------------------

let chatsLoading = null;

function loadChats() {
  if (chatsLoading) {
    chatsLoading.again = true;
    return chatsLoading.promise;
  }
  const state = { again: false };
  state.promise = (async () => {
    try {
      do {
        state.again = false;
        const data = await api('GET', '/v1/chats');
        mergeChats(data?.chats || []);
      } while (state.again);
    } finally {
      chatsLoading = null;
    }
  })();
  chatsLoading = state;
  return state.promise;
}

function mergeChats(list) {
  const seen = new Set();
  for (const c of list) {
    if (!Number.isSafeInteger(c.chat_id)) continue;
    seen.add(c.chat_id);
    let chat = S.chats.get(c.chat_id);
    // Messages counted live after the server computed this answer are not in its `unread`.
    const serverLast = c.last_seq ?? 0;
    const counted = (old) => [...old.liveUnread].filter((seq) => seq > serverLast && seq > (c.read_seq ?? 0));
    if (!chat || chat.placeholder) {
      const old = chat;
      chat = chatRecord(c);
      if (old) {
        chat.lastMsg = old.lastMsg;
        chat.marks = old.marks;
        chat.liveUnread = new Set(counted(old));
        chat.last_seq = Math.max(chat.last_seq, old.last_seq);
        chat.unread += chat.liveUnread.size;
      }
      S.chats.set(c.chat_id, chat);
    } else {
      chat.type = c.type;
      chat.title = c.title ?? chat.title;
      chat.last_seq = Math.max(chat.last_seq, serverLast);
      chat.read_seq = Math.max(chat.read_seq, c.read_seq ?? 0);
      chat.liveUnread = new Set(counted(chat));
      if (c.unread != null) {
        chat.unread = c.chat_id === S.openChatId && isReading(c.chat_id) ? 0 : c.unread + chat.liveUnread.size;
      }
      if (c.members) chat.members = learnNames(c.members);
    }
    chat.serverOrder = list.indexOf(c);
  }
  for (const [id, chat] of [...S.chats]) {
    if (seen.has(id)) {
      if (chat.gone) {
        chat.gone = false;
        if (id === S.openChatId) renderComposerState();
      }
    } else if (id === S.openChatId) {
      // Removed from the chat we are looking at: keep it on screen, read-only.
      if (!chat.gone) {
        chat.gone = true;
        renderComposerState();
      }
    } else {
      S.chats.delete(id);
      S.logs.delete(id);
    }
  }
  fillChatDetails();
  render.list();
  if (S.openChatId) render.header();
}

/** Fetch what the list shows but GET /v1/chats does not carry: direct partners, last message. */
const detailQueue = [];
let detailWorkers = 0;

function fillChatDetails() {
  for (const chat of S.chats.values()) {
    if (chat.type === 'direct' && !chat.members && !chat.detailsRequested) {
      chat.detailsRequested = true;
      detailQueue.push(() => loadChatDetails(chat.chat_id));
    }
    if (chat.last_seq > 0 && !chat.lastMsg && !chat.previewRequested) {
      chat.previewRequested = true;
      detailQueue.push(() => loadPreview(chat.chat_id));
    }
  }
  while (detailWorkers < 4 && detailQueue.length) {
    detailWorkers += 1;
    (async () => {
      while (detailQueue.length) {
        const job = detailQueue.shift();
        try { await job(); } catch { /* shown elsewhere */ }
      }
      detailWorkers -= 1;
    })();
  }
}

async function loadChatDetails(chatId) {
  const c = await api('GET', `/v1/chats/${chatId}`);
  const chat = S.chats.get(chatId);
  if (!chat || !c) return chat;
  chat.members = learnNames(c.members) || chat.members;
  if (c.title !== undefined) chat.title = c.title;
  const partner = partnerOf(chat);
  if (partner) subscribePresence([partner]);
  render.list();
  if (chatId === S.openChatId) render.header();
  return chat;
}

async function loadPreview(chatId) {
  const data = await api('GET', `/v1/chats/${chatId}/messages?limit=1`);
  const chat = S.chats.get(chatId);
  const m = data?.messages?.[data.messages.length - 1];
  if (chat && m && (!chat.lastMsg || chat.lastMsg.seq < m.seq)) {
    chat.lastMsg = normalizeMessage(m, chatId);
    render.list();
  }
}

async function loadReceipts(chatId) {
  try {
    const data = await api('GET', `/v1/chats/${chatId}/receipts`);
    const chat = S.chats.get(chatId);
    if (!chat) return;
    for (const r of data?.members || []) {
      const cur = chat.marks.get(r.user_id) || { user_id: r.user_id, delivered_seq: 0, read_seq: 0 };
      cur.delivered_seq = Math.max(cur.delivered_seq, r.delivered_seq || 0, r.read_seq || 0);
      cur.read_seq = Math.max(cur.read_seq, r.read_seq || 0);
      chat.marks.set(r.user_id, cur);
    }
    // Members who left are not in the answer any more.
    const present = new Set((data?.members || []).map((r) => r.user_id));
    for (const uid of [...chat.marks.keys()]) if (!present.has(uid)) chat.marks.delete(uid);
    chat.marksLoaded = true;
    if (chatId === S.openChatId) render.messages();
  } catch { /* ticks fall back to each message's status */ }
}

async function loadHistory(chatId) {
  const log = getLog(chatId);
  if (log.loaded || log.loading) return;
  log.loading = true;
  render.messages();
  try {
    const data = await api('GET', `/v1/chats/${chatId}/messages?limit=50`);
    const msgs = data?.messages || [];
    // Live messages held before the page: keep only those at or above the page.
    const first = msgs.length ? Number(msgs[0].seq) : null;
    if (first != null) {
      for (const [seq, m] of [...log.bySeq]) {
        if (seq < first) {
          log.bySeq.delete(seq);
          log.ids.delete(m.message_id); // older pages bring it back
        }
      }
    }
    log.lowest = first ?? (log.bySeq.size ? Math.min(...log.bySeq.keys()) : 1);
    log.top = log.lowest - 1;
    log.hasOlder = !!data?.has_more;
    log.loaded = true;
    onMessages(chatId, msgs, 'history');
    advanceTop(log);
    if (log.max > log.top) requestSync(chatId, log.top);
    // Anything after the page that arrived while it loaded.
    else if (log.top > 0) requestSync(chatId, log.top);
  } catch (e) {
    if (e.status === 403 || e.status === 404) {
      toast(`Chat ${chatId} is not available: ${e.message}`, { error: true });
      S.chats.delete(chatId);
      closeChat();
      render.list();
    } else {
      toast(`Could not load messages: ${e.message}`, { error: true });
    }
  } finally {
    log.loading = false;
    if (chatId === S.openChatId) {
      render.messages({ toBottom: true });
      maybeMarkRead();
    }
  }
}

async function loadOlder() {
  const chatId = S.openChatId;
  const log = chatId && S.logs.get(chatId);
  if (!log || !log.loaded || !log.hasOlder || log.olderLoading) return;
  log.olderLoading = true;
  const box = $('messages');
  try {
    const data = await api('GET', `/v1/chats/${chatId}/messages?before_seq=${log.lowest}&limit=50`);
    const msgs = data?.messages || [];
    log.hasOlder = !!data?.has_more && msgs.length > 0;
    if (chatId !== S.openChatId) return;
    const fromBottom = box.scrollHeight - box.scrollTop;
    if (msgs.length) log.lowest = Math.min(log.lowest, Number(msgs[0].seq));
    onMessages(chatId, msgs, 'history');
    render.flush();
    box.scrollTop = box.scrollHeight - fromBottom; // keep what the user was looking at in place
  } catch (e) {
    toast(`Could not load older messages: ${e.message}`, { error: true });
  } finally {
    log.olderLoading = false;
    if (chatId === S.openChatId) render.messages();
  }
}

function subscribePresence(ids) {
  const fresh = ids.filter((id) => id !== S.me && !S.subscribed.has(id));
  if (!fresh.length) return;
  for (const id of fresh) S.subscribed.add(id);
  conn.send({ type: 'presence_subscribe', user_ids: fresh });
}

// ---- open / close a chat -----------------------------------------------------------------

function dropIfGone(chatId) {
  const chat = S.chats.get(chatId);
  if (chat?.gone) {
    S.chats.delete(chatId);
    S.logs.delete(chatId);
  }
}

function renderComposerState() {
  const chat = S.chats.get(S.openChatId);
  const gone = !!chat?.gone;
  const ta = $('composer-input');
  ta.disabled = gone;
  ta.placeholder = gone ? 'You are no longer a member of this chat' : 'Message';
  $('send-btn').disabled = gone;
  $('attach-btn').disabled = gone || S.mediaSupported === false;
  $('voice-btn').disabled = gone;
  render.header();
}

function openChat(chatId) {
  const chat = S.chats.get(chatId);
  if (!chat) return;
  if (S.openChatId !== chatId) {
    if (S.openChatId) {
      drafts.set(S.openChatId, $('composer-input').value);
      dropIfGone(S.openChatId);
    }
    S.openChatId = chatId;
    msgView.reset();
    $('composer-input').value = drafts.get(chatId) || '';
    autosize();
    renderComposerState();
  }
  $('no-chat').hidden = true;
  $('chat-view').hidden = false;
  $('app').classList.add('in-chat');
  autosize();
  if (location.hash !== `#/c/${chatId}`) history.replaceState(null, '', `#/c/${chatId}`);
  render.header();
  render.list();
  render.typing();
  loadHistory(chatId);
  loadReceipts(chatId);
  // Presence: direct partner and group members.
  const refresh = !chat.members || chat.type === 'group' ? loadChatDetails(chatId) : Promise.resolve(chat);
  refresh.then((c) => {
    if (!c || S.openChatId !== chatId) return;
    const ids = (c.members || []).map((m) => m.user_id);
    subscribePresence(ids);
  }).catch(() => {});
  const log = getLog(chatId);
  if (log.loaded) {
    render.messages({ toBottom: true });
    maybeMarkRead();
  }
  if (!matchMedia('(max-width: 720px)').matches || document.activeElement?.closest('.chat-item') == null) {
    $('composer-input').focus({ preventScroll: true });
  }
}

function closeChat() {
  const was = S.openChatId;
  if (was) drafts.set(was, $('composer-input').value);
  S.openChatId = null;
  if (was) dropIfGone(was);
  renderComposerState();
  msgView.reset();
  $('chat-view').hidden = true;
  $('no-chat').hidden = false;
  $('app').classList.remove('in-chat');
  if (location.hash) history.replaceState(null, '', location.pathname + location.search);
  render.list();
}

const drafts = new Map();

// ---- rendering -----------------------------------------------------------------------------

const render = {
  dirty: new Set(),
  toBottom: false,
  scheduled: false,
  schedule(what) {
    this.dirty.add(what);
    if (this.scheduled) return;
    this.scheduled = true;
    const run = () => {
      if (!this.scheduled) return;
      this.flush();
    };
    requestAnimationFrame(run);
    setTimeout(run, 100); // hidden tabs pause rAF
  },
  flush() {
    this.scheduled = false;
    const d = this.dirty;
    this.dirty = new Set();
    if (d.has('list')) renderChatList();
    if (d.has('header')) renderHeader();
    if (d.has('messages')) {
      const tb = this.toBottom;
      this.toBottom = false;
      renderMessages(tb);
    }
    if (d.has('typing')) renderTyping();
  },
  list() { this.schedule('list'); },
  header() { this.schedule('header'); },
  typing() { this.schedule('typing'); this.schedule('header'); },
  messages(opts) {
    if (opts?.toBottom) this.toBottom = true;
    this.schedule('messages');
  },
};

function renderMe() {
  $('me-name').textContent = S.me ? displayName(S.me) : 'Signed in';
  const av = $('me-avatar');
  av.textContent = S.me ? String(S.me).slice(0, 3) : '?';
  av.style.setProperty('--h', hueOf(S.me || 0));
  document.title = 'Tern';
}

function renderConnState() {
  const el = $('conn-state');
  if (!el) return;
  const st = conn.state;
  el.dataset.state = st;
  let text = {
    connecting: 'Connecting…',
    connected: 'Connected',
    reconnecting: 'Reconnecting…',
    longpoll: 'Connected (long-poll)',
    offline: 'Offline — waiting for network',
  }[st] || st;
  if (st === 'reconnecting' && conn.reconnectAt > now()) {
    text = `Reconnecting in ${Math.ceil((conn.reconnectAt - now()) / 1000)} s…`;
  }
  el.querySelector('.conn-text').textContent = text;
  el.title = st === 'reconnecting' ? 'Click to retry now' : '';
}

function sortedChats() {
  const arr = [...S.chats.values()].filter((c) => !c.placeholder);
  const activity = (c) => c.lastMsg?.created_at || c.created_at || 0;
  arr.sort((a, b) => activity(b) - activity(a) || (a.serverOrder ?? 0) - (b.serverOrder ?? 0) || b.chat_id - a.chat_id);
  return arr;
}

function previewText(chat) {
  const m = chat.lastMsg;
  if (!m) return chat.type === 'group' ? 'Group created' : 'No messages yet';
  let t = m.content || '';
  if (!t && (m.media || m.media_url)) {
    const ct = String(m.media?.content_type || guessTypeFromUrl(m.media_url || ''));
    t = ct.startsWith('image/') ? 'Photo' : ct.startsWith('video/') ? 'Video' : ct.startsWith('audio/') ? 'Voice message' : 'File';
  }
  t = t.replace(/\s+/g, ' ');
  if (m.sender_id === S.me) return `You: ${t}`;
  if (chat.type === 'group') return `${userName(m.sender_id)}: ${t}`;
  return t;
}

function renderChatList() {
  const ul = $('chat-list');
  const focusedId = document.activeElement?.closest?.('.chat-item')?.dataset.chatId;
  const q = S.filter.trim().toLowerCase();
  const items = [];
  let totalUnread = 0;
  for (const chat of sortedChats()) {
    totalUnread += chat.unread || 0;
    const title = chatTitle(chat);
    if (q && !title.toLowerCase().includes(q) && !String(chat.chat_id).includes(q)) continue;
    const typing = typingText(chat.chat_id);
    const typingWho = typing && chat.type === 'group' ? typing : typing;
    const btn = h('button', {
      type: 'button',
      class: 'chat-item',
      dataset: { chatId: String(chat.chat_id) },
      'aria-current': chat.chat_id === S.openChatId ? 'true' : 'false',
      onclick: () => openChat(chat.chat_id),
    },
    avatarFor(chat),
    h('span', { class: 'chat-main' },
      h('span', { class: 'chat-line' },
        h('span', { class: 'chat-name' }, title),
        h('span', { class: 'chat-time' }, listTime(chat.lastMsg?.created_at))),
      h('span', { class: 'chat-line' },
        h('span', { class: `chat-preview${typing ? ' typing-preview' : ''}` }, typingWho || previewText(chat)),
        chat.unread > 0 ? h('span', { class: 'badge', 'aria-label': `${chat.unread} unread` }, chat.unread > 999 ? '999+' : String(chat.unread)) : null)));
    items.push(h('li', null, btn));
  }
  ul.replaceChildren(...items);
  $('chat-list-empty').hidden = S.chats.size > 0;
  if (focusedId) ul.querySelector(`.chat-item[data-chat-id="${CSS.escape(focusedId)}"]`)?.focus({ preventScroll: true });
  document.title = totalUnread ? `(${totalUnread}) Tern` : 'Tern';
}

function renderHeader() {
  const chat = S.chats.get(S.openChatId);
  if (!chat) return;
  $('chat-title').textContent = chatTitle(chat);
  avatarFor(chat, $('chat-avatar'));
  const sub = $('chat-sub');
  const typing = typingText(chat.chat_id);
  sub.className = 'chat-sub';
  if (chat.gone) {
    sub.textContent = chat.type === 'group' ? 'You are no longer a member of this group' : 'Not available';
  } else if (typing) {
    sub.textContent = typing;
    sub.classList.add('is-typing');
  } else if (!conn.ready && conn.hellos > 0) {
    // What we know of others' presence is stale while we are disconnected.
    sub.textContent = conn.state === 'offline' ? 'waiting for network…' : 'connecting…';
  } else if (chat.type === 'direct') {
    const p = S.presence.get(partnerOf(chat));
    sub.textContent = p ? lastSeenText(p) : '';
    if (p?.status === 'online') sub.classList.add('online');
  } else {
    const members = chat.members || [];
    const online = members.filter((m) => m.user_id !== S.me && S.presence.get(m.user_id)?.status === 'online').length;
    sub.textContent = members.length ? `${members.length} member${members.length === 1 ? '' : 's'}${online ? `, ${online} online` : ''}` : 'group';
  }
}

function renderTyping() {
  const chatId = S.openChatId;
  const el = $('typing');
  if (!chatId) {
    el.textContent = '';
    return;
  }
  const users = typingUsers(chatId);
  const chat = S.chats.get(chatId);
  if (!users.length) el.textContent = '';
  else if (chat?.type === 'direct') el.textContent = `${userName(users[0])} is typing…`;
  else el.textContent = typingText(chatId);
}

// Statuses of our own messages: sent < delivered < read.
const RANK = { sent: 1, delivered: 2, read: 3 };
const rankOf = (s) => RANK[s] || 0;

function statusOf(chat, m) {
  let rank = Math.max(1, rankOf(m.status));
  if (chat && (chat.marksLoaded || chat.type === 'direct')) {
    const others = [...chat.marks.values()].filter((x) => x.user_id !== S.me);
    if (others.length) {
      const allRead = others.every((x) => x.read_seq >= m.seq);
      const allDelivered = others.every((x) => Math.max(x.delivered_seq, x.read_seq) >= m.seq);
      rank = Math.max(rank, allRead ? 3 : allDelivered ? 2 : 1);
    }
  }
  return rank === 3 ? 'read' : rank === 2 ? 'delivered' : 'sent';
}

function ticksEl(status) {
  const text = { pending: '◷', sent: '✓', delivered: '✓✓', read: '✓✓', failed: '!' }[status] || '';
  const label = { pending: 'Sending', sent: 'Sent', delivered: 'Delivered', read: 'Read', failed: 'Not sent' }[status] || '';
  // Read also differs in shape (a filled badge) and carries a visible "Read" label.
  return h('span', { class: 'ticks', dataset: { status }, title: label, 'aria-label': label }, text,
    status === 'read' ? h('span', { class: 'ticks-label' }, 'Read') : null);
}

function appendLinkified(parent, text) {
  const re = /\bhttps?:\/\/[^\s<>"']+/gi;
  let last = 0;
  for (const match of text.matchAll(re)) {
    let url = match[0];
    const trail = url.match(/[.,;:!?)\]]+$/);
    if (trail) url = url.slice(0, -trail[0].length);
    if (match.index > last) parent.append(text.slice(last, match.index));
    parent.append(h('a', { href: url, target: '_blank', rel: 'noopener noreferrer nofollow' }, url));
    last = match.index + url.length;
  }
  if (last < text.length) parent.append(text.slice(last));
}

/** The keyed message list of the open chat. */
const msgView = {
  nodes: new Map(), // key -> element
  pinned: true, // the view follows the newest message (the user is at the bottom)
  reset() {
    this.pinned = true;
    this.nodes.clear();
    $('msg-list').replaceChildren();
    $('older').hidden = true;
  },
};

function messageItems(chatId) {
  const log = getLog(chatId);
  const items = [];
  const seqs = [...log.bySeq.keys()].sort((a, b) => a - b);
  for (const seq of seqs) {
    const m = log.bySeq.get(seq);
    items.push({ kind: 'msg', m, key: m.client_msg_id && m.sender_id === S.me ? `c:${m.client_msg_id}` : `m:${m.message_id}` });
  }
  const pend = [...log.pending.values()].sort((a, b) => a.created_at - b.created_at);
  for (const p of pend) {
    items.push({
      kind: 'msg',
      pending: p,
      key: `c:${p.client_msg_id}`,
      m: { sender_id: S.me, content: p.content, media: p.media, created_at: p.created_at, seq: Infinity },
    });
  }
  return items;
}

function renderMessages(toBottom) {
  const chatId = S.openChatId;
  if (!chatId) return;
  const chat = S.chats.get(chatId);
  const log = getLog(chatId);
  const box = $('messages');
  const list = $('msg-list');
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;

  const wanted = [];
  let prev = null;
  let prevDay = null;
  for (const it of messageItems(chatId)) {
    const m = it.m;
    const day = new Date(m.created_at).toDateString();
    if (day !== prevDay) {
      wanted.push({ key: `d:${day}`, sig: dayLabel(m.created_at), make: () => h('div', { class: 'day-sep' }, dayLabel(m.created_at)) });
      prevDay = day;
      prev = null;
    }
    const mine = m.sender_id === S.me;
    const cont = prev && prev.sender_id === m.sender_id && m.created_at - prev.created_at < 5 * 60e3;
    const showSender = chat?.type === 'group' && !mine && !cont;
    const p = it.pending;
    const status = p ? (p.state === 'failed' ? 'failed' : 'pending') : mine ? statusOf(chat, m) : null;
    const fresh = m.media?.media_id ? S.mediaInfo?.get(m.media.media_id) : null;
    const sig = JSON.stringify([m.content, m.media?.media_id ?? m.media?.url ?? m.media_url ?? null, p?.state ?? null, p?.error ?? null, cont, showSender, m.seq, fresh ? (fresh.variants?.length ?? 0) + (fresh.poster ? 1 : 0) : null]);
    wanted.push({ key: it.key, sig, tick: status, make: () => messageEl(chatId, m, { mine, cont, showSender, pending: p, status }) });
    prev = m;
  }

  // Keyed reconcile: reuse nodes whose signature did not change, update ticks in place.
  const keep = new Set();
  let cursor = list.firstChild;
  for (const w of wanted) {
    keep.add(w.key);
    let node = msgView.nodes.get(w.key);
    if (node && node._sig !== w.sig) {
      const fresh = w.make();
      if (node.parentNode === list) {
        if (cursor === node) cursor = fresh;
        node.replaceWith(fresh);
      }
      node = fresh;
    } else if (node && w.tick && node._tick !== w.tick) {
      node.querySelector('.ticks')?.replaceWith(ticksEl(w.tick));
    }
    if (!node) node = w.make();
    node._sig = w.sig;
    node._tick = w.tick;
    node.dataset.key = w.key;
    msgView.nodes.set(w.key, node);
    if (cursor && cursor.parentNode !== list) cursor = null;
    if (node !== cursor) list.insertBefore(node, cursor);
    else cursor = cursor.nextSibling;
  }
  for (const [key, node] of msgView.nodes) {
    if (!keep.has(key)) {
      node.remove();
      msgView.nodes.delete(key);
    }
  }

  $('older').hidden = !(log.hasOlder || log.olderLoading);
  $('older-btn').textContent = log.olderLoading ? 'Loading…' : 'Load older messages';
  $('older-btn').disabled = log.olderLoading;
  if (log.loading && !wanted.length) {
    list.replaceChildren(h('div', { class: 'system-note' }, 'Loading messages…'));
    msgView.nodes.clear();
  } else if (log.loaded && !wanted.length) {
    list.replaceChildren(h('div', { class: 'system-note' }, 'No messages yet. Say hello!'));
    msgView.nodes.clear();
  } else {
    for (const n of [...list.children]) if (!n.dataset.key) n.remove();
  }

  if (toBottom || atBottom || msgView.pinned) {
    box.scrollTop = box.scrollHeight;
    msgView.pinned = true;
  }
  updateJumpButton();
}

function messageEl(chatId, m, { mine, cont, showSender, pending, status }) {
  const bubble = h('div', { class: 'bubble' });
  const media = renderMedia(m.media, m.media_url, pending);
  if (media) bubble.append(media);
  if (m.content) {
    const text = h('div', { class: 'text', dir: 'auto' });
    appendLinkified(text, m.content);
    bubble.append(text);
  }
  const t = new Date(m.created_at);
  bubble.append(h('div', { class: 'meta' },
    h('time', { datetime: t.toISOString(), title: fmtFull.format(t) }, fmtTime.format(t)),
    status ? ticksEl(status) : null));
  const el = h('div', {
    class: `msg${mine ? ' mine' : ''}${cont ? ' cont' : ''}${pending ? ' pending' : ''}${pending?.state === 'failed' ? ' failed' : ''}`,
    dataset: { seq: Number.isFinite(m.seq) ? String(m.seq) : '', sender: String(m.sender_id) },
  });
  el.style.setProperty('--h', hueOf(m.sender_id));
  if (showSender) el.append(h('span', { class: 'sender' }, userName(m.sender_id)));
  el.append(bubble);
  if (pending?.state === 'failed') {
    el.append(h('div', { class: 'fail-row', role: 'alert' },
      h('span', null, pending.error || 'Not sent'),
      pending.noRetry ? null : h('button', { type: 'button', class: 'retry', onclick: () => retryPending(chatId, pending.client_msg_id) }, 'Retry'),
      h('button', { type: 'button', class: 'discard', onclick: () => discardPending(chatId, pending.client_msg_id) }, 'Delete')));
  }
  return el;
}

/** Media that finished loading grew the list: stay at the bottom if we were there. */
function keepPinned() {
  if (msgView.pinned) $('messages').scrollTop = $('messages').scrollHeight;
}

function updateJumpButton() {
  const box = $('messages');
  $('jump-btn').hidden = box.scrollHeight - box.scrollTop - box.clientHeight < 200;
}

// ---- dialogs -----------------------------------------------------------------------------

function openNewChatDialog(tab = 'direct') {
  const d = $('new-chat-dialog');
  $('new-chat-error').hidden = true;
  selectTab(tab);
  d.showModal();
  (tab === 'direct' ? $('direct-user') : $('group-title')).focus();
}

function selectTab(tab) {
  for (const t of document.querySelectorAll('#new-chat-dialog .tab')) t.setAttribute('aria-selected', String(t.dataset.tab === tab));
  for (const p of document.querySelectorAll('#new-chat-dialog [data-panel]')) p.hidden = p.dataset.panel !== tab;
  $('new-chat-dialog').dataset.tab = tab;
}

async function submitNewChat(ev) {
  ev.preventDefault();
  const tab = $('new-chat-dialog').dataset.tab || 'direct';
  const err = $('new-chat-error');
  err.hidden = true;
  let body;
  if (tab === 'direct') {
    const id = Number($('direct-user').value);
    if (!Number.isSafeInteger(id) || id < 1) return showErr(err, 'Enter a user id (a positive number).');
    if (id === S.me) return showErr(err, 'That is you. Pick another user.');
    body = { type: 'direct', members: [id] };
  } else {
    const title = $('group-title').value.trim();
    if (!title) return showErr(err, 'Give the group a title.');
    const members = parseIds($('group-members').value).filter((id) => id !== S.me);
    body = { type: 'group', title, members };
  }
  $('new-chat-submit').disabled = true;
  try {
    const c = await api('POST', '/v1/chats', body);
    let chat = S.chats.get(c.chat_id);
    if (!chat || chat.placeholder) {
      chat = chatRecord(c);
      S.chats.set(c.chat_id, chat);
    } else if (c.members) {
      chat.members = c.members;
    }
    chat.detailsRequested = true;
    if (!chat.created_at) chat.created_at = now();
    $('new-chat-dialog').close();
    $('direct-user').value = '';
    $('group-title').value = '';
    $('group-members').value = '';
    render.list();
    openChat(c.chat_id);
  } catch (e) {
    showErr(err, e.message);
  } finally {
    $('new-chat-submit').disabled = false;
  }
}

function showErr(el, text) {
  el.textContent = text;
  el.hidden = false;
}

async function openInfo() {
  const chatId = S.openChatId;
  if (!chatId) return;
  $('info-error').hidden = true;
  renderInfo();
  if (!$('info-dialog').open) $('info-dialog').showModal();
  try {
    await loadChatDetails(chatId);
    const chat = S.chats.get(chatId);
    if (chat?.members) subscribePresence(chat.members.map((m) => m.user_id));
    renderInfo();
  } catch (e) {
    showErr($('info-error'), e.message);
  }
}

function myRole(chat) {
  return chat?.members?.find((m) => m.user_id === S.me)?.role || null;
}

function renderInfo() {
  const chat = S.chats.get(S.openChatId);
  if (!chat) return;
  $('info-title').textContent = chatTitle(chat);
  const created = chat.created_at ? `created ${fmtFull.format(new Date(chat.created_at))}` : '';
  $('info-meta').textContent = `${chat.type === 'group' ? 'Group' : 'Direct chat'} #${chat.chat_id}${created ? ` · ${created}` : ''}`;
  const isAdmin = chat.type === 'group' && myRole(chat) === 'admin';
  $('add-member-form').hidden = !isAdmin;
  $('leave-btn').hidden = chat.type !== 'group';
  renderInfoMembers();
}

function renderInfoMembers() {
  const chat = S.chats.get(S.openChatId);
  if (!chat) return;
  const isAdmin = chat.type === 'group' && myRole(chat) === 'admin';
  const members = [...(chat.members || [])].sort((a, b) =>
    (a.user_id === S.me ? -1 : 0) - (b.user_id === S.me ? -1 : 0) || (a.role === 'admin' ? -1 : 1) - (b.role === 'admin' ? -1 : 1) || a.user_id - b.user_id);
  $('members-heading').textContent = chat.members ? `Members (${members.length})` : 'Members';
  $('member-list').replaceChildren(...members.map((m) => {
    const p = S.presence.get(m.user_id);
    return h('li', { class: 'member', dataset: { userId: String(m.user_id) } },
      userAvatar(m.user_id),
      h('span', { class: 'member-main' },
        h('span', { class: 'member-name' }, m.user_id === S.me ? `${displayName(m.user_id)} (you)` : displayName(m.user_id)),
        h('small', null, m.user_id === S.me ? 'online' : p ? lastSeenText(p) : '')),
      m.role === 'admin' ? h('span', { class: 'role' }, 'admin') : null,
      isAdmin && m.user_id !== S.me
        ? h('button', { type: 'button', class: 'remove', onclick: () => removeMember(chat.chat_id, m.user_id) }, 'Remove')
        : null);
  }));
}

async function removeMember(chatId, userId) {
  if (!confirm(`Remove ${displayName(userId)} from this group?`)) return;
  try {
    await api('DELETE', `/v1/chats/${chatId}/members/${userId}`);
    await loadChatDetails(chatId);
    renderInfo();
    loadReceipts(chatId);
  } catch (e) {
    showErr($('info-error'), e.message);
  }
}

async function addMembers(ev) {
  ev.preventDefault();
  const chatId = S.openChatId;
  const ids = parseIds($('add-member-input').value);
  if (!ids.length) return showErr($('info-error'), 'Enter one or more user ids.');
  try {
    const c = await api('POST', `/v1/chats/${chatId}/members`, { user_ids: ids });
    const chat = S.chats.get(chatId);
    if (chat && c?.members) chat.members = learnNames(c.members);
    $('add-member-input').value = '';
    $('info-error').hidden = true;
    subscribePresence(ids);
    renderInfo();
    render.header();
    loadReceipts(chatId);
  } catch (e) {
    showErr($('info-error'), e.code === 'group_full' ? `The group is full: ${e.message}` : e.message);
  }
}

async function leaveGroup() {
  const chatId = S.openChatId;
  const chat = S.chats.get(chatId);
  if (!chat || !confirm(`Leave “${chatTitle(chat)}”?`)) return;
  try {
    await api('DELETE', `/v1/chats/${chatId}/members/${S.me}`);
    $('info-dialog').close();
    S.chats.delete(chatId);
    S.logs.delete(chatId);
    closeChat();
    render.list();
    toast('You left the group.');
  } catch (e) {
    showErr($('info-error'), e.message);
  }
}

// ---- sign-in / sign-out --------------------------------------------------------------------

function showSignIn(message) {
  $('app').hidden = true;
  $('signin').hidden = false;
  const err = $('signin-error');
  err.hidden = !message;
  err.textContent = message || '';
  $('dev-user').focus();
}

async function signInWith(token) {
  S.token = token;
  S.me = decodeJwtSub(token);
  try {
    await api('GET', '/v1/chats', undefined, { auth: true });
  } catch (e) {
    S.token = null;
    throw e.status === 401 ? new Error('The server rejected this token.') : e;
  }
  localStorage.setItem(LS_TOKEN, token);
  boot();
}

function resetState() {
  S.chats.clear();
  S.logs.clear();
  S.presence.clear();
  S.subscribed.clear();
  S.typing.clear();
  S.names.clear();
  S.openChatId = null;
  marks.pending.delivered.clear();
  marks.pending.read.clear();
  marks.sent.delivered.clear();
  marks.sent.read.clear();
  drafts.clear();
  conn.hellos = 0;
}

function signOut(message) {
  const had = !!S.token;
  conn.stop();
  S.token = null;
  S.me = null;
  localStorage.removeItem(LS_TOKEN);
  resetState();
  msgView.reset();
  if (location.hash) history.replaceState(null, '', location.pathname + location.search);
  for (const d of document.querySelectorAll('dialog[open]')) d.close();
  showSignIn(had ? message : undefined);
}

// ---- Web Push opt-in ----------------------------------------------------------------------
// A bell in the header, shown when the browser can do Web Push and the server has it on
// (GET /v1/push/vapid answers). Nothing is asked until the user clicks it: then the browser's
// permission prompt, a push subscription with the server's key, and POST /v1/devices. Clicking
// again turns it off (DELETE /v1/devices/{endpoint}, unsubscribe).

function b64urlBytes(s) {
  const b = atob(s.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (s.length % 4)) % 4));
  return Uint8Array.from(b, (c) => c.charCodeAt(0));
}

const webPush = {
  reg: null,
  key: null,
  supported() {
    return window.isSecureContext && 'serviceWorker' in navigator && 'PushManager' in window && 'Notification' in window;
  },
  render(on) {
    const btn = $('push-btn');
    btn.setAttribute('aria-pressed', on ? 'true' : 'false');
    const label = on ? 'Notifications are on for this device (click to turn off)' : 'Turn on notifications for this device';
    btn.title = label;
    btn.setAttribute('aria-label', label);
  },
  async setup() {
    const btn = $('push-btn');
    btn.hidden = true;
    if (!this.supported()) return;
    try {
      this.key = (await api('GET', '/v1/push/vapid')).public_key;
    } catch {
      return; // Web Push is off on this server (404), or push is not served here
    }
    btn.hidden = false;
    this.reg = await navigator.serviceWorker.getRegistration('/');
    const sub = this.reg ? await this.reg.pushManager.getSubscription() : null;
    this.render(!!sub && Notification.permission === 'granted');
  },
  async toggle() {
    const btn = $('push-btn');
    btn.disabled = true;
    try {
      const current = this.reg ? await this.reg.pushManager.getSubscription() : null;
      if (current) {
        await api('DELETE', `/v1/devices/${encodeURIComponent(current.endpoint)}`).catch(() => {});
        await current.unsubscribe().catch(() => {});
        this.render(false);
        toast('Notifications are off for this device.');
        return;
      }
      const permission = await Notification.requestPermission();
      if (permission !== 'granted') {
        toast('Notifications are blocked for this site. Allow them in the browser\'s site settings, then click the bell again.', { error: true });
        return;
      }
      this.reg = await navigator.serviceWorker.register('/sw.js');
      await navigator.serviceWorker.ready;
      const sub = await this.reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: b64urlBytes(this.key) });
      await api('POST', '/v1/devices', { platform: 'web', token: JSON.stringify(sub) });
      this.render(true);
      toast('Notifications are on: messages that arrive while Tern is closed will show up here.');
    } catch (e) {
      toast(`Could not turn notifications on: ${e.message}`, { error: true });
    } finally {
      btn.disabled = false;
    }
  },
};

function boot() {
  resetState();
  $('signin').hidden = true;
  $('app').hidden = false;
  $('chat-view').hidden = true;
  $('no-chat').hidden = false;
  renderMe();
  conn.start();
  probeMedia();
  webPush.setup().catch(() => {});
  loadChats().then(() => {
    const m = location.hash.match(/^#\/c\/(\d+)$/);
    if (m && S.chats.has(Number(m[1]))) openChat(Number(m[1]));
  }).catch((e) => {
    if (S.token) toast(`Could not load chats: ${e.message}`, { error: true });
  });
}

// ---- UI wiring -----------------------------------------------------------------------------

function autosize() {
  const ta = $('composer-input');
  if (!ta.offsetParent) {
    ta.style.height = ''; // hidden: measure again once shown
    return;
  }
  ta.style.height = 'auto';
  ta.style.height = `${Math.min(ta.scrollHeight + 2, 160)}px`;
}

let lastTypingSent = { chatId: null, at: 0 };

function onComposerInput() {
  autosize();
  const chatId = S.openChatId;
  if (!chatId || !$('composer-input').value.trim() || S.chats.get(chatId)?.gone) return;
  if (lastTypingSent.chatId !== chatId || now() - lastTypingSent.at >= 3000) {
    if (conn.send({ type: 'typing', chat_id: chatId })) lastTypingSent = { chatId, at: now() };
  }
}

function submitComposer(ev) {
  ev?.preventDefault();
  const chatId = S.openChatId;
  const ta = $('composer-input');
  const text = ta.value;
  if (!chatId || !text.trim()) return;
  if (new TextEncoder().encode(text).length > 16 * 1024) {
    toast('That message is too long (the limit is 16 KiB).', { error: true });
    return;
  }
  ta.value = '';
  drafts.delete(chatId);
  autosize();
  lastTypingSent = { chatId: null, at: 0 };
  sendText(chatId, text);
}

function moveChat(delta) {
  const ids = sortedChats().map((c) => c.chat_id);
  if (!ids.length) return;
  const i = ids.indexOf(S.openChatId);
  const next = ids[(i < 0 ? (delta > 0 ? -1 : 0) : i) + delta];
  if (next != null) openChat(next);
  else if (i < 0) openChat(ids[delta > 0 ? 0 : ids.length - 1]);
}

function wire() {
  $('dev-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const id = Number($('dev-user').value);
    if (!Number.isSafeInteger(id) || id < 1) return showSignIn('Enter a positive user id.');
    const btn = ev.submitter || $('dev-form').querySelector('button');
    btn.disabled = true;
    try {
      const r = await api('POST', '/v1/dev/token', { user_id: id }, { auth: false });
      await signInWith(r.token);
    } catch (e) {
      showSignIn(e.status === 404 ? 'Dev sign-in is off on this server (start it with --dev-auth), or paste a token below.' : e.message);
    } finally {
      btn.disabled = false;
    }
  });
  $('token-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const token = $('token-input').value.trim().replace(/^Bearer\s+/i, '');
    if (!token) return;
    try {
      await signInWith(token);
      $('token-input').value = '';
    } catch (e) {
      showSignIn(e.message);
    }
  });
  $('signout-btn').addEventListener('click', () => signOut());
  $('push-btn').addEventListener('click', () => webPush.toggle());
  $('new-chat-btn').addEventListener('click', () => openNewChatDialog());
  $('new-chat-form').addEventListener('submit', submitNewChat);
  for (const t of document.querySelectorAll('#new-chat-dialog .tab')) {
    t.addEventListener('click', () => selectTab(t.dataset.tab));
  }
  for (const b of document.querySelectorAll('dialog [data-close]')) {
    b.addEventListener('click', () => b.closest('dialog').close());
  }
  $('lightbox').addEventListener('click', (e) => { if (e.target === $('lightbox')) $('lightbox').close(); });
  $('chat-filter').addEventListener('input', (e) => {
    S.filter = e.target.value;
    renderChatList();
  });
  $('chat-filter').addEventListener('keydown', (e) => {
    if (e.key === 'Enter') {
      e.preventDefault(); // focus moves to the composer: the Enter must not land there
      const first = $('chat-list').querySelector('.chat-item');
      if (first) openChat(Number(first.dataset.chatId));
    } else if (e.key === 'ArrowDown') {
      e.preventDefault();
      $('chat-list').querySelector('.chat-item')?.focus();
    }
  });
  $('chat-list').addEventListener('keydown', (e) => {
    if (e.key !== 'ArrowDown' && e.key !== 'ArrowUp') return;
    const items = [...$('chat-list').querySelectorAll('.chat-item')];
    const i = items.indexOf(document.activeElement);
    if (i < 0) return;
    e.preventDefault();
    items[Math.max(0, Math.min(items.length - 1, i + (e.key === 'ArrowDown' ? 1 : -1)))].focus();
  });
  $('composer').addEventListener('submit', submitComposer);
  $('composer-input').addEventListener('input', onComposerInput);
  $('composer-input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && !e.altKey) {
      e.preventDefault();
      submitComposer();
    }
  });
  $('attach-btn').addEventListener('click', () => $('file-input').click());
  $('file-input').addEventListener('change', () => {
    const chatId = S.openChatId;
    const files = [...$('file-input').files];
    $('file-input').value = '';
    if (!chatId) return;
    const caption = $('composer-input').value.trim();
    files.forEach((f, i) => attachFile(chatId, f, { caption: i === 0 ? caption : '' }));
    if (caption) {
      $('composer-input').value = '';
      autosize();
    }
  });
  $('voice-btn').addEventListener('click', () => voice.toggle());
  $('voice-btn').hidden = typeof MediaRecorder === 'undefined';
  // Paste or drop files into the conversation.
  $('conversation').addEventListener('dragover', (e) => {
    if (S.openChatId && S.mediaSupported !== false && e.dataTransfer?.types?.includes('Files')) e.preventDefault();
  });
  $('conversation').addEventListener('drop', (e) => {
    if (!S.openChatId || S.mediaSupported === false || !e.dataTransfer?.files?.length) return;
    e.preventDefault();
    for (const f of e.dataTransfer.files) attachFile(S.openChatId, f);
  });
  $('composer-input').addEventListener('paste', (e) => {
    const files = [...(e.clipboardData?.files || [])];
    if (!files.length || !S.openChatId || S.mediaSupported === false) return;
    e.preventDefault();
    for (const f of files) attachFile(S.openChatId, f);
  });
  $('back-btn').addEventListener('click', () => closeChat());
  $('info-btn').addEventListener('click', openInfo);
  $('chat-title-btn').addEventListener('click', openInfo);
  $('add-member-form').addEventListener('submit', addMembers);
  $('leave-btn').addEventListener('click', leaveGroup);
  $('older-btn').addEventListener('click', loadOlder);
  $('jump-btn').addEventListener('click', () => {
    const box = $('messages');
    box.scrollTop = box.scrollHeight;
  });
  $('messages').addEventListener('scroll', () => {
    const box = $('messages');
    msgView.pinned = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
    if (box.scrollTop < 120) loadOlder();
    updateJumpButton();
    maybeMarkRead();
  }, { passive: true });
  $('conn-state').addEventListener('click', () => conn.reconnectNow());

  document.addEventListener('keydown', (e) => {
    if ($('app').hidden) return;
    const mod = e.ctrlKey || e.metaKey;
    if (mod && (e.key === 'k' || e.key === 'K')) {
      e.preventDefault();
      $('chat-filter').focus();
      $('chat-filter').select();
    } else if (e.altKey && (e.key === 'ArrowDown' || e.key === 'ArrowUp')) {
      e.preventDefault();
      moveChat(e.key === 'ArrowDown' ? 1 : -1);
    } else if (e.altKey && (e.key === 'n' || e.key === 'N')) {
      e.preventDefault();
      openNewChatDialog();
    } else if (e.key === 'Escape' && !document.querySelector('dialog[open]')) {
      if (document.activeElement === $('chat-filter') && $('chat-filter').value) {
        $('chat-filter').value = '';
        S.filter = '';
        renderChatList();
      } else if (S.openChatId) {
        const id = S.openChatId;
        closeChat();
        $('chat-list').querySelector(`.chat-item[data-chat-id="${id}"]`)?.focus();
      }
    }
  });

  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') {
      maybeMarkRead();
      conn.reconnectNow();
    }
  });
  window.addEventListener('focus', () => maybeMarkRead());
  window.addEventListener('online', () => {
    // Back online with the socket still up (the probe found it alive): say so again.
    if (conn.ready && conn.state === 'offline') conn.setState(conn.mode === 'longpoll' ? 'longpoll' : 'connected');
    conn.reconnectNow();
  });
  window.addEventListener('offline', () => {
    // Shown at once; the socket is probed: if nothing answers a ping within 3 s it is closed
    // and the usual reconnect (which waits for the network) takes over.
    conn.setState('offline');
    if (conn.ws && conn.ws.readyState === WebSocket.OPEN) {
      const ws = conn.ws;
      const sent = now();
      conn.send({ type: 'ping' });
      setTimeout(() => {
        if (conn.ws !== ws) return;
        if (conn.lastRx > sent) {
          if (navigator.onLine !== false) conn.setState('connected');
        } else {
          conn.ws = null;
          try { ws.close(4000, 'offline'); } catch { /* ignore */ }
          conn.onWsGone(true);
        }
      }, 3000);
    }
  });
  window.addEventListener('pagehide', () => {
    // A clean close lets the server mark us offline at once.
    if (conn.ws) try { conn.ws.close(1000, 'page closed'); } catch { /* ignore */ }
  });
  window.addEventListener('hashchange', () => {
    const m = location.hash.match(/^#\/c\/(\d+)$/);
    if (m && S.chats.has(Number(m[1]))) openChat(Number(m[1]));
    else if (!location.hash && S.openChatId) closeChat();
  });
  window.addEventListener('storage', (e) => {
    // Signed out (or in as someone else) in another tab.
    if (e.key === LS_TOKEN && e.newValue !== S.token) {
      if (!e.newValue) signOut('Signed out in another tab.');
      else location.reload();
    }
  });

  // Housekeeping: expire typing, refresh "last seen", resend stale pending, count down reconnects.
  setInterval(() => {
    if (!S.token) return;
    let typingChanged = false;
    const t = now();
    for (const [chatId, m] of S.typing) {
      for (const [uid, exp] of m) if (exp <= t) { m.delete(uid); typingChanged = true; }
      if (!m.size) S.typing.delete(chatId);
    }
    if (typingChanged) { render.typing(); render.list(); }
    if (conn.state === 'reconnecting') renderConnState();
  }, 1000);
  setInterval(() => {
    if (!S.token) return;
    render.header();
    if (conn.ready) resendPending(false);
  }, 15000);
}

// Debug handle (handy in the console and for tests).
window.tern = { state: S, conn, frames: recentFrames, handleFrame };

wire();
const saved = localStorage.getItem(LS_TOKEN);
if (saved) {
  S.token = saved;
  S.me = decodeJwtSub(saved);
  boot();
} else {
  showSignIn();
}
