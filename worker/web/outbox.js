/*
 * What we sent and the server has not acked yet. Every message carries an
 * id and stays "pending" until its ack (durable); it is resent with the
 * same id after a reconnect, or when no answer came in time, until acked,
 * so the server's deduplication makes retries harmless. The outbox
 * survives a reload, so a message typed just before the tab was closed is
 * still sent (once: same id) when it comes back.
 */
import { ROOM_RE, el } from './util.js';
import { S, storeKey } from './state.js';
import { send, nextId, takeToken, msUntilToken } from './conn.js';
import { ui, showBanner } from './views.js';
import { renderPending, setStatus } from './msgview.js';
import { placeAcked } from './messages.js';

const ACK_TIMEOUT_MS = 15000;     // resend (same id) if no answer by then

let flushTimer = null;

function newItem(id, room, content, attachments, at) {
  return {
    id, room, content, attachments, at,
    state: 'pending', sentGen: -1, sentAt: 0, tries: 0, retryAt: 0, node: null,
  };
}

function save() {
  const items = S.outbox.filter((m) => m.state !== 'failed')
    .map((m) => ({ id: m.id, room: m.room, content: m.content, attachments: m.attachments, at: m.at }));
  try { localStorage.setItem(storeKey('outbox'), JSON.stringify(items)); } catch (e) { /* ignore */ }
}

// Puts back what a previous page left unacked; roomOf(name) gives (and
// creates when needed) the room.
export function restore(roomOf) {
  let items = [];
  try { items = JSON.parse(localStorage.getItem(storeKey('outbox')) || '[]'); } catch (e) { items = []; }
  if (!Array.isArray(items)) return;
  for (const it of items) {
    if (!it || typeof it.id !== 'string' || typeof it.room !== 'string' || !ROOM_RE.test(it.room)) continue;
    if (typeof it.content !== 'string' || S.outbox.some((m) => m.id === it.id)) continue;
    const room = roomOf(it.room);
    const m = newItem(it.id, it.room, it.content, Array.isArray(it.attachments) ? it.attachments : [],
      typeof it.at === 'number' ? it.at : Date.now());
    m.node = renderPending(m);
    room.pending.append(m.node);
    S.outbox.push(m);
  }
}

// A new message from the composer: shown pending at once, sent when it can.
export function queueChat(room, content, attachments) {
  const m = newItem(nextId('c'), room.name, content, attachments, Date.now());
  m.node = renderPending(m);
  room.pending.append(m.node);
  S.outbox.push(m);
  save();
  flush();
}

function scheduleFlush(ms) {
  if (flushTimer) return;
  flushTimer = setTimeout(() => { flushTimer = null; flush(); }, Math.max(0, ms));
}

// Sends every unacked message that is not in flight on this connection,
// in order per room: a room whose head cannot go yet holds the rest back,
// so a room's messages get their seqs in the order they were written.
export function flush() {
  if (S.conn !== 'online') return;
  const blocked = new Set();
  const now = Date.now();
  for (const m of S.outbox) {
    if (m.state !== 'pending' || blocked.has(m.room)) continue;
    const room = S.rooms.get(m.room);
    if (!room || !room.joined) { blocked.add(m.room); continue; }
    if (m.sentGen === S.gen && now - m.sentAt < ACK_TIMEOUT_MS) continue;
    if (m.retryAt > now) { blocked.add(m.room); scheduleFlush(m.retryAt - now); continue; }
    if (!takeToken()) { scheduleFlush(msUntilToken()); return; }
    const payload = { room: m.room, content: m.content };
    if (m.attachments.length) payload.attachments = m.attachments;
    if (!send({ type: 'chat', id: m.id, payload })) return;
    m.sentGen = S.gen;
    m.sentAt = now;
    setStatus(m.node, 'pending', m.tries || m.resent ? 'resending…' : 'sending…');
    m.resent = true;
  }
}

// Whether something sent on this connection is overdue for its answer.
export function overdue() {
  const now = Date.now();
  return S.outbox.some((m) => m.state === 'pending' && m.sentGen === S.gen && now - m.sentAt >= ACK_TIMEOUT_MS);
}

export function onAck(id, p) {
  const i = S.outbox.findIndex((m) => m.id === id);
  if (i < 0) return;
  const m = S.outbox[i];
  S.outbox.splice(i, 1);
  save();
  const room = S.rooms.get(m.room);
  m.state = 'acked';
  m.seq = p.seq;
  const node = m.node;
  node.dataset.ts = String(p.ts || m.at);
  setStatus(node, 'acked', p.duplicate ? 'delivered (retry)' : 'delivered');
  node.querySelector('.status').title = 'Stored as #' + p.seq + (p.duplicate ? ' (an earlier send had already arrived)' : '');
  if (!room) return;
  const held = room.msgs.get(p.seq);
  if (held && held.node !== node) {
    // The broadcast (e.g. a replay) got here first and is already shown:
    // mark that one delivered and drop the pending copy.
    node.remove();
    setStatus(held.node, 'acked', 'delivered');
    return;
  }
  if (!held) {
    placeAcked(room, { room: m.room, seq: p.seq, sender: S.me, content: m.content, attachments: m.attachments, ts: p.ts, cid: m.id }, node);
  }
}

// An error answering one of ours. Returns false when id is not ours.
export function onError(id, code, text) {
  const m = id ? S.outbox.find((x) => x.id === id) : null;
  if (!m) return false;
  if (code === 'rate_limited' || code === 'unavailable' || code === 'not_joined' || code === 'internal') {
    // Transient: the same id goes again later (dedup makes it safe).
    m.tries += 1;
    m.sentGen = -1;
    m.retryAt = Date.now() + Math.min(10000, 500 * Math.pow(2, m.tries));
    setStatus(m.node, 'pending', code === 'rate_limited' ? 'slowed down, retrying…' : 'retrying…');
    scheduleFlush(m.retryAt - Date.now());
    showBanner(text, code === 'unavailable' ? 'error' : '', 6000);
  } else {
    fail(m, text);
  }
  return true;
}

function fail(m, text) {
  m.state = 'failed';
  const i = S.outbox.indexOf(m);
  if (i >= 0) S.outbox.splice(i, 1);
  save();
  const st = setStatus(m.node, 'failed', 'not sent: ' + text + ' ');
  const retry = el('button', null, 'Edit');
  retry.type = 'button';
  retry.addEventListener('click', () => {
    ui.input.value = m.content;
    m.node.remove();
    ui.input.focus();
  });
  const drop = el('button', null, 'Dismiss');
  drop.type = 'button';
  drop.addEventListener('click', () => m.node.remove());
  st.append(retry, drop);
}

// The link went down: what is pending waits for the next one.
export function markWaiting() {
  for (const m of S.outbox) if (m.state === 'pending') setStatus(m.node, 'pending', 'waiting for connection…');
}

// A room was left: what we had not sent there is dropped.
export function dropRoom(name) {
  S.outbox = S.outbox.filter((m) => m.room !== name);
  save();
}
