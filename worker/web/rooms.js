/*
 * Rooms and direct messages: the per-room state (messages by seq,
 * `since`, paging, unread, members), joining and rejoining with `since`
 * after a reconnect, opening, leaving, paging history, and the rooms the
 * server tells us of (its room list, `notify` for a direct message).
 */
import { el, clear, urlWith } from './util.js';
import { S, activeRoom, saveRooms } from './state.js';
import { dmPeer, notify } from './dm.js';
import { send, nextId, request } from './conn.js';
import { ui, renderHead, renderRooms, renderPresence, renderTyping, renderOlder, nearBottom,
  scrollToBottom, setV11 } from './views.js';
import { addChat } from './messages.js';
import { requestPresence, clearTypers } from './presence.js';
import { flush, dropRoom } from './outbox.js';
import { stopTyping, cancelEdit } from './composer.js';
import { isE2E, canJoin, joined as e2eJoined } from './e2e.js';
import { serverCount, countNotify, scheduleRead, sendReadSoon, openDivider, closeDivider, showDivider } from './unread.js';

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
    dm: dmPeer(name, S.me),  // the other user of a direct conversation
    e2e: isE2E(name),      // end-to-end encrypted (e2e.js)
    passive: false,        // known (a DM someone sent), not opened here: not joined
    joined: false,         // joined on the current connection
    joinedOnce: false,     // joined on some connection: rejoin with since
    joinGen: -1,           // the connection a join was sent on
    lastSeq: 0,            // highest seq of any event held or folded; `since` on rejoin
    topSeq: 0,             // highest seq heard of while not joined (rooms list, notify)
    msgs: new Map(),       // seq -> { p: payload, node, reactions } (messages.js)
    orphans: [],           // events whose message is not held yet
    oldest: Infinity,
    more: true,
    loadingOlder: false,
    unread: 0,
    countedTo: 0,          // the seq up to which the server counted `unread`
    readSeq: 0,            // the read cursor: seen up to here
    readSent: 0,           // the highest cursor the server has from us
    dividerSeq: null,      // "new messages" after this seq, while open
    members: new Set(),
    typers: new Map(),     // user -> expiry timer
    error: null,
    view, list, pending,
    stickToBottom: true,
    scrollTop: undefined,
  };
}

function addRoom(name, passive) {
  const room = newRoom(name);
  room.passive = passive;
  S.rooms.set(name, room);
  S.order.push(name);
  if (!passive) saveRooms();
  return room;
}

// A room the user wants: kept across reloads and joined.
function activate(room) {
  if (room.passive) {
    room.passive = false;
    saveRooms();
  }
  if (S.conn === 'online') sendJoin(room);
}

// Opens (creating and joining when needed) a room the user asked for.
export function ensureRoom(name, select) {
  const room = S.rooms.get(name) || addRoom(name, false);
  activate(room);
  if (select || !S.active) selectRoom(name);
  else renderRooms();
  return room;
}

// A DM room the server told us of: listed, but joined only once opened,
// so that it costs nothing (and no slot of --max-rooms) until then.
function knowRoom(name) {
  const room = S.rooms.get(name) || addRoom(name, true);
  renderRooms();
  return room;
}

export function selectRoom(name) {
  const prev = activeRoom();
  if (prev && prev.name !== name) {
    prev.stickToBottom = nearBottom();
    prev.scrollTop = ui.log.scrollTop;
    prev.view.hidden = true;
    closeDivider(prev);
    stopTyping();
    cancelEdit();
  }
  const room = S.rooms.get(name);
  if (!room) return;
  activate(room);
  const opening = S.active !== name;
  S.active = name;
  room.view.hidden = false;
  if (opening) openDivider(room);
  room.unread = 0;
  ui.jump.hidden = true;
  renderHead();
  renderRooms();
  renderPresence();
  renderTyping();
  renderOlder();
  if (room.stickToBottom || room.scrollTop === undefined) scrollToBottom();
  else ui.log.scrollTop = room.scrollTop;
  if (opening) showDivider(room);
  S.roomShown(room);
  if (room.joined) requestPresence(room);
  try { history.replaceState(null, '', urlWith({ room: name })); } catch (e) { /* file: */ }
  maybeLoadOlder();
  scheduleRead();
}

// Our name is known now (a token names us only in welcome): which rooms
// are direct conversations, and with whom.
export function nameRooms() {
  for (const room of S.rooms.values()) room.dm = dmPeer(room.name, S.me);
  renderHead();
  renderRooms();
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
    cancelEdit();
    S.active = null;
    const next = S.order.find((n) => !S.rooms.get(n).passive);
    if (next) selectRoom(next);
    else {
      renderHead();
      renderRooms(); renderPresence(); renderTyping(); renderOlder();
      S.roomShown(null);
    }
  } else {
    renderRooms();
  }
}

export function sendJoin(room) {
  // One join per room per connection: a second one would be answered
  // with recovered:false and look like a gap. Known rooms wait to be opened.
  if (room.joinGen === S.gen || room.passive || !canJoin(room)) return;
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
    room.orphans = [];
    room.oldest = Infinity;
    room.more = true;
    room.list.append(el('li', 'notice', 'You were away for a while: showing the latest messages.'));
  }
  if (typeof p.seq === 'number' && p.seq > room.lastSeq && !(rejoin && p.recovered)) {
    // No replay follows a plain join: everything up to seq comes from
    // history, so since starts here.
    room.lastSeq = p.seq;
  }
  if (typeof p.readSeq === 'number') {
    if (!S.v11) setV11(true);
    serverCount(room, p.seq, p.readSeq, p.unread);
  } else if (!rejoin && typeof p.seq === 'number' && p.seq > room.readSeq) {
    // A 1.0 server keeps no cursor: what came before our first join counts as read.
    room.readSeq = p.seq;
  }
  if (!rejoin || p.recovered === false) {
    if (p.seq > 0) requestHistory(room, undefined, 'initial');
    else room.more = false;
  }
  requestPresence(room, true);   // a new connection: earlier waits are void
  if (room.e2e) e2eJoined(room);
  renderRooms();
  if (room === activeRoom()) {
    renderOlder();
    scheduleRead();
  }
  if (room.readSeq > room.readSent) sendReadSoon(room);
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

// meta may add a `limit` and `done(ok)`, called once the page has been
// shown (or failed).
function requestHistory(room, before, kind, meta) {
  if (!room.joined) return false;
  const payload = { room: room.name, limit: (meta && meta.limit) || HISTORY_PAGE };
  if (before !== undefined) payload.before = before;
  request('history', payload, Object.assign({ kind, room: room.name }, meta));
  if (kind === 'older') {
    room.loadingOlder = true;
    if (room === activeRoom()) renderOlder();
  }
  return true;
}

export function maybeLoadOlder() {
  const room = activeRoom();
  if (!room || !room.joined || room.loadingOlder || !room.more) return;
  if (ui.log.scrollTop > 120) return;
  if (!room.msgs.size) return;      // the first page comes with the join
  requestHistory(room, room.oldest, 'older');
}

// One more page of older messages for someone else (search's jump to a
// message): up to limit (≤ 100) below the oldest held, so what is held
// stays one run of seqs. Returns false when none can be asked for now.
export function loadOlderPage(room, limit, done) {
  if (!room.joined || room.loadingOlder || !room.more || !room.msgs.size) return false;
  return requestHistory(room, room.oldest, 'older', { limit, done });
}

// An error answering an older page (req: its request's meta).
export function olderFailed(req) {
  const room = S.rooms.get(req.room);
  if (room) { room.loadingOlder = false; renderOlder(); }
  if (req.done) req.done(false);
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
      showDivider(room);
    }
    renderOlder();
    scheduleRead();
    // A short first page may not fill the window: keep paging.
    setTimeout(maybeLoadOlder, 0);
  }
  if (req && req.done) req.done(true);
}

// The server's list of our rooms (1.1): unread counts for the rooms we
// have, and the direct conversations we have not opened in this tab.
export function onRoomsList(p) {
  if (!S.v11) setV11(true);
  const list = Array.isArray(p.rooms) ? p.rooms : [];
  for (const r of list) {
    if (!r || typeof r.room !== 'string') continue;
    let room = S.rooms.get(r.room);
    if (!room && dmPeer(r.room, S.me)) room = knowRoom(r.room);
    if (room) serverCount(room, r.seq, r.readSeq, r.unread);
  }
  renderRooms();
}

// A direct message arrived in a room this connection has not joined.
export function onNotify(p) {
  if (typeof p.room !== 'string' || typeof p.seq !== 'number' || !dmPeer(p.room, S.me)) return;
  if (!S.v11) setV11(true);
  const room = knowRoom(p.room);
  if (room.joined) return;
  countNotify(room, p.seq);
  if (room !== activeRoom() || document.hidden) {
    const from = typeof p.from === 'string' ? p.from : room.dm;
    notify(from, 'New direct message', room.name, () => selectRoom(room.name));
  }
}
