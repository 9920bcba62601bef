/*
 * Rooms: the per-room state (messages by seq, `since`, paging, unread,
 * members), joining and rejoining with `since` after a reconnect,
 * opening, leaving, and paging history.
 */
import { el, clear, urlWith } from './util.js';
import { S, activeRoom, saveRooms } from './state.js';
import { send, nextId, request } from './conn.js';
import { ui, renderRooms, renderPresence, renderTyping, renderOlder, nearBottom, scrollToBottom } from './views.js';
import { addChat } from './messages.js';
import { requestPresence, clearTypers } from './presence.js';
import { flush, dropRoom } from './outbox.js';
import { stopTyping } from './composer.js';

const HISTORY_PAGE = 50;

function newRoom(name) {
  const view = el('div', 'room-view');
  const list = el('ol', 'msgs');
  const pending = el('ol', 'pending-list');
  view.append(list, pending);
  view.hidden = true;
  ui.views.append(view);
  return {
    name,
    joined: false,         // joined on the current connection
    joinedOnce: false,     // joined on some connection: rejoin with since
    joinGen: -1,           // the connection a join was sent on
    lastSeq: 0,            // highest seq held; `since` on rejoin
    msgs: new Map(),       // seq -> { p: payload, node }
    oldest: Infinity,
    more: true,
    loadingOlder: false,
    unread: 0,
    members: new Set(),
    typers: new Map(),     // user -> expiry timer
    error: null,
    view, list, pending,
    stickToBottom: true,
    scrollTop: undefined,
  };
}

export function ensureRoom(name, select) {
  let room = S.rooms.get(name);
  if (!room) {
    room = newRoom(name);
    S.rooms.set(name, room);
    S.order.push(name);
    saveRooms();
    if (S.conn === 'online') sendJoin(room);
  }
  if (select || !S.active) selectRoom(name);
  else renderRooms();
  return room;
}

export function selectRoom(name) {
  const prev = activeRoom();
  if (prev && prev.name !== name) {
    prev.stickToBottom = nearBottom();
    prev.scrollTop = ui.log.scrollTop;
    prev.view.hidden = true;
    stopTyping();
  }
  const room = S.rooms.get(name);
  if (!room) return;
  S.active = name;
  room.view.hidden = false;
  room.unread = 0;
  ui.roomName.textContent = name;
  ui.input.placeholder = 'Message #' + name;
  ui.jump.hidden = true;
  renderRooms();
  renderPresence();
  renderTyping();
  renderOlder();
  if (room.stickToBottom || room.scrollTop === undefined) scrollToBottom();
  else ui.log.scrollTop = room.scrollTop;
  if (room.joined) requestPresence(room);
  try { history.replaceState(null, '', urlWith({ room: name })); } catch (e) { /* file: */ }
  maybeLoadOlder();
}

export function leaveRoom(name) {
  const room = S.rooms.get(name);
  if (!room) return;
  if (S.conn === 'online' && room.joined) send({ type: 'leave', id: nextId('l'), payload: { room: name } });
  dropRoom(name);
  room.view.remove();
  S.rooms.delete(name);
  S.order = S.order.filter((n) => n !== name);
  saveRooms();
  if (S.active === name) {
    S.active = null;
    if (S.order.length) selectRoom(S.order[0]);
    else {
      ui.roomName.textContent = '';
      renderRooms(); renderPresence(); renderTyping(); renderOlder();
    }
  } else {
    renderRooms();
  }
}

export function sendJoin(room) {
  // One join per room per connection: a second one would be answered
  // with recovered:false and look like a gap.
  if (room.joinGen === S.gen) return;
  room.joinGen = S.gen;
  const payload = { room: room.name };
  if (room.joinedOnce) payload.since = room.lastSeq;
  request('join', payload, { room: room.name });
}

// The link went down: every room needs joining again.
export function roomsDown() {
  for (const room of S.rooms.values()) {
    room.joined = false;
    room.loadingOlder = false;
    clearTypers(room);
  }
}

export function onJoined(p) {
  const room = S.rooms.get(p.room);
  if (!room) return;
  if (room.joined) return;
  const rejoin = room.joinedOnce;
  room.joined = true;
  room.joinedOnce = true;
  room.error = null;
  if (rejoin && p.recovered === false) {
    // Too much was missed for a replay: start over from the newest page.
    for (const { node } of room.msgs.values()) node.remove();
    clear(room.list);
    room.msgs.clear();
    room.oldest = Infinity;
    room.more = true;
    room.list.append(el('li', 'notice', 'You were away for a while: showing the latest messages.'));
  }
  if (typeof p.seq === 'number' && p.seq > room.lastSeq && !(rejoin && p.recovered)) {
    // No replay follows a plain join: everything up to seq comes from
    // history, so since starts here.
    room.lastSeq = p.seq;
  }
  if (!rejoin || p.recovered === false) {
    if (p.seq > 0) requestHistory(room, undefined, 'initial');
    else room.more = false;
  }
  requestPresence(room);
  renderRooms();
  if (room === activeRoom()) renderOlder();
  flush();
}

// An error answering our join.
export function joinFailed(name, text) {
  const room = S.rooms.get(name);
  if (room) {
    room.error = text;
    renderRooms();
  }
}

function requestHistory(room, before, kind) {
  if (!room.joined) return;
  const payload = { room: room.name, limit: HISTORY_PAGE };
  if (before !== undefined) payload.before = before;
  request('history', payload, { kind, room: room.name });
  if (kind === 'older') {
    room.loadingOlder = true;
    if (room === activeRoom()) renderOlder();
  }
}

export function maybeLoadOlder() {
  const room = activeRoom();
  if (!room || !room.joined || room.loadingOlder || !room.more) return;
  if (ui.log.scrollTop > 120) return;
  if (!room.msgs.size) return;      // the first page comes with the join
  requestHistory(room, room.oldest, 'older');
}

export function olderFailed(name) {
  const room = S.rooms.get(name);
  if (room) { room.loadingOlder = false; renderOlder(); }
}

export function onHistory(p, req) {
  const room = S.rooms.get(p.room);
  if (!room) return;
  const msgs = Array.isArray(p.messages) ? p.messages : [];
  const active = room === activeRoom();
  const oldHeight = ui.log.scrollHeight;
  const oldTop = ui.log.scrollTop;
  const atBottom = nearBottom();
  for (const m of msgs) {
    if (m && typeof m === 'object') addChat(Object.assign({ room: p.room }, m), 'history');
  }
  if (req && req.kind === 'older') room.loadingOlder = false;
  // Both kinds of page end at the oldest message held, so `more` says
  // whether anything older exists.
  room.more = !!p.more && msgs.length > 0 && room.oldest > 1;
  if (active) {
    if (req && req.kind === 'older') {
      ui.log.scrollTop = oldTop + (ui.log.scrollHeight - oldHeight);
    } else if (atBottom || (req && req.kind === 'initial')) {
      scrollToBottom();
    }
    renderOlder();
    // A short first page may not fill the window: keep paging.
    setTimeout(maybeLoadOlder, 0);
  }
}
