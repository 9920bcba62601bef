/*
 * Sharing files (protocol 1.1). A file picked with the attach button,
 * dropped on the messages or pasted (an image from the clipboard) is
 * uploaded at once to the open room, with a progress bar and a button to
 * cancel, and waits in the tray above the composer. The next message sent
 * in that room carries it (the text is its caption; with no text, the
 * file names are the text); a message sent while its files are still
 * uploading goes once they are done, and messages of a room go in the
 * order they were written.
 *
 * An upload is POST /files?room=R&name=N with our identity in the query,
 * as for the WebSocket, and the raw bytes as the body; the answer
 * {id, url, name, size, type} becomes the attachment {type: "file", url,
 * name, size, mime}. A file over the server's limit (welcome.limits.maxFile)
 * is refused here, before a byte is sent. The button shows only when the
 * server announces that limit: an older server takes no files.
 */
import { el, clear, utf8Len } from './util.js';
import { S, activeRoom } from './state.js';
import { identQuery } from './conn.js';
import { ui, showBanner } from './views.js';
import { queueChat } from './outbox.js';
import { fileHref, humanSize, PREVIEW_TYPES } from './attachments.js';

const MAX_ATTACHMENTS = 10;       // per message, the protocol's limit
const NAME_MAX = 255;             // bytes of ?name=

const uploads = [];               // { key, room, file, name, type, size, loaded, state, xhr, att, error, bundle }
const bundles = [];               // messages waiting for their uploads: { room, content, links, ups }
let keySeq = 0;

// welcome told us the server's limits: files or not.
export function filesEnabled() {
  ui.attachFile.hidden = !(S.limits.maxFile > 0);
}

// A name the server takes: at most 255 bytes, keeping the extension.
function cleanName(file) {
  let name = (file.name || '').replace(/[\u0000-\u001f\u007f/\\]/g, '_').trim();
  if (!name || /^image\.(png|jpe?g|gif|webp)$/i.test(name)) {
    // A pasted image is called "image.png" by every browser.
    const ext = (file.type.split('/')[1] || 'png').replace('jpeg', 'jpg').replace(/[^a-z0-9]/g, '');
    const d = new Date();
    const p2 = (n) => String(n).padStart(2, '0');
    name = 'pasted-' + d.getFullYear() + p2(d.getMonth() + 1) + p2(d.getDate()) + '-' +
      p2(d.getHours()) + p2(d.getMinutes()) + p2(d.getSeconds()) + '.' + ext;
  }
  while (utf8Len(name) > NAME_MAX) {
    const dot = name.lastIndexOf('.');
    const ext = dot > 0 && name.length - dot <= 10 ? name.slice(dot) : '';
    name = Array.from(name.slice(0, name.length - ext.length)).slice(0, -1).join('') + ext;
  }
  return name;
}

function staged(roomName) {
  return uploads.filter((u) => u.room === roomName && !u.bundle);
}

// Files the user gave us (picked, dropped, pasted): checked and uploaded
// to the open room.
export function addFiles(list) {
  const room = activeRoom();
  const files = Array.from(list || []);
  if (!room || !files.length) return;
  if (room.e2e) {
    showBanner('Files are not encrypted, so they cannot be shared in an encrypted room.', 'error', 6000);
    return;
  }
  if (!(S.limits.maxFile > 0)) {
    showBanner('This server does not take files.', 'error', 6000);
    return;
  }
  for (const file of files) {
    if (staged(room.name).length >= MAX_ATTACHMENTS) {
      showBanner('At most ' + MAX_ATTACHMENTS + ' files go with one message: send these first.', 'error', 6000);
      break;
    }
    if (file.size > S.limits.maxFile) {
      let size = humanSize(file.size);
      let max = humanSize(S.limits.maxFile);
      if (size === max) { size = file.size + ' bytes'; max = S.limits.maxFile + ' bytes'; }
      showBanner('“' + file.name + '” is too large to share (' + size + '): files may be at most ' + max + ' here.',
        'error', 8000);
      continue;
    }
    keySeq += 1;
    const u = { key: keySeq, room: room.name, file, name: cleanName(file), type: file.type || 'application/octet-stream',
      size: file.size, loaded: 0, state: 'uploading', xhr: null, att: null, error: null, bundle: null };
    uploads.push(u);
    upload(u);
  }
  renderTray();
}

function failText(status, body, u) {
  const said = /^[^<]{1,160}$/.test((body || '').trim()) ? ' (' + body.trim() + ')' : '';
  switch (status) {
    case 0: return 'the upload did not reach the server (network error)';
    case 413: return 'too large for the server' + (S.limits.maxFile ? ': the limit is ' + humanSize(S.limits.maxFile) : '');
    case 403: return 'you may not share files in #' + u.room + said;
    case 401: return 'not signed in: the server refused who we are (an expired token?)' + said;
    case 400: return 'the server refused the upload' + said;
    case 404: case 405: return 'this server does not take files';
    default: return (status >= 500 ? 'the server could not store it' : 'the upload failed') + ' (HTTP ' + status + ')' + said;
  }
}

function upload(u) {
  const xhr = new XMLHttpRequest();
  u.xhr = xhr;
  xhr.open('POST', '/files?room=' + encodeURIComponent(u.room) + '&name=' + encodeURIComponent(u.name) + '&' + identQuery());
  xhr.setRequestHeader('Content-Type', u.type);
  xhr.upload.onprogress = (ev) => {
    if (!ev.lengthComputable || u.state !== 'uploading') return;
    u.loaded = ev.loaded;
    const bar = u.node && u.node.querySelector('progress');
    if (bar) bar.value = ev.loaded;
  };
  xhr.onload = () => {
    if (u.state !== 'uploading') return;
    let j = null;
    try { j = JSON.parse(xhr.responseText); } catch (e) { j = null; }
    if ((xhr.status === 201 || xhr.status === 200) && j && typeof j.url === 'string' && fileHref(j.url)) {
      u.state = 'done';
      u.att = { type: 'file', url: j.url, name: typeof j.name === 'string' && j.name ? j.name : u.name,
        size: typeof j.size === 'number' ? j.size : u.size,
        mime: typeof j.type === 'string' && j.type ? j.type : u.type };
    } else {
      failed(u, xhr.status === 201 || xhr.status === 200 ? 'the server answered something unexpected' : failText(xhr.status, xhr.responseText, u));
    }
    settle();
  };
  xhr.onerror = () => {
    if (u.state !== 'uploading') return;
    failed(u, failText(0, '', u));
    settle();
  };
  xhr.send(u.file);
}

function failed(u, text) {
  u.state = 'failed';
  u.error = text;
  u.xhr = null;
  showBanner('Could not upload “' + u.name + '”: ' + text + '.', 'error', 8000);
}

function forget(u) {
  const i = uploads.indexOf(u);
  if (i >= 0) uploads.splice(i, 1);
  if (u.bundle) u.bundle.ups = u.bundle.ups.filter((x) => x !== u);
}

// The × of a chip: stops an upload, or takes a file (done or failed) off.
function cancel(key) {
  const u = uploads.find((x) => x.key === key);
  if (!u) return;
  if (u.state === 'uploading' && u.xhr) {
    u.state = 'cancelled';
    u.xhr.abort();
  }
  forget(u);
  settle();
}

// Whether the next message in room must go through here: files wait in
// its tray, or earlier messages still wait for theirs.
export function hasFiles(room) {
  return staged(room.name).length > 0 || bundles.some((b) => b.room === room.name);
}

// Sends content (and the composer's links) with the room's files, now or
// once they are uploaded.
export function sendWithFiles(room, content, links) {
  const ups = staged(room.name).filter((u) => u.state !== 'failed');
  for (const u of staged(room.name)) if (u.state === 'failed') forget(u);
  if (!ups.length && !content.trim() && !(links && links.length)) { renderTray(); return; }
  const b = { room: room.name, content, links: links || [], ups };
  for (const u of ups) u.bundle = b;
  bundles.push(b);
  settle();
}

// Content is 1..maxContent bytes: the names of the files when there is no
// text, cut to the limit.
function textOf(b, atts) {
  let text = b.content.trim() ? b.content : atts.filter((a) => a.name).map((a) => a.name).join(', ');
  if (!text) text = atts.length ? atts[0].url : '';
  while (utf8Len(text) > S.limits.maxContent) text = text.slice(0, Math.floor(text.length * 0.9));
  return text;
}

// Sends every message whose files are all settled, in order per room.
function settle() {
  const blocked = new Set();
  for (const b of bundles.slice()) {
    if (blocked.has(b.room)) continue;
    if (b.ups.some((u) => u.state === 'uploading')) { blocked.add(b.room); continue; }
    bundles.splice(bundles.indexOf(b), 1);
    const done = b.ups.filter((u) => u.state === 'done');
    for (const u of b.ups) {
      if (u.state === 'done') forget(u);
      else u.bundle = null;       // a failed one stays in the tray, saying why
    }
    const atts = done.map((u) => u.att).concat(b.links).slice(0, MAX_ATTACHMENTS);
    const room = S.rooms.get(b.room);
    const text = textOf(b, atts);
    if (room && text) queueChat(room, text, atts);
  }
  renderTray();
}

// ------------------------------------------------------- the tray
function chip(u) {
  const li = el('li', 'upload');
  li.dataset.state = u.state;
  li.dataset.name = u.name;
  if (u.state === 'done' && PREVIEW_TYPES.has(u.att.mime)) {
    const img = el('img', 'thumb');
    img.alt = '';
    img.src = fileHref(u.att.url);
    li.append(img);
  }
  const info = el('div', 'upload-info');
  info.append(el('span', 'upload-name', u.name), el('span', 'upload-size', humanSize(u.size)));
  li.append(info);
  if (u.state === 'uploading') {
    const bar = el('progress');
    bar.max = Math.max(1, u.size);
    bar.value = u.loaded;
    bar.setAttribute('aria-label', 'Uploading ' + u.name);
    li.append(bar);
  }
  const note = u.state === 'failed' ? u.error
    : u.bundle ? (u.state === 'uploading' ? 'sending when uploaded…' : 'sending…')
    : u.state === 'uploading' ? 'uploading…' : 'ready: sent with your next message';
  li.append(el('span', 'upload-note', note));
  const x = el('button', 'ghost small upload-cancel', '×');
  x.type = 'button';
  x.dataset.key = String(u.key);
  x.title = u.state === 'uploading' ? 'Cancel the upload' : 'Remove';
  x.setAttribute('aria-label', x.title);
  li.append(x);
  u.node = li;
  return li;
}

// The open room's uploads above the composer.
export function renderTray() {
  const room = activeRoom();
  clear(ui.uploads);
  const mine = room ? uploads.filter((u) => u.room === room.name) : [];
  for (const u of mine) ui.uploads.append(chip(u));
  ui.uploads.hidden = mine.length === 0;
}

export function onTrayClick(ev) {
  const b = ev.target.closest('button.upload-cancel');
  if (b) cancel(Number(b.dataset.key));
}

// ------------------------------------------------------- drop and paste
let dragDepth = 0;

function hasFilesIn(dt) {
  return !!dt && Array.from(dt.types || []).includes('Files');
}

export function onDragEnter(ev) {
  if (!hasFilesIn(ev.dataTransfer) || !activeRoom()) return;
  ev.preventDefault();
  dragDepth += 1;
  ui.main.classList.add('dropping');
}

export function onDragOver(ev) {
  if (!hasFilesIn(ev.dataTransfer) || !activeRoom()) return;
  ev.preventDefault();
  ev.dataTransfer.dropEffect = S.limits.maxFile > 0 ? 'copy' : 'none';
}

export function onDragLeave() {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) ui.main.classList.remove('dropping');
}

export function onDrop(ev) {
  dragDepth = 0;
  ui.main.classList.remove('dropping');
  if (!ev.dataTransfer || !ev.dataTransfer.files || !ev.dataTransfer.files.length) return;
  ev.preventDefault();
  addFiles(ev.dataTransfer.files);
}

// A file dropped anywhere else would replace the page with itself.
export function guardPage(ev) {
  if (!hasFilesIn(ev.dataTransfer)) return;
  ev.preventDefault();
  if (ev.type === 'dragover' && !ui.main.contains(ev.target)) ev.dataTransfer.dropEffect = 'none';
}

// An image pasted into the composer (a screenshot, "Copy image"); text
// pastes as text.
export function onPaste(ev) {
  const dt = ev.clipboardData;
  if (!dt || !dt.files || !dt.files.length || Array.from(dt.types || []).includes('text/plain')) return;
  ev.preventDefault();
  addFiles(dt.files);
}
