/*
 * The WebSocket: connecting, reconnecting with exponential backoff and
 * jitter, noticing a dead link, request ids, and the client's side of the
 * server's rate limit. It knows nothing of rooms: frames, the link going
 * down and state changes go up through the hooks main.js sets.
 */
import { S } from './state.js';

const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 15000;
const CONNECT_TIMEOUT_MS = 10000;

const hooks = {
  frame: (msg) => {},               // every parsed frame, in order
  down: (code, reason) => {},       // the link is gone; a reconnect is scheduled
  state: (state, detail) => {},     // connecting | online | reconnecting, with a text
};

export function setHooks(h) {
  Object.assign(hooks, h);
}

export function nextId(kind) {
  S.idSeq += 1;
  return kind + '-' + S.idPrefix + '-' + S.idSeq.toString(36);
}

export function send(obj) {
  if (!S.ws || S.ws.readyState !== WebSocket.OPEN) return false;
  try {
    S.ws.send(JSON.stringify(obj));
    return true;
  } catch (e) {
    return false;
  }
}

// Sends a request whose answer is matched by its id to meta (kept in
// S.requests until the answer comes or the link goes; meta.kind defaults
// to the type). Returns the id.
export function request(type, payload, meta) {
  const id = nextId(type.slice(0, 1));
  S.requests.set(id, Object.assign({ kind: type }, meta || {}));
  send({ type, id, payload });
  return id;
}

// A request answered through a promise: resolved with the answer frame,
// rejected with an Error whose code is the error frame's code, 'timeout',
// or 'gone' (the link dropped first).
export function ask(type, payload, ms) {
  return new Promise((resolve, reject) => {
    if (!S.ws || S.conn !== 'online') {
      reject(Object.assign(new Error('offline'), { code: 'gone' }));
      return;
    }
    let id = null;
    const t = setTimeout(() => {
      S.requests.delete(id);
      reject(Object.assign(new Error('no answer to ' + type), { code: 'timeout' }));
    }, ms || 15000);
    id = request(type, payload, {
      resolve: (msg) => { clearTimeout(t); resolve(msg); },
      reject: (e) => { clearTimeout(t); reject(e); },
    });
  });
}

// Who we are, as a query parameter: the WebSocket upgrade and the files
// endpoint take the same identity (an <img> cannot send a header).
export function identQuery() {
  if (!S.ident) return '';
  return S.ident.token ? 'token=' + encodeURIComponent(S.ident.token) : 'user=' + encodeURIComponent(S.ident.user);
}

function wsUrl() {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return proto + '//' + location.host + '/ws?' + identQuery();
}

export function connect() {
  clearTimeout(S.reconnectTimer);
  S.reconnectTimer = null;
  S.gen += 1;
  const gen = S.gen;
  S.connectStarted = Date.now();
  hooks.state(S.everOnline ? 'reconnecting' : 'connecting');
  let ws;
  try {
    ws = new WebSocket(wsUrl());
  } catch (e) {
    scheduleReconnect();
    return;
  }
  S.ws = ws;
  S.welcomed = false;
  ws.onopen = () => {
    if (gen !== S.gen) return;
    S.openedAt = Date.now();
    S.lastFrameAt = Date.now();
  };
  ws.onmessage = (ev) => {
    if (gen !== S.gen) return;
    S.lastFrameAt = Date.now();
    let msg;
    try { msg = JSON.parse(ev.data); } catch (e) { return; }
    if (msg && typeof msg === 'object' && typeof msg.type === 'string') hooks.frame(msg);
  };
  ws.onclose = (ev) => {
    if (gen !== S.gen) return;
    disconnected(ev.code, ev.reason);
  };
  ws.onerror = () => { /* onclose follows with the details */ };
}

// Drops the socket (late events of it are ignored), tells the upper
// layers, and schedules the next attempt.
export function disconnected(code, reason) {
  const ws = S.ws;
  S.ws = null;
  S.gen += 1;
  if (ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try { ws.close(); } catch (e) { /* already closed */ }
  }
  const waiting = Array.from(S.requests.values());
  S.requests.clear();
  for (const r of waiting) if (r.reject) r.reject(Object.assign(new Error('connection lost'), { code: 'gone' }));
  if (!S.welcomed) S.failedNoWelcome += 1;
  if (S.openedAt && Date.now() - S.openedAt > 5000) S.attempt = 0;
  S.openedAt = 0;
  hooks.down(code, reason);
  scheduleReconnect();
}

function scheduleReconnect() {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * Math.pow(2, S.attempt));
  // "Equal jitter": at least half the ceiling, so a crowd of clients
  // spreads out but none hammers the server right away.
  const delay = Math.round(ceiling / 2 + Math.random() * ceiling / 2);
  S.attempt += 1;
  S.reconnectAt = Date.now() + delay;
  clearTimeout(S.reconnectTimer);
  S.reconnectTimer = setTimeout(connect, delay);
  tickConn();
}

function tickConn() {
  if (S.ws || !S.reconnectTimer) return;
  const left = Math.max(0, Math.ceil((S.reconnectAt - Date.now()) / 1000));
  hooks.state(S.everOnline ? 'reconnecting' : 'connecting',
    (S.everOnline ? 'reconnecting' : 'connecting') + (left > 0 ? ' in ' + left + 's' : '…'));
}

// Back online (the browser says so): no reason to sit out the backoff.
export function connectNow() {
  if (!S.ws && S.ident) connect();
}

// Once a second: the reconnect countdown, a JSON ping so a dead link is
// noticed (browsers hide WebSocket pings from scripts), and a connect that
// hangs. Returns whether the link is (still) up.
let lastPing = 0;
export function tick() {
  const now = Date.now();
  tickConn();
  if (S.ws && S.conn === 'online') {
    const hb = S.heartbeat * 1000;
    if (now - lastPing > hb / 2) {
      lastPing = now;
      send({ type: 'ping', id: nextId('k') });
    }
    if (now - S.lastFrameAt > 2 * hb + 5000) {
      disconnected(4000, 'no answer');
      return false;
    }
    return true;
  }
  if (S.ws && S.ws.readyState === WebSocket.CONNECTING && S.openedAt === 0 &&
      now - (S.connectStarted || now) > CONNECT_TIMEOUT_MS) {
    disconnected(4001, 'connect timeout');
  }
  return false;
}

// ------------------------------------------------------- rate limit
// The same token bucket as the server's (chat + typing), a little
// slower, so the client never provokes rate_limited on its own.
export function resetTokens() {
  S.tokens = S.limits.burst;
  S.tokensAt = performance.now();
}

export function takeToken() {
  const now = performance.now();
  const rate = Math.max(1, S.limits.rate * 0.9);
  S.tokens = Math.min(S.limits.burst, S.tokens + (now - S.tokensAt) * rate / 1000);
  S.tokensAt = now;
  if (S.tokens >= 1) {
    S.tokens -= 1;
    return true;
  }
  return false;
}

export function msUntilToken() {
  const rate = Math.max(1, S.limits.rate * 0.9);
  return Math.ceil((1 - S.tokens) * 1000 / rate) + 5;
}
