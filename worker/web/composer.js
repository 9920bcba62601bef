/*
 * The composer: writing a message (text and an optional link), checking
 * it against the server's limits, and telling the room we are typing.
 */
import { safeUrl, guessType, utf8Len } from './util.js';
import { S, activeRoom } from './state.js';
import { send, nextId, takeToken } from './conn.js';
import { ui, showBanner, scrollToBottom } from './views.js';
import { queueChat } from './outbox.js';

const TYPING_REPEAT_MS = 3000;    // resend active:true at most this often
const TYPING_IDLE_MS = 3500;      // send active:false after this pause

const typing = { room: null, active: false, lastSent: 0, idleTimer: null };

export function submit() {
  const room = activeRoom();
  if (!room) return;
  const content = ui.input.value.replace(/\s+$/, '');
  const attachments = [];
  const rawUrl = ui.attachUrl.value.trim();
  if (rawUrl) {
    const u = safeUrl(rawUrl);
    if (!u) {
      showBanner('Attachments must be http:// or https:// links.', 'error', 5000);
      return;
    }
    attachments.push({ type: guessType(u), url: u.href });
  }
  if (!content.trim()) {
    // content is required by the protocol; a bare link says itself.
    if (attachments.length) sendMessage(room, attachments[0].url, attachments);
    return;
  }
  const bytes = utf8Len(content);
  if (bytes > S.limits.maxContent) {
    showBanner('Message too long: ' + bytes + ' bytes, the limit is ' + S.limits.maxContent + '.', 'error', 6000);
    return;
  }
  sendMessage(room, content, attachments);
}

function sendMessage(room, content, attachments) {
  ui.input.value = '';
  ui.attachUrl.value = '';
  ui.attachRow.hidden = true;
  autosize();
  stopTyping();
  queueChat(room, content, attachments);
  scrollToBottom();
}

// ------------------------------------------------------- typing
function sendTyping(room, active) {
  if (!room || !room.joined || S.conn !== 'online') return false;
  if (!takeToken()) return false;   // typing is best effort: never queue it
  return send({ type: 'typing', id: nextId('t'), payload: { room: room.name, active } });
}

export function onInput() {
  autosize();
  const room = activeRoom();
  if (!room) return;
  const now = Date.now();
  const t = typing;
  if (ui.input.value.trim() === '') {
    stopTyping();
    return;
  }
  if (!t.active || t.room !== room.name || now - t.lastSent > TYPING_REPEAT_MS) {
    if (sendTyping(room, true)) {
      t.active = true;
      t.room = room.name;
      t.lastSent = now;
    }
  }
  clearTimeout(t.idleTimer);
  t.idleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
}

export function stopTyping() {
  const t = typing;
  clearTimeout(t.idleTimer);
  if (t.active) {
    sendTyping(S.rooms.get(t.room), false);
    t.active = false;
  }
}

// The link went down: the server forgot our typing state with it.
export function typingDown() {
  typing.active = false;
}

export function autosize() {
  ui.input.style.height = 'auto';
  ui.input.style.height = Math.min(160, ui.input.scrollHeight) + 'px';
}

export function toggleAttach() {
  ui.attachRow.hidden = !ui.attachRow.hidden;
  if (!ui.attachRow.hidden) ui.attachUrl.focus();
}
