/*
 * The page around the messages: sidebar (rooms, direct messages, people),
 * room header, connection badge, banner, typing line, scrolling.
 * Rendering only: what a click does is wired in main.js, by delegation on
 * these containers.
 */
import { $, el, clear, avatar, hue } from './util.js';
import { S, activeRoom } from './state.js';
import { dmName, canAskNotify } from './dm.js';
import { fingerprintNode } from './e2e.js';

export const ui = {
  login: $('login'), loginForm: $('login-form'), loginUser: $('login-user'),
  loginToken: $('login-token'), loginRoom: $('login-room'), loginError: $('login-error'),
  app: $('app'), conn: $('conn'), connText: $('conn-text'), me: $('me'), meAvatar: $('me-avatar'),
  signout: $('signout'), rooms: $('rooms'), joinForm: $('join-form'), joinRoom: $('join-room'),
  dms: $('dms'), dmsHint: $('dms-hint'), notifyOn: $('notify-on'), roomHash: $('room-hash'),
  editBar: $('edit-bar'), editCancel: $('edit-cancel'),
  presence: $('presence'), peopleCount: $('people-count'), menu: $('menu'), scrim: $('scrim'),
  roomName: $('room-name'), roomSub: $('room-sub'), leave: $('leave'),
  banner: $('banner'), bannerText: $('banner-text'), bannerClose: $('banner-close'),
  log: $('log'), older: $('older'), views: $('room-views'), jump: $('jump'),
  typing: $('typing'), composer: $('composer'), input: $('input'), send: $('send'),
  attach: $('attach'), attachRow: $('attach-row'), attachUrl: $('attach-url'),
  main: document.querySelector('main'), attachFile: $('attach-file'), fileInput: $('file-input'),
  uploads: $('uploads'), searchForm: $('search-form'), searchQ: $('search-q'),
  searchPanel: $('search-panel'), searchTitle: $('search-title'), searchClose: $('search-close'),
  searchStatus: $('search-status'), searchResults: $('search-results'), searchMore: $('search-more'),
  e2eNote: $('e2e-note'), callAudio: $('call-audio'), callVideo: $('call-video'), call: $('call'),
  callTitle: $('call-title'), callStatus: $('call-status'), callTimer: $('call-timer'),
  callRemote: $('call-remote'), callLocal: $('call-local'), callAccept: $('call-accept'),
  callReject: $('call-reject'), callMute: $('call-mute'), callCamera: $('call-camera'),
  callHangup: $('call-hangup'), callStats: $('call-stats'),
};

export function renderMe() {
  ui.me.textContent = S.me;
  clear(ui.meAvatar);
  ui.meAvatar.textContent = (S.me || '?').slice(0, 1);
  ui.meAvatar.style.background = 'hsl(' + hue(S.me || '?') + ' 55% 46%)';
}

// How a room is named to the user: "#name", or "@user" for a DM.
export function roomTitle(room) {
  return room.dm ? '@' + room.dm : '#' + room.name;
}

// The open room's header and composer placeholder.
export function renderHead() {
  const room = activeRoom();
  ui.roomHash.textContent = room && room.dm ? '@' : room && room.e2e ? '🔒' : '#';
  ui.roomHash.title = room && room.e2e ? 'End-to-end encrypted' : '';
  ui.roomHash.classList.toggle('lock', !!(room && room.e2e));
  ui.roomName.textContent = room ? (room.dm || room.name) : '';
  ui.roomName.dataset.room = room ? room.name : '';
  ui.input.placeholder = room ? 'Message ' + roomTitle(room) : 'Message';
}

function roomEntry(r) {
  const li = el('li');
  if (r.name === S.active) li.classList.add('active');
  if (r.unread) li.classList.add('unread');
  if (r.error) li.classList.add('error');
  const b = el('button');
  b.type = 'button';
  b.dataset.room = r.name;
  if (r.dm) b.append(avatar(r.dm));
  if (r.e2e) b.append(el('span', 'lock', '🔒'));
  b.append(el('span', 'room-label' + (r.dm ? ' dm' : '') + (r.e2e ? ' e2e' : ''), r.dm || r.name));
  if (r.unread) b.append(el('span', 'badge', r.unread > 99 ? '99+' : r.unread));
  b.title = r.error ? r.error : (r.dm ? 'Direct messages with ' + r.dm : r.name + (r.e2e ? ' (end-to-end encrypted)' : ''));
  li.append(b);
  return li;
}

// The sidebar's two lists, the unread badges and the page title.
export function renderRooms() {
  clear(ui.rooms);
  clear(ui.dms);
  let total = 0;
  let dms = 0;
  for (const name of S.order) {
    const r = S.rooms.get(name);
    total += r.unread;
    if (r.dm) dms += 1;
    (r.dm ? ui.dms : ui.rooms).append(roomEntry(r));
  }
  ui.dmsHint.hidden = dms > 0;
  ui.notifyOn.hidden = dms === 0 || !canAskNotify();
  const room = activeRoom();
  document.title = (total ? '(' + total + ') ' : '') + (room ? roomTitle(room) + ' · ' : '') + 'chatd';
}

// The server speaks 1.1: message menus (edit, delete, react) appear.
export function setV11(on) {
  S.v11 = on;
  ui.app.classList.toggle('v11', on);
}

export function renderPresence() {
  const room = activeRoom();
  clear(ui.presence);
  if (!room) {
    ui.peopleCount.textContent = '';
    return;
  }
  const users = Array.from(room.members).sort((a, b) => (a === S.me ? -1 : b === S.me ? 1 : a.localeCompare(b)));
  for (const u of users) {
    const li = el('li');
    li.dataset.user = u;
    li.append(avatar(u), el('span', 'name', u));
    if (room.e2e) li.classList.add('keyed');
    if (u === S.me) li.append(el('small', null, '(you)'));
    else if (dmName(S.me, u) && dmName(S.me, u) !== room.name) {
      const b = el('button', 'ghost small dm-open', 'Message');
      b.type = 'button';
      b.dataset.dm = u;
      b.title = 'Message @' + u;
      li.append(b);
    }
    if (room.e2e) li.append(fingerprintNode(u));
    ui.presence.append(li);
  }
  ui.peopleCount.textContent = users.length ? String(users.length) : '';
  ui.roomSub.textContent = users.length ? users.length + (users.length === 1 ? ' person here' : ' people here') : '';
}

export function renderTyping() {
  const room = activeRoom();
  const names = room ? Array.from(room.typers.keys()) : [];
  let text = '';
  if (names.length === 1) text = names[0] + ' is typing…';
  else if (names.length === 2) text = names[0] + ' and ' + names[1] + ' are typing…';
  else if (names.length > 2) text = 'Several people are typing…';
  ui.typing.textContent = text;
  ui.typing.classList.toggle('on', !!text);
}

export function renderOlder() {
  const room = activeRoom();
  if (!room) { ui.older.textContent = ''; return; }
  if (room.loadingOlder) ui.older.textContent = 'Loading older messages…';
  else if (!room.more) {
    ui.older.textContent = !room.msgs.size ? 'No messages yet. Say hello!'
      : room.dm ? 'This is the beginning of your conversation with ' + room.dm : 'This is the beginning of #' + room.name;
  }
  else ui.older.textContent = room.joined ? 'Scroll up for older messages' : '';
}

export function setConn(state, detail) {
  S.conn = state;
  ui.conn.dataset.state = state;
  ui.connText.textContent = detail || state;
  ui.conn.title = state === 'online' ? 'Connected · session ' + (S.session || '') : (detail || state);
}

let bannerTimer = null;
export function showBanner(text, kind, ms) {
  ui.bannerText.textContent = text;
  ui.banner.className = 'banner' + (kind ? ' ' + kind : '');
  ui.banner.hidden = false;
  clearTimeout(bannerTimer);
  if (ms) bannerTimer = setTimeout(hideBanner, ms);
}

export function hideBanner() {
  ui.banner.hidden = true;
}

export function nearBottom() {
  const l = ui.log;
  return l.scrollHeight - l.scrollTop - l.clientHeight < 80;
}

export function scrollToBottom() {
  ui.log.scrollTop = ui.log.scrollHeight;
  ui.jump.hidden = true;
}

export function closeDrawer() {
  ui.app.classList.remove('drawer');
}
