/*
 * A room's messages, kept by seq: each is shown once, in seq order, with
 * its current state (edited, deleted, reactions), and the room's `since`
 * (lastSeq) only ever covers what is held.
 *
 * In protocol 1.1 a room's seq numbers every event: `chat` (a new
 * message), `edit`, `delete` and `reaction`, the last three naming their
 * message by `target`. History pages bring messages with those events
 * folded in. An event whose message is not held (not loaded yet, or its
 * page still on its way) is kept and applied when the message arrives;
 * applying an event twice changes nothing, so an event that a history page
 * had already folded in is harmless.
 */
import { S, activeRoom } from './state.js';
import { ui, renderOlder, nearBottom, scrollToBottom, setV11 } from './views.js';
import { renderMessage, updateMessage, setStatus, setTime, placeBySeq } from './msgview.js';
import { removeTyper } from './presence.js';
import { countLive, uncount, scheduleRead, seeing } from './unread.js';
import { notify } from './dm.js';
import { sealIn, reveal } from './e2e.js';

const ORPHANS_MAX = 500;          // events kept per room for messages not held

// The reactions of a message payload as emoji -> { count, users: Set }.
function readReactions(list) {
  const map = new Map();
  if (!Array.isArray(list)) return map;
  for (const r of list) {
    if (!r || typeof r.emoji !== 'string' || typeof r.count !== 'number' || r.count <= 0) continue;
    const users = new Set(Array.isArray(r.users) ? r.users.filter((u) => typeof u === 'string') : []);
    map.set(r.emoji, { count: Math.max(r.count, users.size), users });
  }
  return map;
}

function hold(room, p, node) {
  const entry = { p, node, reactions: readReactions(p.reactions) };
  if (p.deleted) {
    p.content = '';
    p.attachments = [];
    entry.reactions.clear();
  }
  room.msgs.set(p.seq, entry);
  if (p.deleted || p.edited || entry.reactions.size || p.lock) updateMessage(node, entry);
  if (room.e2e) reveal(room, entry);
  const waiting = room.orphans.filter((e) => e.p.target === p.seq);
  if (waiting.length) {
    room.orphans = room.orphans.filter((e) => e.p.target !== p.seq);
    for (const e of waiting) apply(entry, e.type, e.p);
  }
  return entry;
}

// Adds a chat payload to its room. Returns true if it was new. Dedup is
// by seq: a seq already held is never shown twice.
export function addChat(p, source) {
  const room = S.rooms.get(p.room);
  if (!room || typeof p.seq !== 'number') return false;
  const own = p.sender === S.me;
  // Live frames come in seq order, and history pages without `before` are
  // the newest and contiguous (older pages lie below), so the highest seq
  // seen in either is always a safe `since`.
  if (p.seq > room.lastSeq) room.lastSeq = p.seq;
  if (room.msgs.has(p.seq)) {
    // Already shown (say, our own, placed at its ack). Our own message may
    // also still be in the outbox (replayed after a reconnect before its
    // ack): keep it pending until acked.
    if (source === 'live' && room === activeRoom() && seeing(room)) scheduleRead();
    return false;
  }
  if (typeof p.content !== 'string') p.content = '';
  if (room.e2e) sealIn(p);
  let node = null;
  if (own && p.cid) {
    const m = S.outbox.find((x) => x.id === p.cid && x.room === p.room);
    if (m && m.node) {
      node = m.node;
      m.seq = p.seq;
      setTime(node, p.ts);
      setStatus(node, 'pending', 'sent, awaiting ack…');
      // Our own ciphertext: we know its text.
      if (p.sealed && m.wire && m.wire.content === p.sealed.content) sealIn(p, { local: true, content: m.content });
    }
  }
  if (!node) {
    node = renderMessage(p, own);
    if (p.cid) node.dataset.cid = p.cid;
  }
  const keepBottom = room === activeRoom() && nearBottom();
  placeBySeq(room, p.seq, node);
  hold(room, p, node);
  if (p.seq < room.oldest) room.oldest = p.seq;
  if (p.seq === 1) room.more = false;
  if (source === 'live' && !own) {
    removeTyper(room, p.sender);
    if (!p.deleted) countLive(room, p.seq);
    if (room.dm && !p.deleted && p.seq > room.countedTo && (room !== activeRoom() || document.hidden)) {
      notify(p.sender, p.content.slice(0, 140), room.name, () => S.openRoom(room.name));
    }
  }
  if (room === activeRoom() && room.msgs.size === 1) renderOlder();
  if (room === activeRoom() && source !== 'history') {
    if (keepBottom || own) scrollToBottom();
    else ui.jump.hidden = false;
    if (seeing(room)) scheduleRead();
  }
  return true;
}

// Our own message, acked before its broadcast reached us: it takes its
// place by seq now, and the broadcast, when it comes, is dropped by seq.
// lastSeq is not advanced: earlier seqs may still be on their way.
export function placeAcked(room, p, node) {
  const keepBottom = room === activeRoom() && nearBottom();
  if (p.ts) setTime(node, p.ts);
  placeBySeq(room, p.seq, node);
  hold(room, p, node);
  if (p.seq < room.oldest) room.oldest = p.seq;
  if (keepBottom) scrollToBottom();
  if (room === activeRoom() && room.msgs.size === 1) renderOlder();
}

// Applies one event to a held message; safe to repeat.
function apply(entry, type, p) {
  const m = entry.p;
  const room = S.rooms.get(m.room);
  if (m.deleted) return;
  if (type === 'edit') {
    if (typeof p.content !== 'string') return;
    // An edit older than the state shown (a late copy) changes nothing.
    if (m.edited && typeof p.ts === 'number' && p.ts < m.edited) return;
    m.content = p.content;
    if (Array.isArray(p.attachments)) m.attachments = p.attachments;
    m.edited = typeof p.ts === 'number' ? p.ts : Date.now();
    if (room && room.e2e) sealIn(m, p);
  } else if (type === 'delete') {
    m.deleted = true;
    m.sealed = null;
    m.lock = null;
    m.content = '';
    m.attachments = [];
    entry.reactions.clear();
  } else if (type === 'reaction') {
    if (typeof p.emoji !== 'string' || typeof p.sender !== 'string') return;
    let r = entry.reactions.get(p.emoji);
    if (p.on) {
      if (!r) entry.reactions.set(p.emoji, r = { count: 0, users: new Set() });
      if (r.users.has(p.sender)) return;
      r.users.add(p.sender);
      r.count += 1;
    } else {
      if (!r) return;
      if (r.users.has(p.sender)) r.users.delete(p.sender);
      else if (r.count <= r.users.size) return;     // not among the (at most 20) listed: unknown
      r.count -= 1;
      if (r.count <= 0) entry.reactions.delete(p.emoji);
    }
  } else {
    return;
  }
  updateMessage(entry.node, entry);
  if (type === 'edit' && room && room.e2e) reveal(room, entry);
}

// An edit, delete or reaction frame (source 'live': broadcast or replay;
// 'ack': our own, answered before its broadcast came).
export function onEvent(type, p, source) {
  const room = S.rooms.get(p.room);
  if (!room || typeof p.target !== 'number') return;
  if (!S.v11) setV11(true);
  // Events share the room's seq: `since` must cover them too. An ack may
  // overtake earlier seqs still on their way, so it does not count.
  if (source === 'live' && typeof p.seq === 'number' && p.seq > room.lastSeq) room.lastSeq = p.seq;
  const entry = room.msgs.get(p.target);
  if (!entry) {
    room.orphans.push({ type, p });
    if (room.orphans.length > ORPHANS_MAX) room.orphans.shift();
    return;
  }
  const wasDeleted = entry.p.deleted;
  apply(entry, type, p);
  if (type === 'delete' && !wasDeleted && entry.p.sender !== S.me && typeof p.seq === 'number') {
    uncount(room, p.seq, p.target);
  }
  if (source === 'live' && room === activeRoom() && seeing(room)) scheduleRead();
}

// The newest message of ours in room that may still be edited.
export function lastOwn(room) {
  let best = null;
  for (const [seq, e] of room.msgs) {
    if (e.p.sender === S.me && !e.p.deleted && (!best || seq > best)) best = seq;
  }
  return best;
}
