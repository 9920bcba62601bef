/*
 * Unread counts and the read cursor. The server (1.1) keeps one cursor per
 * user and room: `joined` and the `rooms` list carry it with an unread
 * count, `receipt` frames move it when another tab or device of ours read
 * on, and we send `read` once the user has seen the newest message of the
 * open room. Against a 1.0 server the same state is kept locally.
 */
import { S, activeRoom } from './state.js';
import { request } from './conn.js';
import { ui, renderRooms, nearBottom } from './views.js';
import { markFirstUnread } from './msgview.js';

const READ_DELAY_MS = 300;      // one `read` per burst of messages or scrolls

// The highest seq we know the room has, joined or not.
function topSeq(room) {
  return Math.max(room.lastSeq, room.topSeq);
}

// Whether the user sees the newest messages of room right now.
export function seeing(room) {
  return room === activeRoom() && !document.hidden && nearBottom();
}

// A count from the server (joined, rooms): unread messages up to seq. A
// count older than what we already hold would miss messages we counted.
export function serverCount(room, seq, readSeq, unread) {
  if (typeof readSeq === 'number' && readSeq >= 0) {
    if (readSeq > room.readSeq) room.readSeq = readSeq;
    if (readSeq > room.readSent) room.readSent = readSeq;
  }
  if (typeof seq !== 'number' || typeof unread !== 'number' || seq < topSeq(room)) return;
  if (!room.joined && seq > room.topSeq) room.topSeq = seq;
  room.countedTo = seq;
  room.unread = room === activeRoom() && !document.hidden ? 0 : unread;
  // A room never read (cursor 0) opens at its newest messages, like a
  // first visit: jumping to its first message would page through it all.
  if (room === activeRoom() && unread > 0 && room.readSeq > 0 && room.dividerSeq === null) {
    room.dividerSeq = room.readSeq;
  }
  renderRooms();
}

// A new message from someone else, live: one more unread unless the user
// is looking or a server count already has it.
export function countLive(room, seq) {
  if (seq <= room.countedTo) return;
  if (room !== activeRoom() || document.hidden) {
    room.unread += 1;
    renderRooms();
  }
}

// A message from someone else deleted after the server counted: one less.
export function uncount(room, seq, target) {
  if (seq > room.countedTo && target > room.readSeq && room.unread > 0 && room !== activeRoom()) {
    room.unread -= 1;
    renderRooms();
  }
}

// A direct message arrived in a room this connection has not joined.
export function countNotify(room, seq) {
  if (seq > room.topSeq) room.topSeq = seq;
  if (seq <= room.countedTo || seq <= room.readSeq) return;
  room.countedTo = seq;
  room.unread += 1;
  renderRooms();
}

function unreadAfter(room, seq) {
  let n = 0;
  for (const [s, e] of room.msgs) if (s > seq && e.p.sender !== S.me && !e.p.deleted) n++;
  return n;
}

// Our cursor moved on another connection of ours.
export function onReceipt(p) {
  const room = S.rooms.get(p.room);
  if (!room || p.user !== S.me || typeof p.seq !== 'number') return;
  if (p.seq > room.readSeq) room.readSeq = p.seq;
  if (p.seq > room.readSent) room.readSent = p.seq;
  const left = p.seq >= topSeq(room) ? 0 : unreadAfter(room, p.seq);
  if (left < room.unread) {
    room.unread = left;
    renderRooms();
  }
}

let readTimer = null;
const toSend = new Set();         // rooms whose cursor the server should hear of

// The user sees the newest message of the open room: the cursor moves
// there now, and the server (1.1) hears of it shortly, once per burst of
// messages or scrolls, so every device of ours agrees.
export function scheduleRead() {
  const room = activeRoom();
  if (!room || !seeing(room)) return;
  if (room.unread) {
    room.unread = 0;
    renderRooms();
  }
  if (room.lastSeq > room.readSeq) room.readSeq = room.lastSeq;
  sendReadSoon(room);
}

// Sends room's cursor if the server does not have it yet (e.g. it moved
// while the link was down).
export function sendReadSoon(room) {
  toSend.add(room);
  if (!readTimer) readTimer = setTimeout(sendReads, READ_DELAY_MS);
}

function sendReads() {
  readTimer = null;
  for (const room of toSend) {
    if (S.rooms.get(room.name) !== room || !S.v11 || !room.joined || S.conn !== 'online') continue;
    if (room.readSeq > room.readSent) {
      room.readSent = room.readSeq;
      request('read', { room: room.name, seq: room.readSeq }, { room: room.name });
    }
  }
  toSend.clear();
}

// Where the unread part begins, when the room is opened with unread
// messages: marked until another room is opened.
export function openDivider(room) {
  room.dividerSeq = room.unread > 0 || unreadAfter(room, room.readSeq) > 0 ? room.readSeq : null;
}

export function closeDivider(room) {
  room.dividerSeq = null;
  markFirstUnread(room, null);
}

// Marks the divider and, when the open room shows its end, scrolls back
// up to it so the first unread message is in view.
export function showDivider(room) {
  const node = markFirstUnread(room, room.dividerSeq);
  if (!node || room !== activeRoom()) return;
  const top = node.getBoundingClientRect().top - ui.log.getBoundingClientRect().top;
  if (top < 0) ui.log.scrollTop += top - 24;
}
