/*
 * What we sent and the server has not acked yet: messages, and (protocol
 * 1.1) edits, deletes and reactions, which share the room's seq and its
 * deduplication. Each carries an id and stays pending until its ack
 * (durable); it is resent with the same id after a reconnect, or when no
 * answer came in time, until acked, so the server's deduplication makes
 * retries harmless. The outbox survives a reload, so a message typed just
 * before the tab was closed is still sent (once: same id) when it comes
 * back.
 */
import { el } from './util.js';
import { S, storeKey } from './state.js';
import { validRoom } from './dm.js';
import { send, nextId, takeToken, msUntilToken } from './conn.js';
import { ui, showBanner } from './views.js';
import { renderPending, setStatus } from './msgview.js';
import { placeAcked, onEvent } from './messages.js';
import { sealOut } from './e2e.js';

const ACK_TIMEOUT_MS = 15000;     // resend (same id) if no answer by then
const EVENTS = { edit: 'edit', delete: 'delete', react: 'reaction' };   // request -> broadcast
const FAILED = { edit: 'Could not edit the message: ', delete: 'Could not delete the message: ',
  react: 'Could not react: ' };

let flushTimer = null;

function newItem(id, type, room, at, fields) {
  return Object.assign({
    id, type, room, at,
    state: 'pending', sentGen: -1, sentAt: 0, tries: 0, retryAt: 0, node: null,
  }, fields);
}

function save() {
  const items = S.outbox.filter((m) => m.state !== 'failed').map((m) => (m.type === 'chat'
    ? { id: m.id, room: m.room, content: m.content, attachments: m.attachments, at: m.at }
    : { id: m.id, type: m.type, room: m.room, payload: m.payload, at: m.at }));
  try { localStorage.setItem(storeKey('outbox'), JSON.stringify(items)); } catch (e) { /* ignore */ }
}

// Puts back what a previous page left unacked; roomOf(name) gives (and
// creates when needed) the room.
export function restore(roomOf) {
  let items = [];
  try { items = JSON.parse(localStorage.getItem(storeKey('outbox')) || '[]'); } catch (e) { items = []; }
  if (!Array.isArray(items)) return;
  for (const it of items) {
    if (!it || typeof it.id !== 'string' || !validRoom(it.room) || S.outbox.some((m) => m.id === it.id)) continue;
    const at = typeof it.at === 'number' ? it.at : Date.now();
    if (it.type === undefined || it.type === 'chat') {
      if (typeof it.content !== 'string') continue;
      const room = roomOf(it.room);
      const m = newItem(it.id, 'chat', it.room, at,
        { content: it.content, attachments: Array.isArray(it.attachments) ? it.attachments : [] });
      m.node = renderPending(m);
      room.pending.append(m.node);
      S.outbox.push(m);
    } else if (EVENTS[it.type] && it.payload && it.payload.room === it.room && typeof it.payload.target === 'number') {
      roomOf(it.room);
      S.outbox.push(newItem(it.id, it.type, it.room, at, { payload: it.payload }));
    }
  }
}

// A new message from the composer: shown pending at once, sent when it can.
export function queueChat(room, content, attachments) {
  const m = newItem(nextId('c'), 'chat', room.name, Date.now(), { content, attachments });
  m.node = renderPending(m);
  room.pending.append(m.node);
  S.outbox.push(m);
  save();
  flush();
}

// An edit, delete or react request on a held message (payload.target).
// Its effect shows when the ack (or the broadcast) comes.
export function queueEvent(type, room, payload) {
  const m = newItem(nextId(type.slice(0, 1)), type, room.name, Date.now(), { payload });
  S.outbox.push(m);
  busy(m, true);
  save();
  flush();
}

// Marks the message an edit or delete is about while the request waits.
function busy(m, on) {
  if (m.type === 'chat' || m.type === 'react') return;
  const room = S.rooms.get(m.room);
  const held = room && room.msgs.get(m.payload.target);
  if (held) held.node.classList.toggle('saving', on);
}

function scheduleFlush(ms) {
  if (flushTimer) return;
  flushTimer = setTimeout(() => { flushTimer = null; flush(); }, Math.max(0, ms));
}

// Sends everything unacked that is not in flight on this connection, in
// order per room: a room whose head cannot go yet holds the rest back, so
// a room's events get their seqs in the order they were written.
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
    if (room.e2e && (m.type === 'chat' || m.type === 'edit') && !m.wire) {
      // Sealed first (and a fresh room key made when needed); sent after.
      blocked.add(m.room);
      if (!m.sealing) {
        sealOut(m, room).then(() => flush(), (e) => {
          if (m.node) setStatus(m.node, 'pending', 'encrypting failed (' + (e.code || e.message) + '), retrying…');
          m.retryAt = Date.now() + 3000;
          scheduleFlush(3000);
        });
      }
      continue;
    }
    if (!takeToken()) { scheduleFlush(msUntilToken()); return; }
    let payload = m.wire || m.payload;
    if (m.type === 'chat' && !m.wire) {
      payload = { room: m.room, content: m.content };
      if (m.attachments.length) payload.attachments = m.attachments;
    }
    if (!send({ type: m.type, id: m.id, payload })) return;
    m.sentGen = S.gen;
    m.sentAt = now;
    if (m.node) setStatus(m.node, 'pending', m.tries || m.resent ? 'resending…' : 'sending…');
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
  m.state = 'acked';
  if (m.type !== 'chat') {
    busy(m, false);
    // local: the plain text we wrote, not what went on the wire.
    onEvent(EVENTS[m.type], Object.assign({}, m.payload, { seq: p.seq, ts: p.ts, sender: S.me, local: true }), 'ack');
    return;
  }
  const room = S.rooms.get(m.room);
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
    placeAcked(room, { room: m.room, seq: p.seq, sender: S.me, content: m.content, attachments: m.attachments, ts: p.ts, cid: m.id,
      keyId: m.wire && m.wire.e2e ? m.wire.e2e.keyId : undefined }, node);
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
    if (m.node) setStatus(m.node, 'pending', code === 'rate_limited' ? 'slowed down, retrying…' : 'retrying…');
    scheduleFlush(m.retryAt - Date.now());
    showBanner(text, code === 'unavailable' ? 'error' : '', 6000);
  } else if (m.type === 'chat') {
    fail(m, text);
  } else {
    drop(m);
    busy(m, false);
    showBanner(FAILED[m.type] + text, 'error', 8000);
  }
  return true;
}

function drop(m) {
  m.state = 'failed';
  const i = S.outbox.indexOf(m);
  if (i >= 0) S.outbox.splice(i, 1);
  save();
}

function fail(m, text) {
  drop(m);
  const st = setStatus(m.node, 'failed', 'not sent: ' + text + ' ');
  const retry = el('button', null, 'Edit');
  retry.type = 'button';
  retry.addEventListener('click', () => {
    ui.input.value = m.content;
    m.node.remove();
    ui.input.focus();
  });
  const dismiss = el('button', null, 'Dismiss');
  dismiss.type = 'button';
  dismiss.addEventListener('click', () => m.node.remove());
  st.append(retry, dismiss);
}

// The link went down: what is pending waits for the next one.
export function markWaiting() {
  for (const m of S.outbox) {
    // Sealed again when it goes: the room's key may change meanwhile.
    m.wire = null;
    if (m.state === 'pending' && m.node) setStatus(m.node, 'pending', 'waiting for connection…');
  }
}

// A room was left: what we had not sent there is dropped.
export function dropRoom(name) {
  S.outbox = S.outbox.filter((m) => m.room !== name);
  save();
}
