/*
 * A room's messages, kept by seq: each is shown once, in seq order, and
 * the room's `since` (lastSeq) only ever covers what is held.
 */
import { S, activeRoom } from './state.js';
import { ui, renderRooms, renderOlder, nearBottom, scrollToBottom } from './views.js';
import { renderMessage, setStatus, setTime, placeBySeq } from './msgview.js';
import { removeTyper } from './presence.js';

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
    return false;
  }
  let node = null;
  if (own && p.cid) {
    const m = S.outbox.find((x) => x.id === p.cid && x.room === p.room);
    if (m && m.node) {
      node = m.node;
      m.seq = p.seq;
      setTime(node, p.ts);
      setStatus(node, 'pending', 'sent, awaiting ack…');
    }
  }
  if (!node) {
    node = renderMessage(p, own);
    if (p.cid) node.dataset.cid = p.cid;
  }
  const keepBottom = room === activeRoom() && nearBottom();
  placeBySeq(room, p.seq, node);
  room.msgs.set(p.seq, { p, node });
  if (p.seq < room.oldest) room.oldest = p.seq;
  if (p.seq === 1) room.more = false;
  if (source === 'live' && !own) {
    removeTyper(room, p.sender);
    if (room !== activeRoom() || document.hidden) {
      room.unread += 1;
      renderRooms();
    }
  }
  if (room === activeRoom() && room.msgs.size === 1) renderOlder();
  if (room === activeRoom() && source !== 'history') {
    if (keepBottom || own) scrollToBottom();
    else ui.jump.hidden = false;
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
  room.msgs.set(p.seq, { p, node });
  if (p.seq < room.oldest) room.oldest = p.seq;
  if (keepBottom) scrollToBottom();
  if (room === activeRoom() && room.msgs.size === 1) renderOlder();
}
