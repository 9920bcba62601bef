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

export function requestPresence(room) {
  if (!room.joined) return;
  request('presence', { room: room.name }, { room: room.name });
}

export function onPresence(p) {
  const room = S.rooms.get(p.room);
  if (!room || !Array.isArray(p.users)) return;
  room.members = new Set(p.users.filter((u) => typeof u === 'string'));
  if (room === activeRoom()) renderPresence();
  membersChanged(room, null, null);
  if (room === activeRoom()) renderCallButtons();
}

export function onMember(p) {
  const room = S.rooms.get(p.room);
  if (!room || typeof p.user !== 'string') return;
  if (p.event === 'join') room.members.add(p.user);
  else if (p.event === 'leave') {
    room.members.delete(p.user);
    removeTyper(room, p.user);
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
