/*
 * The client's shared state: who we are, the connection's generation and
 * state, the server's limits, and the rooms. Modules read and change it
 * directly; what a field means is said here, once.
 */
import { randomId } from './util.js';
import { validRoom } from './dm.js';

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
  v11: false,             // the server speaks protocol 1.1 (edits, reactions, receipts)
  limits: { maxContent: 16384, maxMessage: 65536, rate: 20, burst: 40, maxFile: 0 },   // maxFile 0: no files
  tokens: 40,
  tokensAt: 0,
  rooms: new Map(),       // name -> room (see rooms.js)
  order: [],              // room names in sidebar order (rooms and DMs)
  roomsLoaded: false,     // the saved room list was read (see saveRooms)
  active: null,           // the open room's name
  outbox: [],             // unacked room events we sent, in the order written (outbox.js)
  requests: new Map(),    // request id -> { kind, room, ... }
  openRoom: (name) => {}, // opens a room (set by main.js, for modules below rooms.js)
  roomShown: (room) => {}, // the open room changed (room or null; set by main.js)
  fingerprints: new Map(), // public key (base64) -> its fingerprint (e2e.js)
  iceServers: [],         // STUN/TURN servers for calls, from welcome (1.1)
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

// Rooms we only know of (a DM nobody opened here yet) are not kept: the
// server's room list brings them back. Nothing is saved before the saved
// list was read (at the first welcome, when our name is sure), or the room
// of the address would replace it.
export function saveRooms() {
  if (!S.roomsLoaded) return;
  const names = S.order.filter((n) => !S.rooms.get(n).passive);
  try { localStorage.setItem(storeKey('rooms'), JSON.stringify(names)); } catch (e) { /* private mode */ }
}

export function loadRooms() {
  try {
    const v = JSON.parse(localStorage.getItem(storeKey('rooms')) || '[]');
    return Array.isArray(v) ? v.filter(validRoom) : [];
  } catch (e) {
    return [];
  }
}
