/*
 * chatd browser client: the entry module, which wires the others. Native
 * ES modules, no build step, no dependencies; one module per concern:
 *
 *   conn.js      the WebSocket: reconnect with backoff, request ids, rate
 *   outbox.js    what we sent and was not acked yet: resent with the same id
 *   rooms.js     per-room state, joining with `since`, history, room list
 *   messages.js  a room's messages by seq, with edits, deletes, reactions
 *   unread.js    unread counts, the read cursor, "new messages"
 *   presence.js  members and typing
 *   composer.js  writing and editing messages
 *   actions.js   the message menu: react, edit, delete
 *   dm.js        direct message rooms and notifications
 *   files.js     uploading files: attach, drop, paste, progress, the tray
 *   attachments.js  links, image previews and download chips in messages
 *   search.js    searching a room, the results panel, jumping to a hit
 *   crypto.js    WebCrypto: identity keys, room keys, wrapping, sealing
 *   e2e.js       encrypted rooms: key publishing and rotation, sealing
 *                what we send, opening what we get, lock and fingerprints
 *   calls.js     1:1 audio/video calls: WebRTC, ringing, the call panel
 *   views.js, msgview.js  rendering; util.js, state.js  shared helpers, state
 *
 * Guarantees the user can see:
 *  - every message (and edit, delete, reaction) sent carries an id and
 *    stays pending until the server's ack (durable); it is resent with the
 *    same id after a reconnect until acked, so the server's deduplication
 *    makes retries harmless;
 *  - after a disconnect the client reconnects with exponential backoff and
 *    jitter and rejoins every room with `since` = the highest seq of any
 *    event it holds, so nothing is missed; messages are kept per room by
 *    seq, so nothing is shown twice and everything is shown in seq order;
 *  - against a server of protocol 1.0 everything of 1.0 works; what 1.1
 *    adds (the message menu, read receipts) appears once the server shows
 *    it speaks 1.1, and its requests fail silently otherwise.
 *
 * User data only ever reaches the page through textContent or a validated
 * href: never innerHTML.
 */
import { USER_RE, urlWith } from './util.js';
import { S, activeRoom, loadRooms, saveRooms } from './state.js';
import { dmName, validRoom, askNotify } from './dm.js';
import * as conn from './conn.js';
import { ui, renderMe, renderRooms, renderPresence, renderTyping, renderOlder, setConn,
  showBanner, hideBanner, nearBottom, scrollToBottom, closeDrawer, setV11 } from './views.js';
import { addChat, onEvent } from './messages.js';
import { requestPresence, onPresence, onMember, onTyping } from './presence.js';
import * as outbox from './outbox.js';
import { ensureRoom, selectRoom, leaveRoom, sendJoin, roomsDown, onJoined, joinFailed,
  onHistory, olderFailed, maybeLoadOlder, onRoomsList, onNotify, nameRooms } from './rooms.js';
import { onReceipt, scheduleRead } from './unread.js';
import { submit, onInput, stopTyping, typingDown, toggleAttach, editLast, cancelEdit,
  isEditing } from './composer.js';
import { onMessageClick, closeMenus } from './actions.js';
import { addFiles, filesEnabled, renderTray, onTrayClick, onDragEnter, onDragOver, onDragLeave,
  onDrop, onPaste, guardPage } from './files.js';
import { runSearch, onResults, searchFailed, searchDown, closeSearch, moreResults, onResultsClick,
  render as renderSearch } from './search.js';
import { connected as keysUp, onRoomKey, roomShown as e2eShown } from './e2e.js';
import { onSignal, roomShown as callsShown, callActions } from './calls.js';

const PRESENCE_POLL_MS = 30000;

// ------------------------------------------------------- frames in
function handle(msg) {
  const p = msg.payload && typeof msg.payload === 'object' ? msg.payload : {};
  const req = msg.id ? S.requests.get(msg.id) : undefined;
  if (req && msg.type !== 'error') S.requests.delete(msg.id);
  if (req && req.resolve) {
    // An answer someone awaits (conn.ask); a frame that also means
    // something here (presence) still goes on below.
    if (msg.type === 'error') {
      S.requests.delete(msg.id);
      req.reject(Object.assign(new Error(p.message || p.code || 'error'), { code: p.code || 'internal' }));
      return;
    }
    req.resolve(msg);
  }
  switch (msg.type) {
    case 'welcome': onWelcome(p); break;
    case 'joined': onJoined(p); break;
    case 'left': break;
    case 'chat': addChat(p, 'live'); break;
    case 'ack': outbox.onAck(msg.id, p); break;
    case 'history': onHistory(p, req); break;
    case 'presence': onPresence(p); break;
    case 'member': onMember(p); break;
    case 'typing': onTyping(p); break;
    case 'edit': case 'delete': case 'reaction': onEvent(msg.type, p, 'live'); break;
    case 'receipt': onReceipt(p); break;
    case 'rooms': onRoomsList(p); break;
    case 'results': onResults(p, req); break;
    case 'notify': onNotify(p); break;
    case 'roomkey': onRoomKey(p); break;
    case 'signal': onSignal(p); break;
    case 'keys': case 'roomkeys': break;    // answers, taken by conn.ask
    case 'pong': case 'ok': break;
    case 'error': onError(msg.id, p, req); break;
    default: break;     // a frame type of a later protocol
  }
}

function onWelcome(p) {
  const first = !S.everOnline;
  S.welcomed = true;
  S.everOnline = true;
  S.failedNoWelcome = 0;
  S.me = typeof p.user === 'string' ? p.user : S.me;
  S.session = p.session || null;
  if (typeof p.heartbeat === 'number' && p.heartbeat > 0) S.heartbeat = p.heartbeat;
  if (p.limits && typeof p.limits === 'object') {
    for (const k of ['maxContent', 'maxMessage', 'rate', 'burst', 'maxFile']) {
      if (typeof p.limits[k] === 'number' && p.limits[k] > 0) S.limits[k] = p.limits[k];
    }
  }
  S.iceServers = Array.isArray(p.iceServers) ? p.iceServers.filter((s) => s && typeof s === 'object') : [];
  filesEnabled();
  conn.resetTokens();
  // Whether this server speaks 1.1 shows in what it answers next.
  setV11(false);
  renderMe();
  nameRooms();
  ui.conn.dataset.session = S.session || '';
  S.connects += 1;
  ui.conn.dataset.connects = String(S.connects);
  setConn('online');
  keysUp();
  if (!ui.banner.classList.contains('keep')) hideBanner();
  if (first) {
    const saved = loadRooms();
    S.roomsLoaded = true;
    for (const r of saved) ensureRoom(r, false);
    saveRooms();
    outbox.restore((name) => ensureRoom(name, false));
  }
  for (const room of S.rooms.values()) sendJoin(room);
  // Unread counts and direct conversations (1.1; a 1.0 server says
  // bad_request, and there is simply no list).
  conn.request('rooms', undefined);
  renderPresence();
}

const ERROR_TEXT = {
  rate_limited: 'You are sending too fast; slowing down.',
  unavailable: 'The server cannot store messages right now; retrying.',
  too_large: 'That message is too large.',
  forbidden: 'You are not allowed to do that.',
  not_joined: 'Not in that room (yet).',
  bad_request: 'The server did not accept that request.',
  unauthorized: 'Not signed in.',
  internal: 'The server had an internal error.',
  not_found: 'That message no longer exists.',
};

// Requests whose failure the user need not hear of: the room list and read
// cursors are extras, and a 1.0 server does not know them.
const QUIET = new Set(['rooms', 'read']);

function onError(id, p, req) {
  const code = typeof p.code === 'string' ? p.code : 'internal';
  const text = (ERROR_TEXT[code] || 'Error') + (p.message ? ' (' + code + ': ' + p.message + ')' : ' (' + code + ')');
  if (outbox.onError(id, code, text)) return;
  if (req) {
    S.requests.delete(id);
    if (QUIET.has(req.kind)) return;
    if (req.kind === 'join') {
      joinFailed(req.room, text);
      showBanner('Cannot join #' + req.room + ': ' + text, 'error', 10000);
      return;
    }
    if (req.kind === 'search') { searchFailed(req, code, p.message); return; }
    if (req.kind === 'older') olderFailed(req);
  }
  showBanner(text, code === 'rate_limited' ? '' : 'error', 8000);
}

function onDown(code) {
  roomsDown();
  typingDown();
  outbox.markWaiting();
  searchDown();
  renderTyping();
  renderOlder();
  if (code === 1008) showBanner('Disconnected for sending too fast. Reconnecting…', 'error', 8000);
  else if (S.failedNoWelcome >= 3) {
    showBanner(S.ident.token
      ? 'Cannot connect. The server may be down, or the token was refused (expired or invalid).'
      : 'Cannot connect to the server. Retrying…', 'error');
  }
}

conn.setHooks({ frame: handle, down: onDown, state: setConn });
S.openRoom = (name) => { if (S.rooms.has(name)) selectRoom(name); };
S.roomShown = (room) => { renderTray(); renderSearch(); e2eShown(room); callsShown(room); };

// ------------------------------------------------------- housekeeping
// Once a second: the connection's own upkeep, overdue acks, and a slow
// presence poll for rooms too big for member events.
let lastPresence = 0;
function housekeeping() {
  const now = Date.now();
  if (!conn.tick()) return;
  if (outbox.overdue()) outbox.flush();
  if (now - lastPresence > PRESENCE_POLL_MS) {
    lastPresence = now;
    const room = activeRoom();
    if (room) requestPresence(room);
  }
}

// ------------------------------------------------------- identity
function start(ident, room) {
  S.ident = ident;
  ui.login.hidden = true;
  ui.app.hidden = false;
  ui.me.textContent = ident.user || '…';
  ui.meAvatar.textContent = (ident.user || '?').slice(0, 1);
  if (room) ensureRoom(room, true);
  conn.connect();
  setInterval(housekeeping, 1000);
}

function showLogin(err) {
  ui.app.hidden = true;
  ui.login.hidden = false;
  ui.loginError.textContent = err || '';
  const q = new URLSearchParams(location.search);
  if (q.get('room')) ui.loginRoom.value = q.get('room');
  ui.loginUser.focus();
}

function init() {
  const q = new URLSearchParams(location.search);
  let room = q.get('room') || null;
  if (room && !validRoom(room)) room = null;
  const token = q.get('token') || sessionStorage.getItem('chatd.token');
  const user = q.get('user');
  if (q.get('token')) {
    // Keep the token out of the address bar and history.
    sessionStorage.setItem('chatd.token', q.get('token'));
    try { history.replaceState(null, '', urlWith({})); } catch (e) { /* ignore */ }
  }
  if (user && USER_RE.test(user)) {
    start({ user }, room || 'general');
  } else if (token) {
    start({ token }, room || 'general');
  } else {
    showLogin(user ? 'That user name is not valid.' : '');
  }
}

// ------------------------------------------------------- events
ui.loginForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const user = ui.loginUser.value.trim();
  const token = ui.loginToken.value.trim();
  const room = ui.loginRoom.value.trim() || 'general';
  if (!validRoom(room)) { ui.loginError.textContent = 'Room names use letters, digits and _ . : -'; return; }
  if (token) {
    sessionStorage.setItem('chatd.token', token);
    history.replaceState(null, '', urlWith({ user: null, room }));
    start({ token }, room);
  } else if (USER_RE.test(user)) {
    history.replaceState(null, '', urlWith({ user, room }));
    start({ user }, room);
  } else {
    ui.loginError.textContent = 'Enter a user name (letters, digits, _ . -) or a token.';
  }
});

ui.signout.addEventListener('click', () => {
  sessionStorage.removeItem('chatd.token');
  location.href = location.pathname;
});

ui.joinForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const name = ui.joinRoom.value.trim().replace(/^#/, '');
  if (!validRoom(name)) {
    showBanner('Room names are 1–128 letters, digits or _ . : -', 'error', 5000);
    return;
  }
  ui.joinRoom.value = '';
  ensureRoom(name, true);
  closeDrawer();
});

function onRoomClick(ev) {
  const b = ev.target.closest('button[data-room]');
  if (!b) return;
  selectRoom(b.dataset.room);
  closeDrawer();
}
ui.rooms.addEventListener('click', onRoomClick);
ui.dms.addEventListener('click', onRoomClick);

// "Message" next to someone here: their direct conversation with us.
ui.presence.addEventListener('click', (ev) => {
  const b = ev.target.closest('button[data-dm]');
  const name = b && dmName(S.me, b.dataset.dm);
  if (!name) return;
  ensureRoom(name, true);
  closeDrawer();
});

// Notifications are asked for on this click only, never unprompted.
ui.notifyOn.addEventListener('click', () => askNotify(renderRooms));
ui.views.addEventListener('click', onMessageClick);
ui.editCancel.addEventListener('click', () => { cancelEdit(); ui.input.focus(); });

ui.leave.addEventListener('click', () => { if (S.active) leaveRoom(S.active); });
ui.composer.addEventListener('submit', (ev) => { ev.preventDefault(); submit(); });
ui.input.addEventListener('input', onInput);
ui.input.addEventListener('keydown', (ev) => {
  if (ev.isComposing) return;
  if (ev.key === 'Enter' && !ev.shiftKey) {
    ev.preventDefault();
    submit();
  } else if (ev.key === 'ArrowUp' && !ev.shiftKey && !ev.altKey && !ev.ctrlKey && !ev.metaKey) {
    if (editLast()) ev.preventDefault();
  } else if (ev.key === 'Escape' && isEditing()) {
    ev.preventDefault();
    cancelEdit();
  }
});
ui.input.addEventListener('blur', stopTyping);
ui.attach.addEventListener('click', toggleAttach);
ui.attachFile.addEventListener('click', () => ui.fileInput.click());
ui.fileInput.addEventListener('change', () => {
  addFiles(ui.fileInput.files);
  ui.fileInput.value = '';
});
ui.uploads.addEventListener('click', onTrayClick);
ui.input.addEventListener('paste', onPaste);
ui.main.addEventListener('dragenter', onDragEnter);
ui.main.addEventListener('dragover', onDragOver);
ui.main.addEventListener('dragleave', onDragLeave);
ui.main.addEventListener('drop', onDrop);
document.addEventListener('dragover', guardPage);
document.addEventListener('drop', guardPage);
ui.searchForm.addEventListener('submit', (ev) => { ev.preventDefault(); runSearch(); });
ui.searchQ.addEventListener('keydown', (ev) => {
  if (ev.key === 'Escape') { ev.preventDefault(); closeSearch(); ui.input.focus(); }
});
ui.searchQ.addEventListener('search', () => { if (!ui.searchQ.value) closeSearch(); });
ui.searchClose.addEventListener('click', closeSearch);
ui.searchMore.addEventListener('click', moreResults);
ui.searchResults.addEventListener('click', onResultsClick);
ui.attachUrl.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter') { ev.preventDefault(); submit(); }
});
ui.log.addEventListener('scroll', () => {
  if (nearBottom()) {
    ui.jump.hidden = true;
    scheduleRead();
  }
  maybeLoadOlder();
}, { passive: true });
document.addEventListener('keydown', (ev) => { if (ev.key === 'Escape') closeMenus(); });
ui.jump.addEventListener('click', scrollToBottom);
ui.bannerClose.addEventListener('click', hideBanner);
ui.menu.addEventListener('click', () => ui.app.classList.add('drawer'));
ui.scrim.addEventListener('click', closeDrawer);

document.addEventListener('visibilitychange', () => {
  const room = activeRoom();
  if (!document.hidden && room && room.unread) { room.unread = 0; renderRooms(); }
  scheduleRead();
});
window.addEventListener('focus', scheduleRead);
window.addEventListener('online', conn.connectNow);
ui.callAudio.addEventListener('click', callActions.audio);
ui.callVideo.addEventListener('click', callActions.video);
ui.callAccept.addEventListener('click', callActions.accept);
ui.callReject.addEventListener('click', callActions.reject);
ui.callHangup.addEventListener('click', callActions.hangup);
ui.callMute.addEventListener('click', callActions.mute);
ui.callCamera.addEventListener('click', callActions.camera);
window.addEventListener('pagehide', callActions.pagehide);

init();
