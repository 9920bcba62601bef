/*
 * The client's shared state: who we are, the connection's generation and
 * state, the server's limits, and the rooms. Modules read and change it
 * directly; what a field means is said here, once.
 */
import { ROOM_RE, randomId } from './util.js';

export const S = {
  ident: null,            // { user } or { token }
  me: null,               // the user name the server gave in welcome
  session: null,
  ws: null,
  gen: 0,                 // connection generation: bumps on every connect
  conn: 'connecting',     // connecting | online | reconnecting
  everOnline: false,
  welcomed: false,
  attempt: 0,
  failedNoWelcome: 0,
  reconnectAt: 0,
  reconnectTimer: null,
  connectStarted: 0,
  openedAt: 0,
  lastFrameAt: 0,
  connects: 0,
  heartbeat: 25,
  limits: { maxContent: 16384, maxMessage: 65536, rate: 20, burst: 40 },
  tokens: 40,
  tokensAt: 0,
  rooms: new Map(),       // name -> room (see rooms.js)
  order: [],              // room names in sidebar order
  roomsLoaded: false,     // the saved room list was read (see saveRooms)
  active: null,           // the open room's name
  outbox: [],             // unacked room events we sent, in the order written (outbox.js)
  requests: new Map(),    // request id -> { kind, room, ... }
  idPrefix: randomId(),
  idSeq: 0,
};

export function activeRoom() {
  return S.active ? S.rooms.get(S.active) : null;
}

// ----------------------------------------------------------- storage
export function storeKey(what) {
  return 'chatd.' + what + '.' + (S.me || (S.ident && S.ident.user) || 'token');
}

// Nothing is saved before the saved list was read (at the first welcome,
// when our name is sure), or the room of the address would replace it.
export function saveRooms() {
  if (!S.roomsLoaded) return;
  try { localStorage.setItem(storeKey('rooms'), JSON.stringify(S.order)); } catch (e) { /* private mode */ }
}

export function loadRooms() {
  try {
    const v = JSON.parse(localStorage.getItem(storeKey('rooms')) || '[]');
    return Array.isArray(v) ? v.filter((r) => typeof r === 'string' && ROOM_RE.test(r)) : [];
  } catch (e) {
    return [];
  }
}
