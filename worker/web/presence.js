/*
 * Who is in a room and who is typing there: presence answers, member
 * events, typing frames (the other users'; ours are sent by composer.js).
 * Encrypted rooms (e2e.js) and the call buttons (calls.js) hear of changes.
 */
import { S, activeRoom } from './state.js';
import { request } from './conn.js';
import { renderPresence, renderTyping } from './views.js';
import { membersChanged } from './e2e.js';
import { renderCallButtons } from './calls.js';

const TYPING_EXPIRE_MS = 6500;    // forget a typer who went silent

// Member events and the presence answer travel apart (the room's channel,
// the request's reply), so an event can arrive before an answer that was
// read earlier than it. Events that come while an answer is on its way are
// kept and replayed over it: the list ends where the events do.
const MEMBER_LOG_MAX = 500;

export function requestPresence(room, fresh) {
  if (!room.joined) return;
  if (fresh || !room.presenceWait) {
    room.presenceWait = 0;
    room.memberLog = [];
  }
  room.presenceWait++;
  request('presence', { room: room.name }, { room: room.name });
}

function applyMember(room, user, event) {
  if (event === 'join') room.members.add(user);
  else if (event === 'leave') {
    room.members.delete(user);
    removeTyper(room, user);
  }
}

export function onPresence(p) {
  const room = S.rooms.get(p.room);
  if (!room || !Array.isArray(p.users)) return;
  room.members = new Set(p.users.filter((u) => typeof u === 'string'));
  for (const e of room.memberLog || []) applyMember(room, e.user, e.event);
  room.presenceWait = Math.max(0, (room.presenceWait || 1) - 1);
  if (!room.presenceWait) room.memberLog = [];
  if (room === activeRoom()) renderPresence();
  membersChanged(room, null, null);
  if (room === activeRoom()) renderCallButtons();
}

export function onMember(p) {
  const room = S.rooms.get(p.room);
  if (!room || typeof p.user !== 'string') return;
  applyMember(room, p.user, p.event);
  if (room.presenceWait && room.memberLog.length < MEMBER_LOG_MAX) {
    room.memberLog.push({ user: p.user, event: p.event });
  }
  if (room === activeRoom()) renderPresence();
  membersChanged(room, p.user, p.event);
  if (room === activeRoom()) renderCallButtons();
}

export function onTyping(p) {
  const room = S.rooms.get(p.room);
  if (!room || typeof p.user !== 'string' || p.user === S.me) return;
  const old = room.typers.get(p.user);
  if (old !== undefined) clearTimeout(old);
  if (p.active) {
    room.typers.set(p.user, setTimeout(() => removeTyper(room, p.user), TYPING_EXPIRE_MS));
  } else {
    room.typers.delete(p.user);
  }
  if (room === activeRoom()) renderTyping();
}

export function removeTyper(room, user) {
  const t = room.typers.get(user);
  if (t !== undefined) {
    clearTimeout(t);
    room.typers.delete(user);
    if (room === activeRoom()) renderTyping();
  }
}

export function clearTypers(room) {
  for (const t of room.typers.values()) clearTimeout(t);
  room.typers.clear();
}
