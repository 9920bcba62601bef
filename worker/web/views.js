/*
 * The page around the messages: sidebar (rooms, people), room header,
 * connection badge, banner, typing line, scrolling. Rendering only: what a
 * click does is wired in main.js, by delegation on these containers.
 */
import { $, el, clear, avatar, hue } from './util.js';
import { S, activeRoom } from './state.js';

export const ui = {
  login: $('login'), loginForm: $('login-form'), loginUser: $('login-user'),
  loginToken: $('login-token'), loginRoom: $('login-room'), loginError: $('login-error'),
  app: $('app'), conn: $('conn'), connText: $('conn-text'), me: $('me'), meAvatar: $('me-avatar'),
  signout: $('signout'), rooms: $('rooms'), joinForm: $('join-form'), joinRoom: $('join-room'),
  presence: $('presence'), peopleCount: $('people-count'), menu: $('menu'), scrim: $('scrim'),
  roomName: $('room-name'), roomSub: $('room-sub'), leave: $('leave'),
  banner: $('banner'), bannerText: $('banner-text'), bannerClose: $('banner-close'),
  log: $('log'), older: $('older'), views: $('room-views'), jump: $('jump'),
  typing: $('typing'), composer: $('composer'), input: $('input'), send: $('send'),
  attach: $('attach'), attachRow: $('attach-row'), attachUrl: $('attach-url'),
};

export function renderMe() {
  ui.me.textContent = S.me;
  clear(ui.meAvatar);
  ui.meAvatar.textContent = (S.me || '?').slice(0, 1);
  ui.meAvatar.style.background = 'hsl(' + hue(S.me || '?') + ' 55% 46%)';
}

export function renderRooms() {
  clear(ui.rooms);
  let total = 0;
  for (const name of S.order) {
    const r = S.rooms.get(name);
    const li = el('li');
    if (name === S.active) li.classList.add('active');
    if (r.unread) li.classList.add('unread');
    if (r.error) li.classList.add('error');
    const b = el('button');
    b.type = 'button';
    b.dataset.room = name;
    b.append(el('span', 'room-label', name));
    if (r.unread) {
      b.append(el('span', 'badge', r.unread > 99 ? '99+' : r.unread));
      total += r.unread;
    }
    b.title = r.error ? r.error : name;
    li.append(b);
    ui.rooms.append(li);
  }
  document.title = (total ? '(' + total + ') ' : '') + (S.active ? '#' + S.active + ' · ' : '') + 'chatd';
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
    if (u === S.me) li.append(el('small', null, '(you)'));
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
  else if (!room.more) ui.older.textContent = room.msgs.size ? 'This is the beginning of #' + room.name : 'No messages yet. Say hello!';
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
